"""What may be sent now, and what took effect. Pure.

Planning decided what a run would do from the findings; the checks here are
made again at the moment of acting, on what Graph says about each user right
then and on what the action ledger says was done before:

* the kill switch and protected accounts stop every write, approved or not;
* an action already done for the same sign-in is skipped, and so is a revoke
  when the user's sessions were revoked after the malicious sign-in, and a
  disable of a disabled account;
* an intent without an outcome (a run that stopped mid-way) is resolved by
  the read-back: done if the change is there, sent again if it is not;
* unattended actions wait for a person when the user holds a privileged
  directory role (or the roles could not be read), was revoked within the
  cooldown, or would pass the hourly cap; approved actions pass those, except
  a privileged role the approved plan did not show.

After acting, :func:`verify` turns what Graph answered and what the read-back
shows into each action's final status, and :func:`summarise` into each
user's and the run's containment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from playbooks.models import (
    ActionKind,
    ActionResult,
    ActionStatus,
    Containment,
    DirectoryUser,
    PlannedAction,
    Problem,
    Target,
    UserContainment,
)
from playbooks.store import LedgerEntry
from playbooks.times import as_utc, isoformat_z

WRITES = (
    ActionKind.REVOKE_SESSIONS,
    ActionKind.DISABLE_ACCOUNT,
    ActionKind.CONFIRM_COMPROMISED,
)
CONTAINING = (ActionKind.REVOKE_SESSIONS, ActionKind.DISABLE_ACCOUNT)
# Ledger outcomes after which the same action for the same sign-in is not repeated.
DONE = frozenset({ActionStatus.SUCCEEDED.value, ActionStatus.INEFFECTIVE.value})


class Verdict(StrEnum):
    SEND = "send"
    # Nothing to send: done before, or the user is already in the wanted state.
    SKIP = "skip"
    # Waits for a named approver.
    HOLD = "hold"
    BLOCK = "block"
    # Cannot be sent safely (the user could not be read).
    FAIL = "fail"


@dataclass(frozen=True)
class ExecutionPolicy:
    """The guardrails as they stand when the actions execute."""

    kill_switch: bool = False
    # Lower-cased UPNs and object ids.
    protected_accounts: frozenset[str] = frozenset()
    # Lower-cased role names or template ids; "*" is any directory role.
    privileged_roles: frozenset[str] = frozenset({"*"})
    max_users_per_hour: int = 20
    revoke_cooldown: timedelta = timedelta(minutes=60)


@dataclass(frozen=True)
class Screening:
    action_id: str
    verdict: Verdict
    guardrail: str = ""
    detail: str = ""
    containment_effective: bool | None = None
    problem: Problem | None = None
    # Intents of stopped runs this decision settles: (ledger id, status, detail).
    settles: tuple[tuple[int, str, str], ...] = ()


@dataclass
class _Count:
    """Users written to in the last hour, this run's included."""

    recent: set[str]
    added: set[str] = field(default_factory=set)

    def would_exceed(self, user: str, limit: int) -> bool:
        if user in self.recent or user in self.added:
            return False
        return len(self.recent | self.added) + 1 > limit


def user_key(target: Target, user: DirectoryUser | None = None) -> str:
    """The ledger's key for a user: the object id when known, else the UPN."""
    if user is not None and user.id:
        return user.id.lower()
    return (target.user_id or target.user_principal_name).lower()


def holds_privileged_role(user: DirectoryUser, privileged: frozenset[str]) -> list[str]:
    """The user's roles that count as privileged (names, not template ids)."""
    if "*" in privileged:
        names = [role for role in user.roles if not _is_template_id(role)]
        return names or list(user.roles)
    return [role for role in user.roles if role.lower() in privileged]


def screen(
    actions: Sequence[PlannedAction],
    users: Mapping[str, DirectoryUser],
    ledger: Sequence[LedgerEntry],
    policy: ExecutionPolicy,
    *,
    approved: bool,
    now: datetime,
    sign_in_times: Mapping[str, datetime],
    recent_users: Iterable[str] = (),
) -> list[Screening]:
    """One screening per action, in order. *users* is keyed by the target's
    ``user_id or user_principal_name``; *sign_in_times* by lower-cased UPN."""
    count = _Count(recent=set(recent_users))
    screenings = []
    for action in actions:
        if action.action not in WRITES:
            screenings.append(Screening(action.id, Verdict.SEND))
            continue
        verdicts = [
            _screen_target(
                action,
                target,
                users.get(target.user_id or target.user_principal_name),
                ledger,
                policy,
                approved=approved,
                now=now,
                sign_in=sign_in_times.get(target.user_principal_name.lower()),
                count=count,
            )
            for target in action.targets
        ]
        chosen = _worst(action.id, verdicts)
        if chosen.verdict is Verdict.SEND:
            for target in action.targets:
                count.added.add(
                    user_key(target, users.get(target.user_id or target.user_principal_name))
                )
        screenings.append(chosen)
    return screenings


def _screen_target(
    action: PlannedAction,
    target: Target,
    user: DirectoryUser | None,
    ledger: Sequence[LedgerEntry],
    policy: ExecutionPolicy,
    *,
    approved: bool,
    now: datetime,
    sign_in: datetime | None,
    count: _Count,
) -> Screening:
    kind = action.action
    who = target.label

    # Stops for everyone, approved or not.
    if policy.kill_switch:
        return Screening(
            action.id, Verdict.BLOCK, "kill_switch", "the kill switch is on: nothing is written"
        )
    names = {target.user_principal_name.lower(), target.user_id.lower()}
    if user is not None:
        names |= {user.id.lower(), user.user_principal_name.lower()}
    if (names - {""}) & policy.protected_accounts:
        return Screening(
            action.id, Verdict.BLOCK, "protected_account", f"{who} is a protected account"
        )
    if user is None or not user.found:
        reason = user.error if user is not None else "it was not read"
        problem = {
            "not_found": Problem.NOT_FOUND,
            "auth": Problem.FAILED_PERMISSION,
            "throttled": Problem.THROTTLED,
        }.get((user.error_class or "") if user is not None else "", Problem.TRANSIENT)
        return Screening(
            action.id,
            Verdict.FAIL,
            "read_back",
            f"{who} could not be read before acting ({reason}); nothing was sent",
            problem=problem,
        )

    # The ledger: done before, or an intent a stopped run left open.
    key = user_key(target, user)
    mine = [
        entry
        for entry in ledger
        if entry.kind == kind.value and entry.user_key in (key, target.user_principal_name.lower())
    ]
    for entry in mine:
        same_sign_in = entry.action_id == action.id or bool(
            set(entry.finding_ids) & set(action.finding_ids)
        )
        if same_sign_in and entry.status in DONE:
            return Screening(
                action.id,
                Verdict.SKIP,
                "ledger",
                f"already done for this sign-in (run {entry.run_id}, {entry.outcome_at})",
                containment_effective=entry.status == ActionStatus.SUCCEEDED.value,
            )
    settles: list[tuple[int, str, str]] = []
    for entry in mine:
        if not entry.open:
            continue
        if _took_effect(kind, user, since=as_utc(entry.intent_at)):
            return Screening(
                action.id,
                Verdict.SKIP,
                "ledger",
                f"an interrupted run ({entry.run_id}) sent it: the read-back shows it took effect",
                containment_effective=kind in CONTAINING
                and not (kind is ActionKind.REVOKE_SESSIONS and user.is_guest),
                settles=((entry.id, ActionStatus.SUCCEEDED.value, "confirmed by read-back"),),
            )
        settles.append(
            (entry.id, ActionStatus.UNKNOWN.value, "not visible in the read-back; sent again")
        )

    # The user is already where the action would put them.
    if kind is ActionKind.REVOKE_SESSIONS and sign_in and user.sign_in_sessions_valid_from:
        if user.sign_in_sessions_valid_from > sign_in:
            return Screening(
                action.id,
                Verdict.SKIP,
                "already_revoked",
                f"sessions were revoked at {isoformat_z(user.sign_in_sessions_valid_from)}, "
                f"after the sign-in at {isoformat_z(sign_in)}",
                containment_effective=not user.is_guest,
                settles=tuple(settles),
            )
    if kind is ActionKind.DISABLE_ACCOUNT and user.account_enabled is False:
        return Screening(
            action.id,
            Verdict.SKIP,
            "already_disabled",
            f"{who} is already disabled",
            containment_effective=True,
            settles=tuple(settles),
        )

    # What only a person may override.
    privileged = holds_privileged_role(user, policy.privileged_roles)
    shown = any(d.guardrail == "privileged_account" for d in action.decisions)
    if privileged and (not approved or not shown):
        detail = f"{who} holds {', '.join(sorted(privileged))}"
        if approved:
            detail += ", which the approved plan did not show: approve a new plan"
        return Screening(
            action.id, Verdict.HOLD, "privileged_account", detail, settles=tuple(settles)
        )
    if not user.roles_known and not approved:
        return Screening(
            action.id,
            Verdict.HOLD,
            "privileged_account",
            f"the directory roles of {who} could not be read, so privilege is not ruled out",
            settles=tuple(settles),
        )
    if not approved and kind is ActionKind.REVOKE_SESSIONS and policy.revoke_cooldown:
        for entry in reversed(mine):
            if entry.status == ActionStatus.SUCCEEDED.value and entry.outcome_at:
                since = now - as_utc(entry.outcome_at)
                if since < policy.revoke_cooldown:
                    return Screening(
                        action.id,
                        Verdict.HOLD,
                        "revoke_cooldown",
                        f"{who} was revoked {int(since.total_seconds() // 60)} min ago "
                        f"(run {entry.run_id}), within the "
                        f"{int(policy.revoke_cooldown.total_seconds() // 60)}-minute cooldown",
                        settles=tuple(settles),
                    )
                break
    if not approved and count.would_exceed(key, policy.max_users_per_hour):
        return Screening(
            action.id,
            Verdict.HOLD,
            "max_users_per_hour",
            f"acting on {who} would pass max_users_per_hour ({policy.max_users_per_hour})",
            settles=tuple(settles),
        )
    return Screening(action.id, Verdict.SEND, settles=tuple(settles))


_ORDER = {Verdict.SEND: 0, Verdict.SKIP: 1, Verdict.HOLD: 2, Verdict.FAIL: 3, Verdict.BLOCK: 4}


def _worst(action_id: str, verdicts: Sequence[Screening]) -> Screening:
    # For one call with many users (confirm compromised): skipped only when
    # every user is, otherwise the strictest of the users' verdicts.
    if all(item.verdict is Verdict.SKIP for item in verdicts):
        return verdicts[0]
    sending = [item for item in verdicts if item.verdict is not Verdict.SKIP]
    chosen = max(sending, key=lambda item: _ORDER[item.verdict])
    settles = tuple(entry for item in verdicts for entry in item.settles)
    return Screening(
        action_id,
        chosen.verdict,
        chosen.guardrail,
        chosen.detail,
        chosen.containment_effective,
        chosen.problem,
        settles,
    )


def _took_effect(kind: ActionKind, user: DirectoryUser, *, since: datetime) -> bool:
    if kind is ActionKind.REVOKE_SESSIONS:
        moved = user.sign_in_sessions_valid_from
        return moved is not None and moved >= since - timedelta(seconds=5)
    if kind is ActionKind.DISABLE_ACCOUNT:
        return user.account_enabled is False
    # confirmCompromised has no cheap read-back; sending it again is harmless.
    return False


def _is_template_id(role: str) -> bool:
    return len(role) == 36 and role.count("-") == 4


# -- after acting ------------------------------------------------------------------


def result_for(screening: Screening) -> ActionResult:
    """The result of an action that was not sent."""
    status = {
        Verdict.SKIP: ActionStatus.SKIPPED,
        Verdict.HOLD: ActionStatus.AWAITING_APPROVAL,
        Verdict.BLOCK: ActionStatus.BLOCKED,
        Verdict.FAIL: ActionStatus.FAILED,
    }[screening.verdict]
    return ActionResult(
        action_id=screening.action_id,
        status=status,
        detail=screening.detail,
        containment_effective=screening.containment_effective,
        problem=screening.problem,
        escalate=screening.verdict in (Verdict.FAIL, Verdict.HOLD),
    )


def verify(
    action: PlannedAction,
    result: ActionResult,
    before: DirectoryUser | None,
    after: DirectoryUser | None,
) -> ActionResult:
    """The final status: what Graph answered, checked against the read-back."""
    if action.action not in CONTAINING or before is None:
        return result
    kind = action.action
    changed = _changed(kind, before, after)
    notes = [result.detail] if result.detail else []

    if result.status is ActionStatus.UNKNOWN and changed:
        notes.append("Graph did not answer, but the read-back shows the change")
        result = result.model_copy(update={"status": ActionStatus.SUCCEEDED, "problem": None})
    if result.status is ActionStatus.FAILED:
        if (
            kind is ActionKind.DISABLE_ACCOUNT
            and before.on_premises_sync_enabled
            and (result.problem in (Problem.BAD_REQUEST, Problem.REQUIRES_ONPREM))
        ):
            notes.append("the account is synced from on-premises: disable it in AD DS")
            return result.model_copy(
                update={
                    "problem": Problem.REQUIRES_ONPREM,
                    "detail": "; ".join(_unique(notes)),
                    "containment_effective": False,
                }
            )
        return result.model_copy(update={"containment_effective": False})
    if result.status is not ActionStatus.SUCCEEDED:
        return result.model_copy(update={"containment_effective": False, "verified": changed})

    if not changed:
        notes.append(
            "but the read-back does not show it "
            + (
                "(signInSessionsValidFromDateTime did not move)"
                if kind is ActionKind.REVOKE_SESSIONS
                else "(accountEnabled is not false)"
            )
        )
        return result.model_copy(
            update={
                "status": ActionStatus.UNCONFIRMED,
                "verified": False,
                "containment_effective": False,
                "problem": Problem.NOT_VERIFIED,
                "escalate": True,
                "detail": "; ".join(notes),
            }
        )
    if kind is ActionKind.REVOKE_SESSIONS and (before.is_guest or (after and after.is_guest)):
        notes.append(
            "but a revoke does not contain a guest: their tokens come from the home "
            "tenant; disable the guest here or block it with Conditional Access, and "
            "ask the home tenant to revoke"
        )
        return result.model_copy(
            update={
                "status": ActionStatus.INEFFECTIVE,
                "verified": True,
                "containment_effective": False,
                "problem": Problem.GUEST_NOT_CONTAINED,
                "escalate": True,
                "detail": "; ".join(notes),
            }
        )
    if kind is ActionKind.DISABLE_ACCOUNT and before.on_premises_sync_enabled:
        notes.append("the account is synced from on-premises: the next sync may enable it again")
    return result.model_copy(
        update={"verified": True, "containment_effective": True, "detail": "; ".join(notes)}
    )


def _changed(kind: ActionKind, before: DirectoryUser, after: DirectoryUser | None) -> bool:
    if after is None or not after.found:
        return False
    if kind is ActionKind.REVOKE_SESSIONS:
        old, new = before.sign_in_sessions_valid_from, after.sign_in_sessions_valid_from
        return new is not None and (old is None or new > old)
    return after.account_enabled is False


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def summarise(
    actions: Sequence[PlannedAction], results: Mapping[str, ActionResult]
) -> tuple[Containment, tuple[UserContainment, ...]]:
    """Each user's steps and state, and the run's: contained, partially, not, or not attempted."""
    steps: dict[str, dict[str, ActionResult]] = {}
    ids: dict[str, str] = {}
    for action in actions:
        if action.action not in WRITES:
            continue
        for target in action.targets:
            steps.setdefault(target.label, {})[action.action.value] = results[action.id]
            ids[target.label] = target.user_id or ids.get(target.label, "")

    users = []
    for label, taken in steps.items():
        containing = [r for kind, r in taken.items() if kind in {k.value for k in CONTAINING}]
        waiting = [r for r in containing if r.status in _NOT_ATTEMPTED]
        effective = [r for r in containing if r.containment_effective]
        attempted = [r for r in containing if r.status not in _NOT_ATTEMPTED]
        if not attempted:
            state = Containment.NOT_ATTEMPTED
        elif len(effective) == len(containing):
            state = Containment.CONTAINED
        elif effective:
            state = Containment.PARTIALLY_CONTAINED
        else:
            state = Containment.NOT_CONTAINED
        users.append(
            UserContainment(
                user=label,
                user_id=ids.get(label, ""),
                steps={kind: _step(result) for kind, result in taken.items()},
                state=state,
                escalate=any(r.escalate for r in taken.values()) or bool(waiting and attempted),
            )
        )
    return _overall(users), tuple(users)


_NOT_ATTEMPTED = frozenset(
    {ActionStatus.WOULD_SEND, ActionStatus.AWAITING_APPROVAL, ActionStatus.BLOCKED}
)


def _step(result: ActionResult) -> str:
    if result.problem is not None and result.status is not ActionStatus.SUCCEEDED:
        return result.problem.value
    return result.status.value


def _overall(users: Sequence[UserContainment]) -> Containment:
    states = {user.state for user in users} - {Containment.NOT_ATTEMPTED}
    if not states:
        return Containment.NOT_ATTEMPTED
    if states == {Containment.CONTAINED}:
        return Containment.CONTAINED
    if states == {Containment.NOT_CONTAINED}:
        return Containment.NOT_CONTAINED
    return Containment.PARTIALLY_CONTAINED
