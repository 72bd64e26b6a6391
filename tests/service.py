"""tokenward serve under uvicorn on 127.0.0.1, over TLS, for specification tests.

The service runs as it does in production (the FastAPI app on uvicorn, the
inbox in a SQLite file, the worker process, the Sentinel writer through the
real azure-core pipeline) against the emulator; only the endpoints, the CA
and the exported-logs source differ.
"""

from __future__ import annotations

import copy
import hashlib
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from playbooks.server import ServiceParts, SourceSpec, build_parts, create_app
from playbooks.settings import Settings, settings_from_dict
from playbooks.webhook_auth import sign
from tests.emulator import ENVIRON, TENANT_ID, settings_data
from tests.runs import export_scenario, seed_scenario, trigger_body

AUDIENCE = "api://tokenward"
LOGIC_APP = "0b0b0b0b-0000-4000-8000-000000000007"
APPROVER = "a9a9a9a9-0000-4000-8000-000000000011"
SECRET = "webhook-secret-" + "x" * 32
SERVICE_ENVIRON = {**ENVIRON, "TOKENWARD_WEBHOOK_HMAC_SECRET": SECRET}


def service_settings(emu: Any, directory: Path, **sections: dict[str, Any]) -> Settings:
    base: dict[str, dict[str, Any]] = {
        "store": {"url": f"sqlite:///{directory / 'tokenward.db'}"},
        "webhook": {
            "auth": ["bearer", "hmac"],
            "audiences": [AUDIENCE],
            "allowed_principals": [LOGIC_APP],
            "approvers": [APPROVER],
        },
        "inbox": {"poll_seconds": 0.05, "lease_seconds": 5, "retry_seconds": 0.2},
        "server": {"certfile": str(emu.tls.cert_file), "keyfile": str(emu.tls.key_file)},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return settings_from_dict(settings_data(emu, **base), environ=SERVICE_ENVIRON)


def incident(name: str | None = None, **properties: Any) -> dict[str, Any]:
    """The fixture's trigger body for a fresh incident (its own id), changed as asked."""
    body = copy.deepcopy(trigger_body())
    name = name or str(uuid.uuid4())
    incident_id = body["object"]["id"].rsplit("/", 1)[0] + "/" + name
    body["object"]["id"] = incident_id
    body["object"]["name"] = name
    body["object"]["properties"].update(properties)
    return body


@dataclass
class Service:
    url: str
    ca_file: Path
    parts: ServiceParts
    emu: Any

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            verify=ssl.create_default_context(cafile=str(self.ca_file)),
            timeout=10,
        )

    def token(self, *, oid: str = LOGIC_APP, audience: str = AUDIENCE, **claims: Any) -> str:
        return self.emu.identity.signed_token(audience, oid=oid, **claims)

    def post(
        self,
        body: Any,
        *,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        seed: bool = True,
    ) -> httpx.Response:
        """POST a delivery with a Logic App token (seeding the incident in the emulator)."""
        data = raw if raw is not None else json.dumps(body).encode()
        if seed and isinstance(body, dict) and "object" in body:
            self.emu.sentinel.add(body["object"])
        sent = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token()}"}
        sent.update(headers or {})
        with self.client() as client:
            return client.post(
                "/webhooks/sentinel", content=data, headers={k: v for k, v in sent.items() if v}
            )

    def signed(self, body: bytes, *, secret: str = SECRET, at: int | None = None) -> dict[str, str]:
        stamp = int(time.time()) if at is None else at
        return {
            "Authorization": "",
            "X-Tokenward-Timestamp": str(stamp),
            "X-Tokenward-Signature": sign(body, secret=secret.encode(), timestamp=stamp),
        }

    def would_be_comments(self, body: dict[str, Any]) -> list[str]:
        """The comments dry-runs recorded for the incident instead of writing them."""
        return [
            record.data["request"]["body"]["properties"]["message"]
            for record in self.parts.audit.records()
            if record.kind == "incident.dry_run" and record.data["incident"] == body["object"]["id"]
        ]

    def wait_done(self, delivery_id: str, *, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.parts.inbox.get(delivery_id)
            if row and row["status"] in ("done", "failed"):
                return row
            time.sleep(0.05)
        raise AssertionError(
            f"delivery {delivery_id} was not processed: {self.parts.inbox.get(delivery_id)}"
        )


@contextmanager
def running_service(
    emu: Any,
    directory: Path,
    *,
    worker: bool = True,
    settings: Settings | None = None,
    approvals: Any = None,
    wait_for_keys: bool = True,
    source: SourceSpec | None = None,
    store_apart: bool = False,
) -> Iterator[Service]:
    """The service over the seed's exports (its clock pinned), or over *source*."""
    scenario = seed_scenario()
    settings = settings or service_settings(emu, directory)
    settings = scenario.with_settings(settings)
    if source is None:
        exports = export_scenario(scenario, directory / "exports")
        source = SourceSpec("files", str(exports), now=scenario.clock)
    parts = build_parts(
        settings, spec=source, with_worker=worker, approvals=approvals, store_apart=store_apart
    )

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        create_app(parts),
        log_level="warning",
        access_log=False,
        ssl_certfile=str(settings.server.certfile),
        ssl_keyfile=str(settings.server.keyfile),
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    service = Service(url=f"https://127.0.0.1:{port}", ca_file=emu.ca_file, parts=parts, emu=emu)
    while time.monotonic() < deadline:
        if server.started and (parts.gate.ready or not wait_for_keys):
            break
        time.sleep(0.02)
    else:
        raise RuntimeError(
            f"tokenward serve did not become ready (started={server.started}, keys={parts.gate.ready}, thread={thread.is_alive()})"
        )
    try:
        yield service
    finally:
        server.should_exit = True
        thread.join(15)


def body_sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


__all__ = [
    "APPROVER",
    "AUDIENCE",
    "LOGIC_APP",
    "SECRET",
    "TENANT_ID",
    "Service",
    "incident",
    "running_service",
    "service_settings",
]
