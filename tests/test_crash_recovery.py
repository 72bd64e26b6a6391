"""A worker killed mid-run loses nothing: the restart finishes the run, and writes once.

``tokenward serve`` runs as its own process (uvicorn, the inbox in a SQLite
file, and the worker process it starts) against the emulator. The emulator holds one of the
run's Sentinel requests (in approve: a dry-run writes nothing) for a long while;
the test kills serve with SIGKILL
while that request is in flight (its worker, orphaned, stops within half a
second), starts it again on the same database, and reads the emulator's
request log and the store.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from playbooks.store import audit_records, inbox
from tests.emulator import ENVIRON, settings_data
from tests.runs import export_scenario, seed_scenario
from tests.scheduled import tenant
from tests.service import AUDIENCE, LOGIC_APP, SECRET, incident

TOKENWARD = str(Path(sys.executable).with_name("tokenward"))
pytestmark = pytest.mark.slow


def to_toml(data: dict[str, Any]) -> str:
    """Settings as TOML (tables of scalars and lists, which is all they hold)."""

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | float):
            return repr(item)
        if isinstance(item, list | tuple):
            return "[" + ", ".join(value(v) for v in item) + "]"
        return json.dumps(str(item))

    lines: list[str] = []

    def table(name: str, values: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        nested = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines.extend(f"{k} = {value(v)}" for k, v in values.items() if not isinstance(v, dict))
        for key, inner in nested.items():
            table(f"{name}.{key}", inner)

    for name, values in data.items():
        table(name, values)
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def tokenward_serve(
    emu: Any, folder: Path, port: int, exports: Path, now: str
) -> Iterator[subprocess.Popen[bytes]]:
    log = (folder / "serve.log").open("ab")
    process = subprocess.Popen(
        [
            TOKENWARD,
            "--config",
            str(folder / "tokenward.toml"),
            "-v",
            "serve",
            "--source",
            f"files:{exports}",
            "--now",
            now,
        ],
        cwd=folder,
        env={**os.environ, **ENVIRON, "TOKENWARD_WEBHOOK_HMAC_SECRET": SECRET},
        stdout=log,
        stderr=log,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(10)
        log.close()


def wait_ready(url: str, ca: Path, process: subprocess.Popen[bytes], folder: Path) -> None:
    deadline = time.monotonic() + 30
    context = ssl.create_default_context(cafile=str(ca))
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("tokenward serve exited:\n" + (folder / "serve.log").read_text())
        try:
            if httpx.get(f"{url}/readyz", verify=context, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(
        "tokenward serve did not become ready:\n" + (folder / "serve.log").read_text()
    )


def wait_for(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize(
    ("held", "method", "path"),
    [
        ("before-any-write", "GET", r"(?i)/incidents/{name}$"),
        ("during-the-comment-put", "PUT", r"(?i)/incidents/{name}/comments/"),
    ],
)
def test_a_worker_killed_mid_run_is_recovered_and_the_incident_gets_one_comment(
    emu: Any, tmp_path: Path, held: str, method: str, path: str
) -> None:
    scenario = seed_scenario()
    exports = export_scenario(scenario, tmp_path / "exports")
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    database = tmp_path / "tokenward.db"
    settings = settings_data(
        emu,
        store={"url": f"sqlite:///{database}"},
        server={"port": port, "certfile": str(emu.tls.cert_file), "keyfile": str(emu.tls.key_file)},
        webhook={
            "auth": ["bearer", "hmac"],
            "audiences": [AUDIENCE],
            "allowed_principals": [LOGIC_APP],
            "mode": "approve",
        },
        inbox={"lease_seconds": 2, "poll_seconds": 0.1, "retry_seconds": 0.5},
        threat_intel={"ip_ranges": ["185.220.101.0/24"]},
        graph={"verify_delay": 0, "identity_protection_wait": 0},
    )
    (tmp_path / "tokenward.toml").write_text(to_toml(settings))
    tenant(emu)
    body = incident()
    name = body["object"]["name"]
    emu.sentinel.add(body["object"])
    emu.fault(method=method, path=path.format(name=name), delay=20)
    now = scenario.clock.strftime("%Y-%m-%dT%H:%M:%SZ")
    context = ssl.create_default_context(cafile=str(emu.ca_file))

    # First life: accept the delivery, start the run, die while Sentinel holds a request.
    with tokenward_serve(emu, tmp_path, port, exports, now) as first:
        wait_ready(url, emu.ca_file, first, tmp_path)
        token = emu.identity.signed_token(AUDIENCE, oid=LOGIC_APP)
        answer = httpx.post(
            f"{url}/webhooks/sentinel",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            verify=context,
        )
        assert answer.status_code == 202
        run_id = answer.json()["run_id"]
        wait_for(lambda: emu.requests(path.format(name=name), method=method), f"the held {method}")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    killed_at = len(emu.requests(r"(?i)/comments/", method="PUT"))

    # Second life: same database; the lease runs out and the run is finished.
    with tokenward_serve(emu, tmp_path, port, exports, now) as second:
        wait_ready(url, emu.ca_file, second, tmp_path)
        engine = create_engine(f"sqlite:///{database}")

        def done() -> bool:
            with engine.connect() as connection:
                row = connection.execute(
                    select(inbox.c.status).where(inbox.c.run_id == run_id)
                ).one()
            return bool(row.status == "done")

        wait_for(done, "the recovered run to finish")

    with engine.connect() as connection:
        row = connection.execute(select(inbox).where(inbox.c.run_id == run_id)).mappings().one()
        kinds = [
            r.kind
            for r in connection.execute(
                select(audit_records)
                .where(audit_records.c.run_id == run_id)
                .order_by(audit_records.c.seq)
            )
        ]
    assert row["attempts"] == 2
    assert kinds.count("run.started") == 2 and kinds.count("run.finished") == 1
    assert kinds.count("delivery.accepted") == 1 and kinds.count("delivery.done") == 1

    comments = emu.sentinel.comments_of(body["object"]["id"])
    puts = emu.requests(rf"(?i)/incidents/{name}/comments/", method="PUT")
    assert len(comments) == 1, "one comment per run, however often it was written"
    assert len({put.path.rsplit("/", 1)[-1] for put in puts}) == 1, (
        "every write used the run's one comment id"
    )
    if held == "before-any-write":
        assert killed_at == 0 and len(puts) == 1, (
            "the first life wrote nothing; the second wrote once"
        )
    else:
        assert len(puts) == 2, "the write in flight when it died, and the repeat under the same id"
    audit = subprocess.run(
        [TOKENWARD, "--config", str(tmp_path / "tokenward.toml"), "audit", "verify"],
        cwd=tmp_path,
        env={**os.environ, **ENVIRON},
        capture_output=True,
        text=True,
    )
    assert audit.returncode == 0, audit.stderr


def test_workers_apart_from_serve_process_what_it_stores(emu: Any, tmp_path: Path) -> None:
    from tests.service import running_service, service_settings

    scenario = seed_scenario()
    exports = export_scenario(scenario, tmp_path / "exports")
    settings = service_settings(emu, tmp_path, threat_intel={"ip_ranges": ["185.220.101.0/24"]})
    data = settings_data(
        emu,
        store={"url": settings.store.url},
        webhook={"auth": ["hmac"]},
        inbox={"poll_seconds": 0.1},
    )
    (tmp_path / "worker.toml").write_text(to_toml(data))
    now = scenario.clock.strftime("%Y-%m-%dT%H:%M:%SZ")
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [
            TOKENWARD,
            "--config",
            str(tmp_path / "worker.toml"),
            "worker",
            "--source",
            f"files:{exports}",
            "--now",
            now,
        ],
        cwd=tmp_path,
        env={**os.environ, **ENVIRON, "TOKENWARD_WEBHOOK_HMAC_SECRET": SECRET},
        stdout=log,
        stderr=log,
    )
    try:
        with running_service(emu, tmp_path, worker=False, settings=settings) as service:
            body = incident()
            answer = service.post(body)
            row = service.wait_done(answer.json()["delivery_id"])
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        log.close()

    assert row["status"] == "done"
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()
    assert emu.sentinel.comments_of(body["object"]["id"]) == {}, "a dry-run writes nothing"
    (would_be,) = [
        r.data["request"]["body"]["properties"]["message"]
        for r in service.parts.audit.records(run_id=row["run_id"])
        if r.kind == "incident.dry_run"
    ]
    assert "score 100" in would_be
