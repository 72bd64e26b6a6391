"""The seam between the approval endpoints and the approval storage.

The HTTP layer (:mod:`playbooks.server`) authenticates the approver, checks
they may approve, and hands this interface one :class:`ApprovalRequest`
carrying who they are. The storage behind it (the plans and approvals tables,
with the rules on hashes, expiry and four eyes) implements
:class:`PlanApprovals`; until one is wired in, the endpoints answer 501.

What an implementation must do:

* ``decide`` binds the decision to ``plan_hash``: a plan whose content hash
  differs (it changed since the approver looked) is refused, never approved;
* it records the approver (``Approver``) with the decision, and audits it;
* it refuses, with :class:`ApprovalRefused` and a sentence saying why, a plan
  already decided, expired, or one the settings forbid this approver to
  approve (the requester approving their own plan);
* it raises :class:`PlanNotFound` for an unknown id;
* it is synchronous (a database); the HTTP layer calls it off the event loop.

Executing an approved plan is not this interface's business: the storage, or
the command that executes plans, does it once the approval is stored.

Over the plan storage of ``playbooks.approvals`` (stored plans, ``decide``,
``load_plan``) an implementation is a thin adapter: ``plans`` and ``plan``
read ``Store.list_plans`` / ``load_plan``; ``decide`` first compares
``request.plan_hash`` with the stored hash (refusing a mismatch), then calls
``approvals.decide(store, audit, plan_id, decision=..., by=<approver name or
object id>, reason=..., require_distinct_approver=...)``, turning its
``PlanRefused`` into :class:`ApprovalRefused` and an unknown id into
:class:`PlanNotFound`. Pass it to :func:`playbooks.server.build_parts`
(``approvals=``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from playbooks.errors import TokenwardError

Decision = Literal["approved", "rejected"]


@dataclass(frozen=True)
class Approver:
    """The person who decided, as their Entra ID token says."""

    principal_id: str
    name: str
    tenant_id: str
    # The client they used (the portal's, the CLI's).
    app_id: str


@dataclass(frozen=True)
class ApprovalRequest:
    plan_id: str
    # The content hash the approver saw; the decision holds for exactly that plan.
    plan_hash: str
    decision: Decision
    approver: Approver
    reason: str
    at: datetime


@dataclass(frozen=True)
class PlanView:
    """A stored plan as the approval endpoints show it."""

    plan_id: str
    run_id: str
    status: str
    content_hash: str
    created_at: datetime
    actions: Sequence[dict[str, Any]] = ()
    decisions: Sequence[dict[str, Any]] = field(default_factory=tuple)


class PlanNotFound(TokenwardError):
    """No plan has this id."""


class ApprovalRefused(TokenwardError):
    """The decision cannot be taken; the message says why (changed, expired, decided)."""


class PlanApprovals(Protocol):
    def plans(self, *, status: str | None, limit: int) -> Sequence[PlanView]:
        """Stored plans, newest first, optionally only those in *status*."""
        ...

    def plan(self, plan_id: str) -> PlanView | None: ...

    def decide(self, request: ApprovalRequest) -> PlanView:
        """Record the decision; the plan as it stands afterwards."""
        ...
