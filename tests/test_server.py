"""tokenward serve: Sentinel gets a 202 fast, each incident runs once, only Sentinel gets in."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from playbooks.audit import AuditLog
from playbooks.errors import AuditError
from playbooks.server import open_audit
from playbooks.settings import ENV_AUDIT_KEY, settings_from_dict
from playbooks.store import open_store
from tests.service import (
    AUDIENCE,
    LOGIC_APP,
    TENANT_ID,
    Service,
    incident,
    running_service,
    service_settings,
)

GENERIC_401 = {"error": "unauthorized", "message": "authentication required"}


@pytest.fixture(scope="module")
def service(emulator: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    emulator.reset()
    with running_service(emulator, tmp_path_factory.mktemp("service")) as running:
        yield running


@pytest.fixture
def svc(service: Service, emu: Any) -> Service:
    return service


def sentinel_writes(emu: Any, body: dict[str, Any]) -> list[Any]:
    """Every request that could change the incident: the service runs in dry-run."""
    name = body["object"]["name"]
    return [
        request
        for method in ("PUT", "POST", "PATCH", "DELETE")
        for request in emu.requests(rf"(?i)/incidents/{name}", method=method)
    ]


def test_a_delivery_is_stored_acknowledged_run_once_and_in_dry_run_writes_nothing(
    svc: Service,
) -> None:
    body = incident()

    answer = svc.post(body)

    assert answer.status_code == 202
    accepted = answer.json()
    assert accepted["status"] == "accepted" and accepted["run_id"].startswith("r-")
    row = svc.wait_done(accepted["delivery_id"])
    assert row["status"] == "done" and row["run_id"] == accepted["run_id"]
    assert sentinel_writes(svc.emu, body) == [], "a dry-run writes nothing to Sentinel"
    assert svc.emu.sentinel.comments_of(body["object"]["id"]) == {}
    stored = svc.emu.sentinel.incident(body["object"]["id"])
    assert stored["properties"].get("labels") == body["object"]["properties"].get("labels")
    (comment,) = svc.would_be_comments(body)
    assert "target.user@contoso.com</b>: high, score 100" in comment
    kinds = [r.kind for r in svc.parts.audit.records(run_id=accepted["run_id"])]
    assert kinds[:3] == ["delivery.accepted", "delivery.claimed", "run.started"]
    assert kinds[-1] == "delivery.done"


def test_the_same_incident_delivered_again_is_the_same_run_and_runs_once(svc: Service) -> None:
    body = incident()
    first = svc.post(body).json()
    again = svc.post(body).json()

    assert again == {
        "status": "duplicate",
        "run_id": first["run_id"],
        "delivery_id": first["delivery_id"],
        "detail": again["detail"],
    }
    assert "same incident revision was delivered before" in again["detail"]
    svc.wait_done(first["delivery_id"])
    assert len(svc.would_be_comments(body)) == 1


def test_an_update_reruns_only_when_the_accounts_addresses_or_window_changed(svc: Service) -> None:
    body = incident()
    first = svc.post(body).json()

    renamed = json.loads(json.dumps(body))
    renamed["objectEventType"] = "Update"
    renamed["object"]["etag"] = '"rev-2"'
    renamed["object"]["properties"]["title"] = "Renamed by an analyst"
    unchanged = svc.post(renamed, seed=False).json()

    widened = json.loads(json.dumps(renamed))
    widened["object"]["etag"] = '"rev-3"'
    widened["object"]["properties"]["firstActivityTimeUtc"] = "2026-01-15T09:00:00Z"
    rerun = svc.post(widened, seed=False).json()

    assert unchanged["status"] == "duplicate" and unchanged["run_id"] == first["run_id"]
    assert "unchanged" in unchanged["detail"]
    assert rerun["status"] == "accepted" and rerun["run_id"] != first["run_id"]
    svc.wait_done(first["delivery_id"])
    svc.wait_done(rerun["delivery_id"])
    assert len(svc.would_be_comments(body)) == 2


def test_a_signed_body_from_another_sender_is_accepted(svc: Service) -> None:
    body = incident()
    svc.emu.sentinel.add(body["object"])
    raw = json.dumps(body).encode()

    answer = svc.post(body, raw=raw, headers=svc.signed(raw), seed=False)

    assert answer.status_code == 202
    row = svc.wait_done(answer.json()["delivery_id"])
    assert (row["scheme"], row["caller"]) == ("hmac", "hmac-sender")


def refused_cases(svc: Service, raw: bytes) -> dict[str, dict[str, str]]:
    now = int(time.time())
    return {
        "unsigned": {"Authorization": ""},
        "forged-signature": svc.signed(raw, secret="not-the-secret-" + "y" * 32),
        "signature-of-another-body": svc.signed(raw + b" "),
        "replayed-signature": svc.signed(raw, at=now - 3600),
        "future-signature": svc.signed(raw, at=now + 3600),
        "expired-token": {"Authorization": f"Bearer {svc.token(issued_ago=7200, lifetime=3600)}"},
        "token-for-another-audience": {
            "Authorization": f"Bearer {svc.token(audience='https://management.azure.com')}"
        },
        "token-from-another-principal": {
            "Authorization": f"Bearer {svc.token(oid='99999999-0000-4000-8000-000000000009')}"
        },
        "token-from-another-tenant": {
            "Authorization": f"Bearer {svc.token(tenant='11111111-0000-4000-8000-000000000001')}"
        },
        "token-with-unpublished-key": {"Authorization": f"Bearer {forged_token(svc)}"},
        "unsigned-token": {"Authorization": "Bearer " + unsigned_token()},
        "garbage-token": {"Authorization": "Bearer not.a.token"},
        "basic-auth": {"Authorization": "Basic dXNlcjpwYXNz"},
    }


def forged_token(svc: Service) -> str:
    # The tenant's current kid, signed by a key the tenant never published.
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    now = int(time.time())
    claims = {
        "aud": AUDIENCE,
        "iss": f"https://sts.windows.net/{TENANT_ID}/",
        "oid": LOGIC_APP,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    }
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": svc.emu.identity.current_kid})


def unsigned_token() -> str:
    from tests.emulator.identity import token_for

    return token_for(AUDIENCE, client_id=LOGIC_APP, tenant=TENANT_ID, roles=[])


def test_forged_unsigned_expired_and_replayed_requests_are_refused_and_nothing_is_stored(
    svc: Service,
) -> None:
    body = incident()
    raw = json.dumps(body).encode()
    before = svc.parts.inbox.counts()

    answers = {
        name: svc.post(body, raw=raw, headers=headers)
        for name, headers in refused_cases(svc, raw).items()
    }

    assert {name: a.status_code for name, a in answers.items()} == {name: 401 for name in answers}
    assert all(a.json() == GENERIC_401 for a in answers.values())
    assert svc.parts.inbox.counts() == before
    time.sleep(0.3)
    reasons = [
        r.data["reason"]
        for r in svc.parts.audit.records(run_id="webhook")
        if r.kind == "request.refused"
    ]
    for expected in (
        "no credentials",
        "does not match the body",
        "a replay",
        "has expired",
        "another audience",
        "may not call",
        "another issuer",
        "invalid (InvalidSignatureError)",
        "not a JWT",
    ):
        assert any(expected in reason for reason in reasons), expected


def test_a_refusal_never_tells_the_caller_why(svc: Service) -> None:
    answer = svc.post(
        incident(), headers={"Authorization": f"Bearer {svc.token(issued_ago=7200, lifetime=3600)}"}
    )
    assert answer.json() == GENERIC_401
    assert "expired" not in answer.text
    assert answer.headers["www-authenticate"] == "Bearer"


def test_health_and_readiness(svc: Service) -> None:
    with svc.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"store": "ok", "auth": "ok", "worker": "ok"},
        "recovered_incidents": 0,
        "jobs": {},
    }


def test_a_store_process_that_died_between_deliveries_is_back_by_the_readiness_check(
    emu: Any, tmp_path: Path
) -> None:
    with running_service(emu, tmp_path, worker=False, store_apart=True) as service:
        store = service.parts.store_process
        assert store is not None and store._process is not None
        first = store._process
        os.kill(first.pid or 0, signal.SIGKILL)
        first.join(10)
        with service.client() as client:
            ready = client.get("/readyz")
        second = store._process
        answer = service.post(incident())
        served = second is store._process and second is not None and second.is_alive()

    assert ready.status_code == 200
    assert ready.json()["checks"] == {"store": "ok", "auth": "ok", "store_process": "ok"}
    assert second is not first and served
    assert answer.status_code == 202


def test_a_store_process_that_cannot_start_shows_as_not_ready(
    emu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cannot_start() -> None:
        raise OSError(24, "Too many open files")

    with running_service(emu, tmp_path, worker=False, store_apart=True) as service:
        store = service.parts.store_process
        assert store is not None
        monkeypatch.setattr(store, "revive", cannot_start)
        with service.client() as client:
            ready = client.get("/readyz")

    assert ready.status_code == 503
    assert ready.json()["checks"]["store_process"] == "failed"


def test_the_service_does_not_publish_its_own_docs(svc: Service) -> None:
    with svc.client() as client:
        assert client.get("/openapi.json").status_code == 404
        assert client.get("/docs").status_code == 404


def test_readiness_fails_and_tokens_wait_until_the_signing_keys_are_loaded(
    emu: Any, tmp_path: Path
) -> None:
    emu.fault(path=r"/discovery/v2\.0/keys$", status=503, times=None)

    with running_service(emu, tmp_path, worker=False, wait_for_keys=False) as service:
        with service.client() as client:
            ready = client.get("/readyz")
        answer = service.post(incident())
        counts = service.parts.inbox.counts()

    assert ready.status_code == 503 and ready.json()["checks"]["auth"] == "not ready"
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert counts == {}


def test_no_token_or_secret_reaches_a_log_line_or_an_audit_record(
    svc: Service, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from tests.service import SECRET

    caplog.set_level(logging.DEBUG)
    good = svc.token()
    expired = svc.token(issued_ago=7200, lifetime=3600)
    body = incident()
    raw = json.dumps(body).encode()
    accepted = svc.post(body, headers={"Authorization": f"Bearer {good}"}).json()
    svc.post(body, headers={"Authorization": f"Bearer {expired}"})
    signed = svc.signed(raw, secret="wrong-" + SECRET)
    svc.post(body, raw=raw, headers=signed)
    svc.wait_done(accepted["delivery_id"])
    time.sleep(0.3)

    logged = "\n".join(record.getMessage() for record in caplog.records)
    audited = json.dumps([r.data for r in svc.parts.audit.records()])
    for secret in (good, expired, good.split(".")[2], SECRET, signed["X-Tokenward-Signature"]):
        assert secret not in logged
        assert secret not in audited


def test_a_run_that_finds_nothing_hunts_again_later_and_stops_when_it_finds_the_sign_in(
    emu: Any, tmp_path: Path
) -> None:
    # Field case B20: the first hunt runs before the sign-in reached the workspace.
    from tests.service import service_settings

    settings = service_settings(emu, tmp_path, sentinel={"rehunt_after": ["1s", "2s"]})
    with running_service(emu, tmp_path, settings=settings) as service:
        nobody = incident(
            relatedEntities=[
                {
                    "kind": "Account",
                    "properties": {"aadUserId": "aaaaaaaa-0000-4000-8000-00000000beef"},
                }
            ]
        )
        found = incident()
        first = service.post(nobody).json()
        other = service.post(found).json()
        service.wait_done(first["delivery_id"])
        service.wait_done(other["delivery_id"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(service.would_be_comments(nobody)) < 3:
            time.sleep(0.1)
        time.sleep(0.5)
        runs = [r.run_id for r in service.parts.audit.records() if r.kind == "run.finished"]
        nobody_comments = service.would_be_comments(nobody)
        found_comments = service.would_be_comments(found)

    assert len(nobody_comments) == 3, "the first run and two re-hunts, each with its one comment"
    assert sum("re-hunt 2 of 2" in m for m in nobody_comments) == 1
    assert [r for r in runs if r.startswith(first["run_id"])] == [
        first["run_id"],
        first["run_id"] + "+rehunt-1",
        first["run_id"] + "+rehunt-2",
    ]
    assert len(found_comments) == 1, "a run that found the sign-in needs no re-hunt"
    assert ["hunts again at" in m for m in nobody_comments] == [True, True, False]
    assert "hunts again" not in found_comments[0]


def test_a_signing_key_rotated_in_is_picked_up_without_a_restart(svc: Service) -> None:
    assert svc.parts.keys is not None
    svc.parts.keys.min_refresh_s = 0
    new_kid = svc.emu.identity.rotate()
    token = svc.emu.identity.signed_token(AUDIENCE, oid=LOGIC_APP, kid=new_kid)

    first = svc.post(incident(), headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + 10
    later = first
    while later.status_code != 202 and time.monotonic() < deadline:
        time.sleep(0.1)
        later = svc.post(incident(), headers={"Authorization": f"Bearer {token}"})

    assert first.status_code == 401, "the key was not published when tokenward last looked"
    assert later.status_code == 202, "the refresh the unknown key set off brought it in"


def test_a_worker_process_that_dies_is_started_again(emu: Any, tmp_path: Path) -> None:
    import asyncio

    from playbooks import server

    with running_service(emu, tmp_path) as service:
        worker = service.parts.worker
        assert worker is not None and worker.alive
        worker._process.kill()  # type: ignore[union-attr]
        worker._process.join(5)  # type: ignore[union-attr]

        # The supervisor's loop, without its waits.
        async def once() -> None:
            task = asyncio.create_task(server._supervise(service.parts, every_s=0.01, backoff_s=0))
            await asyncio.sleep(0.2)
            task.cancel()

        asyncio.run(once())
        answer = service.post(incident())
        row = service.wait_done(answer.json()["delivery_id"])

    assert row["status"] == "done"
    assert "worker.restarted" in [r.kind for r in service.parts.audit.records(run_id="webhook")]


def test_a_worker_that_cannot_run_with_its_configuration_is_not_restarted_and_deliveries_are_refused(
    emu: Any, tmp_path: Path
) -> None:
    import asyncio
    import shutil

    from playbooks import server

    playbook = tmp_path / "playbook"
    shutil.copytree(Path(server.__file__).with_name("device_code"), playbook)
    settings = service_settings(emu, tmp_path, playbook={"path": str(playbook / "playbook.yaml")})
    with running_service(emu, tmp_path, settings=settings) as service:
        worker = service.parts.worker
        assert worker is not None and worker.alive
        worker._process.kill()  # type: ignore[union-attr]
        worker._process.join(5)  # type: ignore[union-attr]
        (playbook / "playbook.yaml").write_text("kind: nothing\n")

        async def supervise(seconds: float) -> None:
            task = asyncio.create_task(server._supervise(service.parts, every_s=0.01, backoff_s=0))
            await asyncio.sleep(seconds)
            task.cancel()

        # Restarted once (the edit was not known), it stops on the bad playbook.
        asyncio.run(supervise(0.2))
        worker._process.join(30)  # type: ignore[union-attr]
        asyncio.run(supervise(0.2))
        refused = service.post(incident())
        with service.client() as client:
            ready = client.get("/readyz")
        restarts = [r.kind for r in service.parts.audit.records(run_id="webhook")]

    assert worker.exit_code == server.CANNOT_START and worker.failed
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "60"
    assert "worker is not running" in refused.json()["message"]
    assert ready.status_code == 503 and ready.json()["checks"]["worker"] == "failed"
    assert restarts.count("worker.restarted") == 1 and restarts.count("worker.failed") == 1


def test_an_incident_from_a_workspace_not_allowed_is_refused_and_not_stored(
    emu: Any, tmp_path: Path
) -> None:
    from tests.service import service_settings

    other = "/subscriptions/5f2c3b7e-0000-4000-8000-000000000001/resourceGroups/rg-soc/providers/Microsoft.OperationalInsights/workspaces/law-other"
    settings = service_settings(emu, tmp_path, sentinel={"allowed_workspaces": [other]})
    with running_service(emu, tmp_path, worker=False, settings=settings) as service:
        answer = service.post(incident())
        counts = service.parts.inbox.counts()

    assert answer.status_code == 403 and answer.json() == {
        "error": "forbidden",
        "message": "not allowed",
    }
    assert counts == {}


def test_the_service_will_not_open_an_audit_keyed_with_another_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    AuditLog(open_store(url), key=b"k" * 32).record("r-1", "step", {})
    for environ in ({}, {ENV_AUDIT_KEY: "o" * 32}):
        with pytest.raises(AuditError, match=ENV_AUDIT_KEY):
            open_audit(settings_from_dict({"store": {"url": url}}, environ=environ))
    _, audit = open_audit(
        settings_from_dict({"store": {"url": url}}, environ={ENV_AUDIT_KEY: "k" * 32})
    )
    assert audit.verify().ok
