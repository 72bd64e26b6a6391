"""Stored plans and the decisions of named approvers, bound to the plan's hash.

``--mode approve`` (and ``auto`` for what it may not do alone) stores the
plan whole, with the sha256 of its actions. An approval records who approved
which hash; execution recomputes the hash from what is stored and refuses a
plan that is not approved, was rejected, expired, already ran, or whose
actions are no longer exactly what was approved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from playbooks.approval_api import (
    ApprovalRefused,
    ApprovalRequest,
    PlanNotFound,
    PlanView,
)
from playbooks.audit import AuditLog
from playbooks.errors import GuardrailRefused, InputError
from playbooks.models import Plan
from playbooks.planning import plan_hash
from playbooks.settings import ApprovalSettings
from playbooks.store import Store
from playbooks.times import as_utc, isoformat_z, utcnow

PENDING = "pending"
APPROVED = "approved"
REJECTED = "rejected"
EXECUTING = "executing"
EXECUTED = "executed"


class PlanRefused(GuardrailRefused):
    """A plan cannot be approved or executed as asked; the message says why."""


@dataclass(frozen=True)
class StoredPlan:
    plan: Plan
    status: str
    stored_hash: str
    requested_by: str
    mode: str
    expires_at: datetime
    # Lower-cased UPN -> the malicious sign-in's time, for the ledger's checks.
    sign_in_times: dict[str, datetime]
    decisions: tuple[dict[str, Any], ...]

    @property
    def approval(self) -> dict[str, Any] | None:
        approved = [item for item in self.decisions if item["decision"] == APPROVED]
        return approved[-1] if approved else None


def store_plan(
    store: Store,
    audit: AuditLog,
    plan: Plan,
    *,
    requested_by: str,
    mode: str,
    expire_after: timedelta,
    sign_in_times: dict[str, datetime],
) -> StoredPlan:
    expires_at = plan.created_at + expire_after
    body = {
        "plan": plan.model_dump(mode="json"),
        "requested_by": requested_by,
        "mode": mode,
        "expires_at": isoformat_z(expires_at),
        "sign_in_times": {user: isoformat_z(at) for user, at in sign_in_times.items()},
    }
    outcome = store.save_plan(
        plan_id=plan.id,
        run_id=plan.run_id,
        content_hash=plan.content_hash,
        status=PENDING,
        body=json.dumps(body, sort_keys=True),
    )
    if outcome != "unchanged":
        audit.record(
            plan.run_id,
            "plan.stored" if outcome == "stored" else "plan.replaced",
            {
                "plan": plan.id,
                "hash": plan.content_hash,
                "requested_by": requested_by,
                "expires_at": body["expires_at"],
            },
            actor=requested_by,
        )
    return load_plan(store, plan.id)


def load_plan(store: Store, plan_id: str) -> StoredPlan:
    row = store.plan(plan_id)
    if row is None:
        raise InputError(
            f"there is no stored plan {plan_id!r}: only approve and auto runs store their "
            "plans, a dry-run's is in its report (tokenward plans list shows the stored ones)"
        )
    body = json.loads(row["body"])
    return StoredPlan(
        plan=Plan.model_validate(body["plan"]),
        status=row["status"],
        stored_hash=row["content_hash"],
        requested_by=body.get("requested_by", ""),
        mode=body.get("mode", ""),
        expires_at=as_utc(body["expires_at"]),
        sign_in_times={user: as_utc(at) for user, at in body.get("sign_in_times", {}).items()},
        decisions=tuple(store.decisions(plan_id)),
    )


def decide(
    store: Store,
    audit: AuditLog,
    plan_id: str,
    *,
    decision: str,
    by: str,
    reason: str | None,
    require_distinct_approver: bool,
    now: datetime | None = None,
    approver: dict[str, str] | None = None,
) -> StoredPlan:
    """Approve or reject a pending plan as *by* (*approver*: who their token says)."""
    stored = load_plan(store, plan_id)
    moment = now or utcnow()
    if not by.strip():
        raise PlanRefused("an approval needs the approver's name (--by)")
    if stored.status != PENDING:
        raise PlanRefused(
            f"plan {plan_id} is {stored.status}, not pending: nothing to {decision[:-2]}e"
        )
    if moment >= stored.expires_at:
        raise PlanRefused(f"plan {plan_id} expired at {isoformat_z(stored.expires_at)}")
    _check_hash(stored)
    if (
        decision == APPROVED
        and require_distinct_approver
        and by.strip().lower() == stored.requested_by.strip().lower()
    ):
        raise PlanRefused(
            f"{by} requested plan {plan_id} and may not approve it too "
            "(approvals.require_distinct_approver)"
        )
    if not store.set_plan_status(plan_id, decision, expected=PENDING):
        raise PlanRefused(f"plan {plan_id} changed status while it was being {decision}")
    store.add_decision(
        plan_id=plan_id, decision=decision, by=by, reason=reason, plan_hash=stored.stored_hash
    )
    audit.record(
        stored.plan.run_id,
        f"plan.{decision}",
        {
            "plan": plan_id,
            "hash": stored.stored_hash,
            "by": by,
            "reason": reason,
            **({"approver": approver} if approver else {}),
        },
        actor=by,
    )
    return load_plan(store, plan_id)


def claim_for_execution(
    store: Store, plan_id: str, *, now: datetime | None = None, resume: bool = False
) -> StoredPlan:
    """The approved plan, exactly as approved, marked as executing (once).

    With *resume*, a plan left ``executing`` by an execution that stopped
    midway (a worker killed while it ran) is handed back to the caller that
    takes that execution over: the action ledger screens what the first
    attempt sent, so nothing is sent twice.
    """
    if resume:
        current = load_plan(store, plan_id)
        if current.status == EXECUTING:
            return _approved_as_stored(current)
    stored = executable(store, plan_id, now=now)
    if not store.set_plan_status(plan_id, EXECUTING, expected=APPROVED):
        raise PlanRefused(f"plan {plan_id} is being executed by another process")
    return stored


def executable(store: Store, plan_id: str, *, now: datetime | None = None) -> StoredPlan:
    """The approved plan, or :class:`PlanRefused` saying why it may not run."""
    stored = load_plan(store, plan_id)
    moment = now or utcnow()
    if stored.status in (EXECUTING, EXECUTED):
        raise PlanRefused(f"plan {plan_id} was already executed")
    if stored.status != APPROVED or stored.approval is None:
        raise PlanRefused(f"plan {plan_id} is {stored.status}: only an approved plan is executed")
    if moment >= stored.expires_at:
        raise PlanRefused(f"plan {plan_id} expired at {isoformat_z(stored.expires_at)}")
    return _approved_as_stored(stored)


def _approved_as_stored(stored: StoredPlan) -> StoredPlan:
    _check_hash(stored)
    if stored.approval is None or stored.approval["plan_hash"] != stored.stored_hash:
        raise PlanRefused(
            f"plan {stored.plan.id} is not the plan that was approved (its hash changed)"
        )
    return stored


def _check_hash(stored: StoredPlan) -> None:
    actual = plan_hash(stored.plan.actions)
    if actual != stored.stored_hash or actual != stored.plan.content_hash:
        raise PlanRefused(
            f"plan {stored.plan.id} changed after it was stored: its actions hash to "
            f"{actual[:12]}…, not {stored.stored_hash[:12]}…"
        )


class StoredApprovals:
    """:class:`~playbooks.approval_api.PlanApprovals` over the stored plans.

    The approval endpoints' storage: a decision is bound to the hash the
    approver saw, recorded with who they are (their token's object id, name,
    tenant and client) and audited; four eyes hold as the settings say, the
    requester being matched by any name the approver goes by.
    """

    def __init__(self, audit: AuditLog, settings: ApprovalSettings) -> None:
        self._audit = audit
        self._store = audit.store
        self._settings = settings

    def plans(self, *, status: str | None, limit: int) -> list[PlanView]:
        rows = self._store.list_plans(limit=limit, status=status)
        return [plan_view(load_plan(self._store, row["id"])) for row in rows]

    def plan(self, plan_id: str) -> PlanView | None:
        if self._store.plan(plan_id) is None:
            return None
        return plan_view(load_plan(self._store, plan_id))

    def decide(self, request: ApprovalRequest) -> PlanView:
        if self._store.plan(request.plan_id) is None:
            raise PlanNotFound(f"there is no plan {request.plan_id!r}")
        stored = load_plan(self._store, request.plan_id)
        if request.plan_hash != stored.stored_hash:
            raise ApprovalRefused(
                f"plan {stored.plan.id} is not the plan you saw: its hash is "
                f"{stored.stored_hash[:12]}…, not {request.plan_hash[:12]}…; "
                "look at it again"
            )
        who = request.approver
        names = {value.strip().lower() for value in (who.name, who.principal_id) if value}
        if (
            request.decision == APPROVED
            and self._settings.require_distinct_approver
            and stored.requested_by.strip().lower() in names
        ):
            raise ApprovalRefused(
                f"{who.name or who.principal_id} requested plan {stored.plan.id} and may "
                "not approve it too (approvals.require_distinct_approver)"
            )
        try:
            decided = decide(
                self._store,
                self._audit,
                request.plan_id,
                decision=request.decision,
                by=who.name or who.principal_id,
                reason=request.reason or None,
                require_distinct_approver=self._settings.require_distinct_approver,
                now=request.at,
                approver={
                    "principal_id": who.principal_id,
                    "name": who.name,
                    "tenant_id": who.tenant_id,
                    "app_id": who.app_id,
                },
            )
        except PlanRefused as refused:
            raise ApprovalRefused(str(refused)) from None
        return plan_view(decided)


def plan_view(stored: StoredPlan) -> PlanView:
    """A stored plan as the approval endpoints show it: every request it sends."""
    return PlanView(
        plan_id=stored.plan.id,
        run_id=stored.plan.run_id,
        status=stored.status,
        content_hash=stored.stored_hash,
        created_at=stored.plan.created_at,
        actions=tuple(
            {
                "id": action.id,
                "action": action.action.value,
                "targets": [target.label for target in action.targets],
                "gate": action.gate.value,
                "request": action.request.model_dump(mode="json"),
                "decisions": [d.model_dump(mode="json") for d in action.decisions],
            }
            for action in stored.plan.actions
        ),
        decisions=tuple(
            {
                "decision": item["decision"],
                "by": item["by"],
                "reason": item["reason"],
                "at": item["at"],
                "plan_hash": item["plan_hash"],
            }
            for item in stored.decisions
        ),
    )
