"""The act and verify steps of a run: read, screen, record intent, send, record
outcome, read back, verify.

This is part of the runner, the only code that calls connectors. The
decisions are :mod:`playbooks.containment`'s; this module feeds it the
directory's readings and the action ledger, and writes down everything in
order: a ledger intent and an ``action.intent`` audit record before any
request leaves, the outcome of each call as soon as its batch answers, and
the verification after the read-back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from playbooks.audit import AuditLog
from playbooks.containment import (
    CONTAINING,
    ExecutionPolicy,
    Screening,
    Verdict,
    result_for,
    screen,
    user_key,
    verify,
)
from playbooks.models import (
    ActionResult,
    ActionStatus,
    DirectoryUser,
    PlannedAction,
    Target,
)
from playbooks.ports import CallAttempt, DirectoryReader, ExecutionContext, Responder
from playbooks.settings import Settings
from playbooks.times import isoformat_z, utcnow

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


def execution_policy(settings: Settings) -> ExecutionPolicy:
    rails = settings.guardrails
    return ExecutionPolicy(
        kill_switch=rails.kill_switch,
        protected_accounts=frozenset(rails.protected_accounts),
        privileged_roles=frozenset(role.lower() for role in rails.privileged_roles),
        max_users_per_hour=rails.max_users_per_hour,
        revoke_cooldown=timedelta(minutes=rails.revoke_cooldown_minutes),
    )


def target_key(target: Target) -> str:
    return target.user_id or target.user_principal_name


@dataclass
class Executor:
    """Carries out one run's (or one approved plan's) writes."""

    settings: Settings
    audit: AuditLog
    responder: Responder
    directory: DirectoryReader
    sleep: Sleep = asyncio.sleep
    _attempts: list[CallAttempt] = field(default_factory=list, init=False)

    def hear(self, attempt: CallAttempt) -> None:
        """The attempt listener: attempts are written with the next outcomes."""
        self._attempts.append(attempt)

    def flush(self, run_id: str) -> None:
        attempts, self._attempts = self._attempts, []
        self.audit.record_many(run_id, [("call.attempt", item.as_record()) for item in attempts])

    async def read(
        self, run_id: str, targets: Sequence[Target], *, why: str
    ) -> dict[str, DirectoryUser]:
        """The users as Graph has them now, keyed like the targets; audited."""
        unique = list({target_key(target): target for target in targets}.values())
        if not unique:
            return {}
        readings = await self.directory.read_users(unique)
        self.flush(run_id)
        self.audit.record_many(
            run_id,
            [("directory.read", {"why": why, **_reading(user)}) for user in readings],
        )
        return {target_key(target): user for target, user in zip(unique, readings, strict=True)}

    async def act(
        self,
        run_id: str,
        actions: Sequence[PlannedAction],
        *,
        approved: bool,
        plan_id: str,
        sign_in_times: dict[str, datetime],
        users: dict[str, DirectoryUser] | None = None,
    ) -> dict[str, ActionResult]:
        store = self.audit.store
        targets = [target for action in actions for target in action.targets]
        now = utcnow()

        # Read the users (unless the run just did) and what the ledger knows of them.
        before = (
            users if users is not None else await self.read(run_id, targets, why="before acting")
        )
        keys = sorted(
            {user_key(t, before.get(target_key(t))) for t in targets}
            | {t.user_principal_name.lower() for t in targets}
        )
        ledger = store.ledger_for(keys)
        recent = store.users_acted_on_since(isoformat_z(now - timedelta(hours=1)))

        # Screen every action against the guardrails as they stand now.
        screenings = screen(
            actions,
            before,
            ledger,
            execution_policy(self.settings),
            approved=approved,
            now=now,
            sign_in_times=sign_in_times,
            recent_users=recent,
        )
        settles = [entry for item in screenings for entry in item.settles]
        if settles:
            store.record_outcomes(settles)
            self.audit.record_many(
                run_id,
                [
                    ("ledger.resumed", {"ledger_id": i, "status": s, "detail": d})
                    for i, s, d in settles
                ],
            )
        results: dict[str, ActionResult] = {}
        unsent = [
            (a, s)
            for a, s in zip(actions, screenings, strict=True)
            if s.verdict is not Verdict.SEND
        ]
        for action, screening in unsent:
            results[action.id] = result_for(screening)
        self.audit.record_many(run_id, [_screened(a, s) for a, s in unsent])
        sending = [a for a, s in zip(actions, screenings, strict=True) if s.verdict is Verdict.SEND]
        if not sending:
            return results

        # Intent before anything leaves: one ledger row per action and user.
        rows: list[dict[str, Any]] = []
        owners: list[str] = []
        for action in sending:
            for target in action.targets:
                sign_in = sign_in_times.get(target.user_principal_name.lower())
                rows.append(
                    {
                        "action_id": action.id,
                        "kind": action.action.value,
                        "user_key": user_key(target, before.get(target_key(target))),
                        "user_principal_name": target.user_principal_name,
                        "finding_ids": action.finding_ids,
                        "sign_in_at": isoformat_z(sign_in) if sign_in else None,
                        "run_id": run_id,
                        "plan_id": plan_id,
                    }
                )
                owners.append(action.id)
        entry_ids = store.record_intents(rows)
        ledger_ids: dict[str, list[int]] = {}
        for owner, entry_id in zip(owners, entry_ids, strict=True):
            ledger_ids.setdefault(owner, []).append(entry_id)
        self.audit.record_many(run_id, [_intent(action, plan_id) for action in sending])

        # Send; each batch's outcomes are written as soon as it answers.
        def settled(done: Sequence[ActionResult]) -> None:
            self.flush(run_id)
            store.record_outcomes(
                [
                    (i, r.status.value, r.detail)
                    for r in done
                    for i in ledger_ids.get(r.action_id, [])
                ]
            )
            self.audit.record_many(run_id, [("action.outcome", _outcome(r)) for r in done])

        context = ExecutionContext(run_id=run_id, sign_in_times=sign_in_times, on_result=settled)
        sent = await self.responder.execute(sending, context)
        self.flush(run_id)

        # Read back and verify; once more after a pause if a change is not visible yet.
        answered = {result.action_id: result for result in sent}
        checked = [a for a in sending if a.action in CONTAINING]
        after = await self.read(run_id, [t for a in checked for t in a.targets], why="after acting")
        final = {a.id: _verified(a, answered[a.id], before, after) for a in sending}
        late = [a for a in checked if final[a.id].verified is False]
        if late and self.settings.graph.verify_delay:
            await self.sleep(self.settings.graph.verify_delay)
            again = await self.read(
                run_id, [t for a in late for t in a.targets], why="read back again"
            )
            final |= {a.id: _verified(a, answered[a.id], before, again) for a in late}
        changed = [r for r in final.values() if r.status is not answered[r.action_id].status]
        store.record_outcomes(
            [(i, r.status.value, r.detail) for r in changed for i in ledger_ids[r.action_id]]
        )
        self.audit.record_many(
            run_id,
            [("action.verified", _outcome(r)) for r in final.values() if r.verified is not None],
        )
        results.update(final)
        for result in final.values():
            logger.info("%s: %s", result.action_id, result.status.value)
        return results


def _verified(
    action: PlannedAction,
    result: ActionResult,
    before: dict[str, DirectoryUser],
    after: dict[str, DirectoryUser],
) -> ActionResult:
    key = target_key(action.target)
    return verify(action, result, before.get(key), after.get(key))


def _reading(user: DirectoryUser) -> dict[str, Any]:
    return user.model_dump(mode="json", exclude_none=True)


def _screened(action: PlannedAction, screening: Screening) -> tuple[str, dict[str, Any]]:
    kind = {
        Verdict.SKIP: "action.skipped",
        Verdict.HOLD: "action.held",
        Verdict.BLOCK: "action.blocked",
        Verdict.FAIL: "action.failed",
    }[screening.verdict]
    return kind, {
        "action": action.id,
        "kind": action.action.value,
        "targets": [t.label for t in action.targets],
        "guardrail": screening.guardrail,
        "detail": screening.detail,
    }


def _intent(action: PlannedAction, plan_id: str) -> tuple[str, dict[str, Any]]:
    return "action.intent", {
        "action": action.id,
        "plan": plan_id,
        "kind": action.action.value,
        "targets": [t.label for t in action.targets],
        "request": action.request.model_dump(mode="json"),
    }


def _outcome(result: ActionResult) -> dict[str, Any]:
    record: dict[str, Any] = {
        "action": result.action_id,
        "status": result.status.value,
        "detail": result.detail,
        "attempts": result.attempts,
        "duration_ms": result.duration_ms,
        "containment_effective": result.containment_effective,
        "verified": result.verified,
    }
    if result.http_status is not None or result.request_id:
        record["http_status"] = result.http_status
        record["request_id"] = result.request_id
    if result.status in (ActionStatus.FAILED, ActionStatus.UNKNOWN) or result.error_code:
        # B14: everything a person needs to follow a failure up with Microsoft.
        record["error"] = {
            "status": result.http_status,
            "code": result.error_code,
            "message": result.error_message,
            "request_id": result.request_id,
            "client_request_id": result.client_request_id,
            "class": result.error_class,
            "problem": result.problem.value if result.problem else None,
            "retried": result.attempts > 1,
        }
    return record
