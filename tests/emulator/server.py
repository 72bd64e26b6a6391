"""The emulator process: one FastAPI app served over HTTPS (and plain HTTP for
the managed-identity endpoint, which is plain HTTP on Azure hosts too) by
uvicorn on 127.0.0.1, in background threads of the test process.

Tests talk to it in Python, not over a control API: ``emulator.requests()``
is the request log, ``emulator.fault(...)`` queues a fault, and each service
module keeps its own state (``emulator.workspace``, ``emulator.identity``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import shutil
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from tests.emulator.tls import TlsFiles, make_tls

if TYPE_CHECKING:
    from tests.emulator.defender import DefenderState
    from tests.emulator.graph import GraphState
    from tests.emulator.identity import IdentityState
    from tests.emulator.log_analytics import LogAnalyticsState
    from tests.emulator.sentinel import SentinelState

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: The audience each emulated service accepts tokens for (production values).
AUDIENCES = {
    "graph": "https://graph.microsoft.com",
    "log_analytics": "https://api.loganalytics.io",
    "arm": "https://management.azure.com",
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request exactly as it arrived."""

    at: float
    scheme: str
    method: str
    # Decoded path, and the path as sent on the wire (``%40``, ``//`` kept).
    path: str
    raw_path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode()))

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


FaultScope = Literal["request", "query"]


@dataclass
class Fault:
    """A scripted answer, used in place of the real one while ``times`` lasts.

    ``scope="request"`` rules answer whole HTTP requests (a 429 for the whole
    ``$batch``); ``scope="query"`` rules answer one query inside a Log
    Analytics batch or one advanced hunting call, matched by ``query`` (a
    regex on the KQL text). A rule with no ``status`` only delays, or (with
    ``partial_rows``) cuts a query's result short and marks it partial.
    """

    method: str | None = None
    path: str = ""
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # A dict or list is sent as JSON, a str as text/html (a gateway's page).
    body: Any = None
    content_type: str | None = None
    delay: float = 0.0
    # None: for ever.
    times: int | None = 1
    scope: FaultScope = "request"
    query: str | None = None
    partial_rows: int | None = None
    used: int = 0

    def matches(self, method: str, path: str, text: str, scope: FaultScope) -> bool:
        if self.scope != scope or (self.times is not None and self.used >= self.times):
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        if self.path and not re.search(self.path, path):
            return False
        return not (self.query and not re.search(self.query, text))

    def response(self) -> Response:
        status = self.status or 500
        if isinstance(self.body, str):
            return Response(
                self.body,
                status_code=status,
                headers=self.headers,
                media_type=self.content_type or "text/html",
            )
        if self.body is None:
            return Response(status_code=status, headers=self.headers)
        return JSONResponse(self.body, status_code=status, headers=self.headers)


class Emulator:
    """The Microsoft APIs tokenward calls, on 127.0.0.1, recording every request."""

    # Each service's state, set by its module's install().
    identity: IdentityState
    log_analytics: LogAnalyticsState
    defender: DefenderState
    graph: GraphState
    sentinel: SentinelState

    def __init__(self, directory: Path | None = None) -> None:
        # A folder it made itself is its own to remove when it stops.
        self._owns_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="tokenward-emulator-"))
        self.tls: TlsFiles = make_tls(self.directory / "tls")
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._faults: list[Fault] = []
        self.app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        self._servers: list[tuple[uvicorn.Server, threading.Thread]] = []
        self.base_url = ""
        self.http_url = ""
        self.services: dict[str, Any] = {}
        # A test of another cloud changes these; reset() restores them.
        self.audiences = dict(AUDIENCES)

    # -- lifecycle ----------------------------------------------------------------

    def start(self, modules: Iterable[Any]) -> Emulator:
        """Mount each module's routes (``module.install(emulator)``), then serve."""
        for module in modules:
            module.install(self)
        https_port = self._serve(tls=True)
        http_port = self._serve(tls=False)
        self.base_url = f"https://127.0.0.1:{https_port}"
        self.http_url = f"http://127.0.0.1:{http_port}"
        return self

    def stop(self) -> None:
        for server, _ in self._servers:
            server.should_exit = True
        for _, thread in self._servers:
            thread.join(timeout=10)
        self._servers.clear()
        # Connections the clients dropped without a TLS close_notify are left to
        # the garbage collector by asyncio; collect them here, quietly, rather
        # than let their ResourceWarnings land on whichever test runs next.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _serve(self, *, tls: bool) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            _Recorder(self.app, self, "https" if tls else "http"),
            log_level="warning",
            access_log=False,
            lifespan="off",
            ssl_certfile=str(self.tls.cert_file) if tls else None,
            ssl_keyfile=str(self.tls.key_file) if tls else None,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"emulator-{port}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the emulator did not start")
            time.sleep(0.01)
        self._servers.append((server, thread))
        return port

    # -- what tests use -------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        return self.tls.ca_file

    def reset(self) -> None:
        """Forget requests and faults; every service module resets its own state."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()
        self.audiences = dict(AUDIENCES)
        for service in self.services.values():
            service.reset()

    def requests(
        self, path: str | None = None, *, method: str | None = None
    ) -> list[RecordedRequest]:
        """The request log, oldest first; *path* is a regex searched in the path."""
        with self._lock:
            found = list(self._requests)
        return [
            item
            for item in found
            if (path is None or re.search(path, item.path))
            and (method is None or item.method == method.upper())
        ]

    def fault(self, **rule: Any) -> Fault:
        """Queue a fault rule (see :class:`Fault`); rules are tried in order."""
        added = Fault(**rule)
        with self._lock:
            self._faults.append(added)
        return added

    def take_fault(
        self, method: str, path: str, text: str = "", *, scope: FaultScope
    ) -> Fault | None:
        """The first rule that matches, counted as used; ``None`` if none does."""
        with self._lock:
            for rule in self._faults:
                if rule.matches(method, path, text, scope):
                    rule.used += 1
                    return rule
        return None

    def _record(self, item: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(item)


class _Recorder:
    """ASGI middleware: logs each request whole, then applies request faults."""

    def __init__(self, app: FastAPI, emulator: Emulator, scheme: str) -> None:
        self.app = app
        self.emulator = emulator
        self.scheme = scheme

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers = {
            key.decode("latin-1").lower(): value.decode("latin-1")
            for key, value in scope.get("headers", [])
        }
        self.emulator._record(
            RecordedRequest(
                at=time.monotonic(),
                scheme=self.scheme,
                method=scope["method"],
                path=scope["path"],
                raw_path=(scope.get("raw_path") or b"").decode("latin-1"),
                query=scope.get("query_string", b"").decode("latin-1"),
                headers=headers,
                body=body,
            )
        )

        rule = self.emulator.take_fault(
            scope["method"], scope["path"], body.decode("utf-8", "replace"), scope="request"
        )
        if rule is not None:
            if rule.delay:
                await asyncio.sleep(rule.delay)
            if rule.status is not None:
                await rule.response()(scope, receive, send)
                return

        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
