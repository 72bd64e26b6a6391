"""The exact requests each action sends, built without sending anything.

Planning attaches these to the plan, so an approver sees and approves the
requests themselves, dry-run shows them, and the Graph responder sends exactly
them. Paths are relative to the service's versioned base URL.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from playbooks.identities import graph_user_segment
from playbooks.models import ActionKind, ServiceRequest, Target

# The namespace of comment ids: the same run always writes the same comment.
COMMENT_NAMESPACE = uuid.UUID("5b0f3c3e-6c43-4d7e-9a8e-7c1f4f1b2a10")


@dataclass(frozen=True)
class IncidentRef:
    """The Sentinel incident a run answers."""

    # The incident's ARM resource id, ``/subscriptions/…/incidents/<name>``.
    resource_id: str
    number: int | None = None
    title: str = ""


def user_segment(target: Target) -> str:
    """The object id when known, else the percent-encoded UPN."""
    return target.user_id or graph_user_segment(target.user_principal_name)


def revoke_sessions(target: Target) -> ServiceRequest:
    return ServiceRequest(
        service="graph", method="POST", path=f"/users/{user_segment(target)}/revokeSignInSessions"
    )


def disable_account(target: Target) -> ServiceRequest:
    return ServiceRequest(
        service="graph",
        method="PATCH",
        path=f"/users/{user_segment(target)}",
        body={"accountEnabled": False},
    )


def confirm_compromised(targets: Sequence[Target]) -> ServiceRequest:
    # The API takes object ids only; a UPN stands in until it is resolved.
    return ServiceRequest(
        service="graph",
        method="POST",
        path="/identityProtection/riskyUsers/confirmCompromised",
        body={"userIds": [target.user_id or target.user_principal_name for target in targets]},
    )


READ_BACK_FIELDS = (
    "id,accountEnabled,userType,onPremisesSyncEnabled,signInSessionsValidFromDateTime"
)


def read_back(target: Target) -> ServiceRequest:
    return ServiceRequest(
        service="graph",
        method="GET",
        path=f"/users/{user_segment(target)}?$select={READ_BACK_FIELDS}",
    )


def comment_id(run_id: str) -> str:
    return str(uuid.uuid5(COMMENT_NAMESPACE, run_id))


def incident_comment(incident: IncidentRef, *, run_id: str, api_version: str) -> ServiceRequest:
    """A PUT with an id fixed per run: a retried write updates, never duplicates."""
    return ServiceRequest(
        service="sentinel",
        method="PUT",
        path=(f"{incident.resource_id}/comments/{comment_id(run_id)}?api-version={api_version}"),
        body={"properties": {"message": "(the run's findings and action outcomes)"}},
    )


def request_for(kind: ActionKind, targets: Sequence[Target]) -> ServiceRequest:
    if kind is ActionKind.REVOKE_SESSIONS:
        return revoke_sessions(targets[0])
    if kind is ActionKind.DISABLE_ACCOUNT:
        return disable_account(targets[0])
    if kind is ActionKind.CONFIRM_COMPROMISED:
        return confirm_compromised(targets)
    raise ValueError(f"{kind} needs an incident, not a user")
