"""Findings to a plan: the actions for each user's tier, after the guardrails.

Pure. One set of actions per user however many findings they have (the
highest tier decides); a protected account is never planned for; anything a
guardrail doubts waits for a person. The plan carries a content hash, so an
approval binds to exactly these requests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from playbooks import actions
from playbooks.actions import IncidentRef
from playbooks.models import (
    ActionKind,
    Finding,
    Gate,
    GuardrailDecision,
    Plan,
    PlannedAction,
    Target,
    Tier,
)
from playbooks.playbook import Playbook

USER_ACTIONS = (
    ActionKind.REVOKE_SESSIONS,
    ActionKind.DISABLE_ACCOUNT,
    ActionKind.CONFIRM_COMPROMISED,
)
_GATE_ORDER = {Gate.UNATTENDED: 0, Gate.APPROVAL: 1, Gate.BLOCKED: 2}


@dataclass(frozen=True)
class Guardrails:
    """What planning must respect beyond the playbook's tiers."""

    # Lower-cased UPNs and object ids.
    protected_accounts: frozenset[str] = frozenset()
    max_users_per_run: int = 10
    # False when some evidence arrived partial: nothing high runs unattended.
    evidence_complete: bool = True
    # Users whose identity was resolved only weakly (e.g. an entity's FullName).
    low_confidence_users: frozenset[str] = frozenset()
    incident: IncidentRef | None = None
    comment_api_version: str = "2025-09-01"
    # Lower-cased UPNs and object ids that hold privileged directory roles.
    privileged_users: frozenset[str] = field(default_factory=frozenset)
    # Lower-cased UPNs and object ids whose roles could not be read: as
    # privileged users, they wait for a person.
    unread_users: frozenset[str] = field(default_factory=frozenset)
    # Lower-cased UPNs and object ids of accounts synced from on-premises.
    synced_users: frozenset[str] = field(default_factory=frozenset)


def is_protected_account(target: Target, protected: frozenset[str]) -> bool:
    names = {target.user_principal_name.lower(), target.user_id.lower()} - {""}
    return bool(names & protected)


def plan_actions(
    findings: Sequence[Finding],
    playbook: Playbook,
    guardrails: Guardrails,
    *,
    run_id: str,
    created_at: datetime,
) -> Plan:
    """The plan for a run's findings."""
    per_user = _worst_finding_per_user(findings)
    acting = [user for user, finding in per_user.items() if _user_actions(playbook, finding)]
    over_cap = len(acting) > guardrails.max_users_per_run

    planned: list[PlannedAction] = []
    confirm: dict[Gate, list[tuple[Target, Finding, tuple[GuardrailDecision, ...]]]] = {}
    for _user, finding in per_user.items():
        target = Target(user_principal_name=finding.user_principal_name, user_id=finding.user_id)
        for kind in _user_actions(playbook, finding):
            gate, decisions, notes = _gate(
                kind, finding, target, playbook, guardrails, over_cap, len(acting)
            )
            if kind is ActionKind.CONFIRM_COMPROMISED and gate is not Gate.BLOCKED:
                confirm.setdefault(gate, []).append((target, finding, decisions))
                continue
            planned.append(_action(kind, (target,), (finding,), gate, decisions, notes))

    for gate, members in sorted(confirm.items(), key=lambda item: _GATE_ORDER[item[0]]):
        targets = tuple(target for target, _, _ in members)
        group = tuple(finding for _, finding, _ in members)
        decisions = tuple({d for _, _, ds in members for d in ds})
        planned.append(_action(ActionKind.CONFIRM_COMPROMISED, targets, group, gate, decisions, ()))

    if guardrails.incident is not None:
        planned.append(
            _comment(guardrails.incident, run_id, guardrails.comment_api_version, findings)
        )

    return Plan(
        id=f"plan-{run_id}",
        run_id=run_id,
        created_at=created_at,
        actions=tuple(planned),
        content_hash=plan_hash(planned),
    )


def plan_hash(planned: Iterable[PlannedAction]) -> str:
    """sha256 over what an approval approves: each action, its targets and request."""
    canonical = [
        {
            "id": action.id,
            "action": action.action.value,
            "targets": [target.model_dump() for target in action.targets],
            "gate": action.gate.value,
            "request": action.request.model_dump(mode="json"),
        }
        for action in planned
    ]
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _worst_finding_per_user(findings: Iterable[Finding]) -> dict[str, Finding]:
    chosen: dict[str, Finding] = {}
    for finding in findings:
        key = finding.user_principal_name.lower()
        known = chosen.get(key)
        if known is None or (finding.tier.rank, finding.score) > (known.tier.rank, known.score):
            chosen[key] = finding
    return chosen


def _user_actions(playbook: Playbook, finding: Finding) -> list[ActionKind]:
    kinds = [kind for kind in playbook.tier(finding.tier).actions if kind in USER_ACTIONS]
    # A revoke cannot contain a guest (the home tenant issues their tokens);
    # disabling the guest object here can, so it is offered for approval.
    if (
        finding.is_guest
        and ActionKind.REVOKE_SESSIONS in kinds
        and ActionKind.DISABLE_ACCOUNT not in kinds
    ):
        kinds.insert(kinds.index(ActionKind.REVOKE_SESSIONS) + 1, ActionKind.DISABLE_ACCOUNT)
    return kinds


def _gate(
    kind: ActionKind,
    finding: Finding,
    target: Target,
    playbook: Playbook,
    guardrails: Guardrails,
    over_cap: bool,
    users: int,
) -> tuple[Gate, tuple[GuardrailDecision, ...], tuple[str, ...]]:
    tier = playbook.tier(finding.tier)
    decisions: list[GuardrailDecision] = []
    notes: list[str] = []

    def hold(guardrail: str, gate: Gate, detail: str) -> None:
        decisions.append(GuardrailDecision(guardrail=guardrail, gate=gate, detail=detail))

    if not tier.unattended:
        hold("tier", Gate.APPROVAL, f"the {finding.tier} tier does not run unattended")
    if is_protected_account(target, guardrails.protected_accounts):
        hold("protected_account", Gate.BLOCKED, f"{target.label} is a protected account")
    names = {target.user_principal_name.lower(), target.user_id.lower()} - {""}
    if names & guardrails.privileged_users:
        hold(
            "privileged_account", Gate.APPROVAL, f"{target.label} holds a privileged directory role"
        )
    elif names & guardrails.unread_users:
        hold(
            "privileged_account",
            Gate.APPROVAL,
            f"{target.label} could not be read from the directory, so its roles are unknown",
        )
    if finding.allowlisted:
        hold("sanctioned_use", Gate.APPROVAL, "the sign-in matches a sanctioned use")
    if over_cap:
        hold(
            "max_users_per_run",
            Gate.APPROVAL,
            f"{users} users exceed max_users_per_run ({guardrails.max_users_per_run})",
        )
    if not guardrails.evidence_complete and finding.tier is Tier.HIGH:
        hold("partial_evidence", Gate.APPROVAL, "some evidence arrived partial")
    if target.user_principal_name.lower() in guardrails.low_confidence_users:
        hold("low_confidence_identity", Gate.APPROVAL, "the account was resolved only weakly")
    if (
        kind is ActionKind.DISABLE_ACCOUNT
        and ({target.user_principal_name.lower(), target.user_id.lower()} - {""})
        & guardrails.synced_users
    ):
        notes.append(
            "the account is synced from on-premises: a cloud disable may be undone by "
            "the next sync, and Graph may refuse it; disable it in AD DS too"
        )
    if finding.is_guest:
        if kind is ActionKind.REVOKE_SESSIONS:
            notes.append(
                "a revoke does not contain a guest: their tokens come from the home "
                "tenant, which has to revoke them there"
            )
        if kind is ActionKind.DISABLE_ACCOUNT and ActionKind.DISABLE_ACCOUNT not in tier.actions:
            hold("guest", Gate.APPROVAL, "disabling the guest object is offered for approval")

    gate = max(
        (decision.gate for decision in decisions),
        key=_GATE_ORDER.__getitem__,
        default=Gate.UNATTENDED,
    )
    return gate, tuple(decisions), tuple(notes)


def _action(
    kind: ActionKind,
    targets: tuple[Target, ...],
    findings: tuple[Finding, ...],
    gate: Gate,
    decisions: tuple[GuardrailDecision, ...],
    notes: tuple[str, ...],
) -> PlannedAction:
    return PlannedAction(
        id=_action_id(kind, targets, findings),
        action=kind,
        targets=targets,
        finding_ids=tuple(finding.id for finding in findings),
        tier=max((finding.tier for finding in findings), key=lambda tier: tier.rank),
        gate=gate,
        request=actions.request_for(kind, targets),
        decisions=tuple(sorted(decisions, key=lambda decision: decision.guardrail)),
        notes=notes,
    )


def _comment(
    incident: IncidentRef, run_id: str, api_version: str, findings: Sequence[Finding]
) -> PlannedAction:
    tier = max((finding.tier for finding in findings), key=lambda tier: tier.rank, default=Tier.LOW)
    return PlannedAction(
        id=f"a-comment-{actions.comment_id(run_id)[:8]}",
        action=ActionKind.COMMENT_ON_INCIDENT,
        targets=(),
        finding_ids=tuple(finding.id for finding in findings),
        tier=tier,
        gate=Gate.UNATTENDED,
        request=actions.incident_comment(incident, run_id=run_id, api_version=api_version),
    )


def _action_id(kind: ActionKind, targets: Sequence[Target], findings: Sequence[Finding]) -> str:
    # Stable for the same sign-ins: a re-hunt plans the same ids, which the
    # action ledger recognises.
    parts = [kind.value, *sorted(t.user_id or t.user_principal_name.lower() for t in targets)]
    parts += sorted(finding.id for finding in findings)
    return "a-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
