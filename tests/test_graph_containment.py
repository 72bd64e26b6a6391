"""The act step against the emulator's Graph: batching, retries, failure
isolation, verification, the ledger, and the field cases of Graph actions.

Each test runs the real Graph responder (msgraph-sdk over HTTPS) through the
runner's act step, :class:`playbooks.execution.Executor`, exactly as a run in
auto mode or an approved plan's execution does.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.clients import Clients
from connectors.credentials import build_credential
from connectors.graph import GraphOptions, GraphResponder
from connectors.retry import RetryPolicy
from playbooks import actions as requests
from playbooks.audit import AuditLog
from playbooks.execution import Executor
from playbooks.models import (
    ActionKind,
    ActionResult,
    Gate,
    GuardrailDecision,
    PlannedAction,
    Target,
    Tier,
)
from playbooks.store import open_store
from tests.graph_helpers import emulator_settings, graph_calls

SIGN_IN = datetime(2026, 1, 15, 9, 24, 58, tzinfo=UTC)


def planned(kind: ActionKind, target: Target, *, privileged: bool = False) -> PlannedAction:
    decisions = (
        (GuardrailDecision(guardrail="privileged_account", gate=Gate.APPROVAL, detail="admin"),)
        if privileged
        else ()
    )
    return PlannedAction(
        id=f"a-{kind.value}-{target.label}",
        action=kind,
        targets=(target,),
        finding_ids=(f"f-{target.label}",),
        tier=Tier.HIGH,
        gate=Gate.APPROVAL if privileged else Gate.UNATTENDED,
        request=requests.request_for(kind, [target]),
        decisions=decisions,
    )


def containment(*users: Target) -> list[PlannedAction]:
    return [
        planned(kind, user)
        for user in users
        for kind in (ActionKind.REVOKE_SESSIONS, ActionKind.DISABLE_ACCOUNT)
    ]


def act(
    emu: Any,
    audit: AuditLog,
    planned_actions: list[PlannedAction],
    *,
    approved: bool = False,
    sleeps: list[float] | None = None,
    **sections: dict[str, object],
) -> dict[str, ActionResult]:
    defaults: dict[str, dict[str, object]] = {
        "graph": {"verify_delay": 0, "identity_protection_wait": 0},
        "guardrails": {"max_users_per_hour": 1000},
    }
    settings = emulator_settings(emu, **{**defaults, **sections})

    async def fake_sleep(seconds: float) -> None:
        (sleeps if sleeps is not None else []).append(seconds)

    async def run() -> dict[str, ActionResult]:
        async with Clients(settings.azure, build_credential(settings.azure)) as clients:
            responder = GraphResponder(
                clients.graph(),
                policy=RetryPolicy.from_settings(settings.retry),
                options=GraphOptions(concurrency=settings.graph.concurrency),
                sleep=fake_sleep if sleeps is not None else asyncio.sleep,
            )
            executor = Executor(settings, audit, responder, responder)
            from playbooks.ports import listening_for_attempts

            with listening_for_attempts(executor.hear):
                return await executor.act(
                    "r-test",
                    planned_actions,
                    approved=approved,
                    plan_id="plan-r-test",
                    sign_in_times={
                        t.user_principal_name.lower(): SIGN_IN
                        for a in planned_actions
                        for t in a.targets
                    },
                )

    return asyncio.run(run())


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    return AuditLog(open_store(f"sqlite:///{tmp_path / 'state.db'}"))


def user(emu: Any, name: str, **values: Any) -> Target:
    made = emu.graph.add_user(f"{name}@contoso.com", **values)
    return Target(user_principal_name=made.user_principal_name, user_id=made.id)


def records(audit: AuditLog, kind: str) -> list[dict[str, Any]]:
    return [record.data for record in audit.records() if record.kind == kind]


# -- scale ---------------------------------------------------------------------------


def test_200_users_are_revoked_and_disabled_in_20_batches_over_5_round_trips(
    emu: Any, audit: AuditLog
) -> None:
    users = [user(emu, f"user{i:03}") for i in range(200)]
    # Each $batch takes 0.2 s: batches in flight together arrive together.
    emu.fault(path=r"^/v1\.0/\$batch$", delay=0.2, times=None)

    results = act(emu, audit, containment(*users))

    writes = [
        r
        for r in emu.requests(r"^/v1\.0/\$batch$")
        if any(i["method"] != "GET" for i in r.json()["requests"])
    ]
    assert len(writes) == 20
    assert all(len(r.json()["requests"]) == 20 for r in writes)
    assert round_trips(writes) == 5
    assert {r.status.value for r in results.values()} == {"succeeded"}
    assert all(r.verified for r in results.values())
    assert not any(u.account_enabled for u in emu.graph.users.values())


def round_trips(batch_requests: list[Any]) -> int:
    """Requests that arrived within 0.1 s of each other went out together."""
    times = sorted(r.at for r in batch_requests)
    return 1 + sum(
        1 for before, after in zip(times, times[1:], strict=False) if after - before > 0.1
    )


def test_200_users_are_all_contained_under_20_percent_throttling(emu: Any, audit: AuditLog) -> None:
    users = [user(emu, f"user{i:03}") for i in range(200)]
    emu.graph.throttle_rate = 0.2

    results = act(emu, audit, containment(*users), retry={"max_attempts": 8, "wait_initial": 0.01})

    assert {r.status.value for r in results.values()} == {"succeeded"}
    assert all(r.verified and r.containment_effective for r in results.values())
    assert max(r.attempts for r in results.values()) > 1
    for item in emu.graph.users.values():
        assert item.account_enabled is False
        assert item.sign_in_sessions_valid_from > "2025-01-02"
    throttled = [a for a in records(audit, "call.attempt") if a.get("status") == 429]
    assert throttled and all(a["outcome"] == "retrying" for a in throttled)


# -- failure isolation (B12) ----------------------------------------------------------


def test_a_refused_disable_does_not_cancel_the_revoke_and_each_4xx_is_tried_once(
    emu: Any, audit: AuditLog
) -> None:
    synced = user(emu, "synced", on_premises_sync_enabled=True)
    admin = user(
        emu,
        "admin",
        revoke_denied=True,
        roles=[
            {
                "id": "r",
                "displayName": "Exchange Administrator",
                "roleTemplateId": "29232cdf-9323-42fd-ade2-1d097af3e4de",
            }
        ],
    )
    plan = [
        planned(ActionKind.REVOKE_SESSIONS, synced),
        planned(ActionKind.DISABLE_ACCOUNT, synced),
        planned(ActionKind.REVOKE_SESSIONS, admin, privileged=True),
    ]

    results = act(emu, audit, plan, approved=True)

    from playbooks.containment import summarise

    overall, users = summarise(plan, results)
    by_user = {u.user: u for u in users}
    assert by_user[synced.label].steps == {
        "revoke_sessions": "succeeded",
        "disable_account": "requires_onprem",
    }
    assert by_user[admin.label].steps == {"revoke_sessions": "failed_permission"}
    assert by_user[admin.label].escalate
    assert overall.value == "partially contained"
    calls = graph_calls(emu, writes_only=True)
    assert calls.count(("PATCH", f"/users/{synced.user_id}", {"accountEnabled": False})) == 1
    assert calls.count(("POST", f"/users/{admin.user_id}/revokeSignInSessions", None)) == 1
    denied = results[plan[2].id]
    assert "the app needs User.RevokeSessions.All" in denied.detail
    assert denied.detail.startswith(
        "PermissionDenied: Microsoft Graph refused revokeSignInSessions for admin@contoso.com (403 Authorization_RequestDenied"
    )


# -- the field cases ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "status", "escalate"),
    [("true", "succeeded", False), ("204", "succeeded", False), ("false", "unconfirmed", True)],
)
def test_b01_revoke_200_true_and_204_succeed_and_false_is_unconfirmed(
    emu: Any, audit: AuditLog, answer: str, status: str, escalate: bool
) -> None:
    target = user(emu, "megan", revoke_answer=answer)
    (result,) = act(emu, audit, [planned(ActionKind.REVOKE_SESSIONS, target)]).values()
    assert (result.status.value, result.escalate) == (status, escalate)
    (outcome,) = records(audit, "action.outcome")
    assert outcome["status"] == status


def test_b02_a_guests_revoke_is_ineffective_and_escalated(emu: Any, audit: AuditLog) -> None:
    guest = emu.graph.add_user(
        "pat.lee_fabrikam.com#EXT#@contoso.onmicrosoft.com",
        "aaaaaaaa-0000-4000-8000-000000000001",
        user_type="Guest",
    )
    target = Target(user_principal_name=guest.user_principal_name, user_id=guest.id)

    (result,) = act(emu, audit, [planned(ActionKind.REVOKE_SESSIONS, target)]).values()

    assert result.status.value == "ineffective"
    assert result.containment_effective is False and result.escalate
    assert "does not contain a guest" in result.detail
    (verified,) = records(audit, "action.verified")
    assert verified["containment_effective"] is False


def test_b03_a_guest_upn_is_percent_encoded_in_the_path(emu: Any, audit: AuditLog) -> None:
    upn = "pat.lee_fabrikam.com#EXT#@contoso.onmicrosoft.com"
    emu.graph.add_user(upn, user_type="Guest")
    target = Target(user_principal_name=upn)

    assert (
        requests.revoke_sessions(target).path
        == "/users/pat.lee_fabrikam.com%23EXT%23@contoso.onmicrosoft.com/revokeSignInSessions"
    )
    results = act(emu, audit, [planned(ActionKind.REVOKE_SESSIONS, target)])

    paths = [path for _, path, _ in graph_calls(emu)]
    assert (
        "/users/pat.lee_fabrikam.com%23EXT%23@contoso.onmicrosoft.com/revokeSignInSessions" in paths
    )
    assert not any(
        path.startswith("/users/pat.lee_fabrikam.com/") or path == "/users/pat.lee_fabrikam.com"
        for path in paths
    )
    assert next(iter(results.values())).status.value == "ineffective"


def test_b10_a_204_disable_is_success_verified_with_select(emu: Any, audit: AuditLog) -> None:
    target = user(emu, "megan.bowen")
    (result,) = act(emu, audit, [planned(ActionKind.DISABLE_ACCOUNT, target)]).values()
    assert (result.status.value, result.verified, result.http_status) == ("succeeded", True, 204)
    reads = [
        path
        for method, path, _ in graph_calls(emu)
        if method == "GET" and "transitiveMemberOf" not in path
    ]
    assert reads and all("$select=" in path and "accountEnabled" in path for path in reads)


def test_b14_failures_keep_status_code_message_and_request_ids_in_the_audit(
    emu: Any, audit: AuditLog
) -> None:
    missing, flaky = user(emu, "gone"), user(emu, "flaky")
    emu.fault(
        scope="query",
        path=rf"/users/{missing.user_id}/revokeSignInSessions",
        status=404,
        body={
            "error": {
                "code": "Request_ResourceNotFound",
                "message": None,
                "innerError": {"request-id": "rid-1", "client-request-id": "crid-1"},
            }
        },
    )
    emu.fault(
        scope="query",
        path=rf"/users/{flaky.user_id}/revokeSignInSessions",
        status=500,
        body={"error": {"code": "UnknownError", "message": ""}},
        times=None,
    )

    results = act(
        emu,
        audit,
        [planned(ActionKind.REVOKE_SESSIONS, missing), planned(ActionKind.REVOKE_SESSIONS, flaky)],
    )

    outcomes = {o["action"]: o for o in records(audit, "action.outcome")}
    row = outcomes[f"a-revoke_sessions-{missing.label}"]["error"]
    assert {
        k: row[k]
        for k in (
            "status",
            "code",
            "message",
            "request_id",
            "client_request_id",
            "class",
            "retried",
        )
    } == {
        "status": 404,
        "code": "Request_ResourceNotFound",
        "message": None,
        "request_id": "rid-1",
        "client_request_id": "crid-1",
        "class": "not_found",
        "retried": False,
    }
    row = outcomes[f"a-revoke_sessions-{flaky.label}"]["error"]
    assert (row["status"], row["code"], row["class"], row["retried"]) == (
        500,
        "UnknownError",
        "transient",
        True,
    )
    assert results[f"a-revoke_sessions-{flaky.label}"].attempts == 4


def test_b08_retry_after_decimal_missing_and_too_long_stops_as_throttled(
    emu: Any, audit: AuditLog
) -> None:
    target = user(emu, "megan")
    path = rf"/users/{target.user_id}/revokeSignInSessions"
    for retry_after in ("0.249", None, "3600"):
        emu.fault(
            scope="query",
            path=path,
            status=429,
            headers={"Retry-After": retry_after} if retry_after else {},
            body={"error": {"code": "TooManyRequests", "message": "slow down"}},
        )
    sleeps: list[float] = []

    (result,) = act(
        emu, audit, [planned(ActionKind.REVOKE_SESSIONS, target)], sleeps=sleeps
    ).values()

    assert (result.status.value, result.problem.value, result.attempts) == (
        "failed",
        "throttled",
        3,
    )  # type: ignore[union-attr]
    assert sleeps[0] == pytest.approx(0.249) and 0 < sleeps[1] < 1
    assert "longer than retry.wait_max" in result.detail
    attempts = [
        a for a in records(audit, "call.attempt") if a["operation"] == "revokeSignInSessions"
    ]
    assert attempts[-1]["retry_after"] == 3600


def test_b08_a_short_retry_after_reaches_the_success(emu: Any, audit: AuditLog) -> None:
    target = user(emu, "megan")
    path = rf"/users/{target.user_id}/revokeSignInSessions"
    for retry_after in ("0.249", None, "2"):
        emu.fault(
            scope="query",
            path=path,
            status=429,
            headers={"Retry-After": retry_after} if retry_after else {},
        )
    sleeps: list[float] = []

    (result,) = act(
        emu, audit, [planned(ActionKind.REVOKE_SESSIONS, target)], sleeps=sleeps
    ).values()

    assert (result.status.value, result.attempts) == ("succeeded", 4)
    assert sleeps[2] == 2


# -- the ledger ---------------------------------------------------------------------


def test_a_run_that_stopped_after_sending_is_resumed_without_sending_again(
    emu: Any, audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = user(emu, "megan")
    plan = containment(target)
    store = audit.store
    real = type(store).record_outcomes

    def power_cut(self: Any, outcomes: Any) -> None:
        raise RuntimeError("the process died after the batch went out")

    monkeypatch.setattr(type(store), "record_outcomes", power_cut)
    with pytest.raises(RuntimeError):
        act(emu, audit, plan)
    assert [e.status for e in store.ledger_for([target.user_id])] == ["intent", "intent"]
    monkeypatch.setattr(type(store), "record_outcomes", real)
    sent = len(graph_calls(emu, writes_only=True))

    results = act(emu, audit, plan)

    assert len(graph_calls(emu, writes_only=True)) == sent == 2
    assert {r.status.value for r in results.values()} == {"skipped"}
    assert all("interrupted run" in r.detail for r in results.values())
    assert [e.status for e in store.ledger_for([target.user_id])] == ["succeeded", "succeeded"]


def test_the_cooldown_holds_an_unattended_revoke_for_a_new_sign_in(
    emu: Any, audit: AuditLog
) -> None:
    target = user(emu, "megan")
    act(emu, audit, [planned(ActionKind.REVOKE_SESSIONS, target)])
    later = planned(ActionKind.REVOKE_SESSIONS, target).model_copy(
        update={"id": "a-later", "finding_ids": ("f-later",)}
    )
    emu.graph.find(target.user_id).sign_in_sessions_valid_from = "2025-01-01T00:00:00Z"

    (result,) = act(emu, audit, [later]).values()

    assert result.status.value == "awaiting_approval"
    assert "cooldown" in result.detail
    assert len(graph_calls(emu, writes_only=True)) == 1


def test_a_revoke_is_skipped_when_sessions_were_revoked_after_the_sign_in(
    emu: Any, audit: AuditLog
) -> None:
    target = user(emu, "megan", sign_in_sessions_valid_from="2026-01-15T10:00:00Z")
    (result,) = act(emu, audit, [planned(ActionKind.REVOKE_SESSIONS, target)]).values()
    assert result.status.value == "skipped"
    assert "after the sign-in at 2026-01-15T09:24:58Z" in result.detail
    assert graph_calls(emu, writes_only=True) == []


def test_a_throttled_batch_is_sent_again_whole(emu: Any, audit: AuditLog) -> None:
    users = [user(emu, f"user{i:02}") for i in range(10)]
    # The first write batch is throttled whole, twice.
    emu.fault(
        path=r"^/v1\.0/\$batch$",
        query="revokeSignInSessions",
        status=429,
        headers={"Retry-After": "0.01"},
        times=2,
    )

    results = act(emu, audit, containment(*users))

    assert {r.status.value for r in results.values()} == {"succeeded"}
    assert {r.attempts for r in results.values()} == {3}


def test_confirm_compromised_is_one_call_for_every_user_and_waits_out_its_throttle(
    emu: Any, audit: AuditLog
) -> None:
    users = [user(emu, name) for name in ("ana", "ben", "cy")]
    emu.fault(
        path=r"/riskyUsers/confirmCompromised$",
        status=429,
        body={"error": {"code": "TooManyRequests"}},
    )
    confirm = PlannedAction(
        id="a-confirm",
        action=ActionKind.CONFIRM_COMPROMISED,
        targets=tuple(users),
        finding_ids=tuple(f"f-{u.label}" for u in users),
        tier=Tier.HIGH,
        gate=Gate.UNATTENDED,
        request=requests.confirm_compromised(users),
    )
    sleeps: list[float] = []

    (result,) = act(
        emu,
        audit,
        [confirm],
        sleeps=sleeps,
        graph={"identity_protection_wait": 1.0, "verify_delay": 0},
    ).values()

    assert (result.status.value, result.attempts) == ("succeeded", 2)
    assert sleeps and sleeps[0] >= 0.5  # backoff from 1 s, jittered down to half at most
    assert emu.graph.confirmed_compromised == [[u.user_id for u in users]]
