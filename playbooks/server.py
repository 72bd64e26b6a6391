"""``tokenward serve``: the webhook Sentinel calls, plan approvals and health, on uvicorn.

``POST /webhooks/sentinel`` does four things and nothing else, in order:

1. reads at most ``webhook.max_body_bytes`` of the raw body;
2. authenticates the caller over those exact bytes: an HMAC signature with a
   fresh timestamp, or an Entra ID token checked against keys already in
   memory (they are fetched at start and refreshed in the background);
3. checks the body: JSON read one way only, the delivery schema, an incident
   scope (:mod:`playbooks.payloads`, :mod:`playbooks.incidents`);
4. stores it in the inbox with its audit record, and answers ``202`` with the
   run id once that transaction has committed.

It never calls a connector: a worker (a child process that serve starts, or
``tokenward worker`` elsewhere) runs the playbook for each stored delivery. Stores are
grouped: deliveries arriving together are committed in one transaction, so
acknowledging stays fast under a burst while every ``202`` still means
"written to disk". ``tokenward serve`` commits the groups in a child process
(:class:`StoreProcess`), so the audit chain's work does not share the
interpreter that reads and checks requests. Refusals answer with a fixed,
generic message per status; the reason goes to the audit and the log, never
to the caller.

The connectors of the service's runs (the sources, the Graph responder in
approve and auto, the Sentinel client) are built by :mod:`playbooks.wiring`,
the same code ``tokenward hunt`` uses. When ``[schedule]`` turns them on, the
scheduled hunt and the reconciliation are queued here on their schedules
(:mod:`playbooks.schedule`) and run by the worker like deliveries.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import logging
import multiprocessing
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from playbooks.approval_api import (
    ApprovalRefused,
    ApprovalRequest,
    Approver,
    PlanApprovals,
    PlanNotFound,
    PlanView,
)
from playbooks.audit import AuditLog
from playbooks.errors import AuditError, InputError, Location, SettingsError, TokenwardError
from playbooks.inbox import (
    Accepted,
    Delivery,
    Inbox,
    Refusal,
    WorkspaceRefused,
    delivery_for,
)
from playbooks.incidents import IncidentScope
from playbooks.metrics import metrics_response, service_state
from playbooks.payloads import (
    PayloadError,
    delivery_schema,
    parse_body,
    schema_components,
)
from playbooks.schedule import JobScheduler, jobs_configured
from playbooks.settings import AuthScheme, Settings
from playbooks.times import isoformat_z, parse_duration, utcnow
from playbooks.webhook_auth import (
    SIGNATURE_HEADER,
    Caller,
    CheckedTokens,
    TokenPolicy,
    Unauthorized,
    validate_bearer,
    verify_signature,
)
from playbooks.wiring import (
    ServiceTools,
    SourceSpec,
    require_credential,
    require_permissions,
    require_source,
    writing_modes,
)
from playbooks.worker import Worker

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/sentinel"
# The worker process's exit code when its configuration stops it: not restarted.
CANNOT_START = 78  # EX_CONFIG
# One fixed body per status: nothing about why reaches the caller.
_PUBLIC = {
    400: ("bad_request", "the body is not valid JSON tokenward can read"),
    401: ("unauthorized", "authentication required"),
    403: ("forbidden", "not allowed"),
    404: ("not_found", "no such plan"),
    409: ("conflict", "the decision cannot be taken"),
    413: ("too_large", "the body is larger than tokenward accepts"),
    415: ("unsupported_media_type", "send application/json"),
    422: (
        "invalid_payload",
        "the body is not a Sentinel incident delivery tokenward accepts",
    ),
    501: ("not_implemented", "plan approval storage is not configured in this build"),
    503: (
        "unavailable",
        "tokenward cannot accept this now; nothing was stored, send it again",
    ),
}


class Refused(Exception):
    """A request answered with an error; ``reason`` is for the audit only.

    ``detail`` may go to the caller: it is set only for problems with the
    body that an authenticated sender needs to fix (422, 400, 413), and it
    never repeats a value from the request.
    """

    def __init__(self, status: int, reason: str, *, detail: str = "", caller: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.caller = caller


# -- who is calling -------------------------------------------------------------


class KeySource:
    """The tenant's token signing keys, as the gate reads them (never fetching).

    Known limit: a token signed with a key published since the last fetch is
    refused (401) until the background refresh it triggers has run; Entra ID
    publishes keys well before signing with them, so the daily fetch
    normally has them first.
    """

    def __init__(self, keys: Any, *, min_refresh_s: float = 300) -> None:
        self._keys = keys
        self.wanted = asyncio.Event()
        # However many tokens name unknown keys, Entra ID is asked at most this often.
        self.min_refresh_s = min_refresh_s

    @property
    def loaded(self) -> bool:
        return bool(self._keys.loaded)

    def key_for(self, kid: str) -> Any:
        if not self._keys.known(kid):
            # Maybe a key rotated in since the last fetch: refresh in the background.
            self.wanted.set()
        return self._keys.key(kid)

    async def keep_fresh(self, *, every_s: float = 86_400, retry_s: float = 30) -> None:
        """Fetch at once, then daily, and soon after a token names an unknown key."""
        loop = asyncio.get_running_loop()
        while True:
            fetched_at = loop.time()
            try:
                await self._keys.refresh()
                wait = every_s
            except TokenwardError as failure:
                logger.warning("signing keys not fetched: %s", failure)
                wait = retry_s
            except Exception:
                logger.exception("signing keys not fetched")
                wait = retry_s
            self.wanted.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wanted.wait(), wait)
            if self.loaded:
                await asyncio.sleep(max(0.0, fetched_at + self.min_refresh_s - loop.time()))


@dataclass
class Gate:
    """Authenticates webhook senders and approvers from headers and the raw body."""

    schemes: tuple[AuthScheme, ...]
    policy: TokenPolicy | None = None
    approver_policy: TokenPolicy | None = None
    keys: KeySource | None = None
    secret: bytes | None = None
    replay_window: int = 300
    approvers: frozenset[str] = frozenset()
    approver_role: str = ""
    clock: Callable[[], float] = time.time
    checked: CheckedTokens = field(default_factory=CheckedTokens)

    def sender(self, headers: Mapping[str, str], body: bytes) -> Caller:
        """The webhook's caller, or :class:`Refused` (401, or 503 before keys load).

        A signed request replayed inside the replay window passes here; it is
        then the same delivery again, which the inbox answers as a duplicate
        of the same run, never as a second run.
        """
        authorization = headers.get("authorization", "")
        try:
            if authorization and AuthScheme.BEARER in self.schemes:
                return self._bearer(authorization, self.policy)
            if headers.get(SIGNATURE_HEADER) and AuthScheme.HMAC in self.schemes and self.secret:
                verify_signature(
                    body,
                    headers,
                    secret=self.secret,
                    now=self.clock(),
                    tolerance_s=self.replay_window,
                )
                return Caller(
                    principal_id="",
                    app_id="",
                    tenant_id="",
                    name="hmac-sender",
                    scheme="hmac",
                )
        except Unauthorized as refusal:
            raise Refused(401, refusal.reason) from None
        raise Refused(401, "no credentials of an enabled scheme")

    def approver(self, headers: Mapping[str, str]) -> Caller:
        """A person allowed to approve plans, or :class:`Refused` (401/403)."""
        authorization = headers.get("authorization", "")
        if not authorization or AuthScheme.BEARER not in self.schemes:
            raise Refused(401, "approvals need an Entra ID token of a person")
        try:
            caller = self._bearer(authorization, self.approver_policy)
        except Unauthorized as refusal:
            raise Refused(401, refusal.reason) from None
        if not caller.is_user:
            raise Refused(
                403,
                f"{caller.label} is an application, not a person",
                caller=caller.label,
            )
        allowed = caller.principal_id.lower() in self.approvers or (
            bool(self.approver_role) and self.approver_role in caller.roles
        )
        if not allowed:
            raise Refused(403, f"{caller.label} is not an approver", caller=caller.label)
        return caller

    def _bearer(self, authorization: str, policy: TokenPolicy | None) -> Caller:
        if self.keys is None or policy is None:
            raise Unauthorized("bearer tokens are not configured")
        if not self.keys.loaded:
            raise Refused(503, "the tenant's signing keys are not loaded yet")
        return validate_bearer(
            authorization,
            policy=policy,
            key_for=self.keys.key_for,
            now=self.clock(),
            checked=self.checked,
        )

    @property
    def ready(self) -> bool:
        if AuthScheme.BEARER in self.schemes and (self.keys is None or not self.keys.loaded):
            return False
        return not (AuthScheme.HMAC in self.schemes and not self.secret)


def service_problems(settings: Settings) -> list[str]:
    """What stops the service from starting safely, one sentence each."""
    webhook = settings.webhook
    problems: list[str] = []
    if AuthScheme.BEARER in webhook.auth:
        if not webhook.audiences:
            problems.append(
                "webhook.audiences is empty: name tokenward's Application ID URI (api://...)"
            )
        if not webhook.issuers and not _tenant_guid(settings):
            problems.append(
                "webhook.issuers is empty and azure.tenant_id is not a GUID to derive them from"
            )
        if not webhook.allowed_principals:
            problems.append(
                "webhook.allowed_principals is empty: any principal of the tenant could post "
                "incidents; list the Logic App's managed identity (logicAppPrincipalId)"
            )
    if AuthScheme.HMAC in webhook.auth:
        secret = webhook.hmac_secret
        if secret is None or len(secret.get_secret_value()) < 32:
            problems.append(
                "webhook auth includes hmac but TOKENWARD_WEBHOOK_HMAC_SECRET is unset or under 32 characters"
            )
    return problems


def build_gate(settings: Settings, *, keys: KeySource | None) -> Gate:
    webhook = settings.webhook
    policy = approver_policy = None
    if AuthScheme.BEARER in webhook.auth:
        issuers = webhook.issuers or _default_issuers(settings)
        policy = TokenPolicy(
            audiences=webhook.audiences,
            issuers=issuers,
            allowed_principals=frozenset(webhook.allowed_principals),
        )
        approver_policy = TokenPolicy(audiences=webhook.audiences, issuers=issuers)
    secret = webhook.hmac_secret.get_secret_value().encode() if webhook.hmac_secret else None
    return Gate(
        schemes=webhook.auth,
        policy=policy,
        approver_policy=approver_policy,
        keys=keys,
        secret=secret,
        replay_window=webhook.replay_window,
        approvers=frozenset(webhook.approvers),
        approver_role=webhook.approver_role,
    )


def openid_metadata_url(settings: Settings) -> str:
    authority = settings.azure.endpoints().authority_host.rstrip("/")
    return f"{authority}/{settings.azure.tenant_id}/v2.0/.well-known/openid-configuration"


def _default_issuers(settings: Settings) -> tuple[str, ...]:
    tenant = _tenant_guid(settings)
    authority = settings.azure.endpoints().authority_host.rstrip("/")
    return (f"https://sts.windows.net/{tenant}/", f"{authority}/{tenant}/v2.0")


def _tenant_guid(settings: Settings) -> str:
    from playbooks.identities import is_guid

    tenant = settings.azure.tenant_id
    return tenant if is_guid(tenant) else ""


# -- storing deliveries ------------------------------------------------------------


class Recorder:
    """Commits deliveries (and refusals) in groups, one transaction per group.

    Each caller waits for the transaction holding its delivery, so a ``202``
    is never sent for a delivery that is not stored. While one group commits,
    the next gathers.
    """

    MAX_BACKLOG = 10_000

    def __init__(
        self,
        inbox: Inbox,
        *,
        max_group: int = 256,
        apart: StoreProcess | None = None,
    ) -> None:
        # Each group is committed by *apart* when given, else by *inbox* in a thread.
        self._record = apart.record if apart is not None else inbox.record
        self._max_group = max_group
        self._queue: asyncio.Queue[tuple[Delivery | Refusal, asyncio.Future[Accepted] | None]] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._commit_forever(), name="inbox-recorder")

    async def stop(self) -> None:
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def store(self, delivery: Delivery) -> Accepted:
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        await self._queue.put((delivery, future))
        return await future

    def refuse(self, refusal: Refusal) -> None:
        """Audit a refusal with the next group; the caller does not wait.

        Under a flood of refused requests with the store behind, refusals past
        a backlog of ``MAX_BACKLOG`` are logged only, so a flood cannot grow
        memory without bound or delay the deliveries queued behind it.
        """
        if self._queue.qsize() >= self.MAX_BACKLOG:
            logger.warning("refusal not audited (backlog full): %s", refusal.reason)
            return
        self._queue.put_nowait((refusal, None))

    async def _commit_forever(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < self._max_group and not self._queue.empty():
                group.append(self._queue.get_nowait())
            deliveries = [(item, future) for item, future in group if isinstance(item, Delivery)]
            refusals = [item for item, _ in group if isinstance(item, Refusal)]
            try:
                accepted = await asyncio.to_thread(
                    self._record, [item for item, _ in deliveries], refusals
                )
            except Exception as failure:
                logger.error(
                    "the inbox could not store %d deliveries: %s",
                    len(deliveries),
                    failure,
                )
                for _, future in deliveries:
                    if future is not None and not future.done():
                        future.set_exception(failure)
            else:
                for (_, future), result in zip(deliveries, accepted, strict=True):
                    if future is not None and not future.done():
                        future.set_result(result)
            finally:
                for _ in group:
                    self._queue.task_done()


class StoreProcess:
    """The inbox's writes in a child process of ``tokenward serve``.

    Committing a group (the inbox rows, their audit records and the chain's
    hashes) is Python work; done in a thread, it shares one interpreter with
    the event loop that reads, authenticates and checks every request, and
    each slows the other. In a process of its own it runs beside them. The
    request side sends each group over a pipe and waits for the answer, so a
    ``202`` still means "committed".

    If the child dies, the groups waiting on it are answered ``503`` (a
    delivery it had committed comes back as a duplicate of its run when
    Sentinel sends it again) and the next group starts a new child. The child
    ignores SIGINT and SIGTERM: it stops when serve closes the pipe, after the
    last group, or when serve dies.
    """

    START_TIMEOUT_S = 60.0
    # After a failed start, groups and probes are refused this long before
    # the next try, so a store that cannot be opened is not spawned for each.
    RETRY_AFTER_S = 5.0

    def __init__(self, settings: Settings, *, audit: AuditLog | None = None) -> None:
        self._settings = settings
        # Where a restart is recorded (serve's own audit handle).
        self._audit = audit
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Any = None
        self._lock = threading.Lock()
        self._stopped = False
        self._failed_at: float | None = None
        # The exit code of a child that died, until another is running.
        self._died: int | None = None

    def start(self) -> None:
        if self._stopped:
            raise AuditError("the inbox's store process was stopped")
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(
            target=_store_main,
            args=(self._settings, child, logging.getLogger().level),
            name="tokenward-store",
            daemon=True,
        )
        process.start()
        child.close()
        try:
            if not parent.poll(self.START_TIMEOUT_S):
                raise AuditError("the inbox's store process did not start")
            try:
                status, detail = parent.recv()
            except EOFError:
                process.join(5)
                raise AuditError(
                    f"the inbox's store process exited on start (code {process.exitcode})"
                ) from None
            if status != "ready":
                raise AuditError(f"the inbox's store process could not open the store: {detail}")
        except AuditError:
            parent.close()
            process.kill()
            process.join(5)
            raise
        self._process, self._conn = process, parent
        # The child ignores SIGTERM, so multiprocessing's own exit handler
        # would wait on it forever: close its pipe first, however serve ends.
        atexit.register(self.stop)

    def record(self, deliveries: Sequence[Delivery], refusals: Sequence[Refusal]) -> list[Accepted]:
        """:meth:`Inbox.record` in the child; one caller at a time."""
        with self._lock:
            self._running()
            try:
                self._conn.send((list(deliveries), list(refusals)))
                status, value = self._conn.recv()
            except (EOFError, OSError):
                raise AuditError(
                    "the inbox's store process stopped before it answered; "
                    "the group may or may not be stored"
                ) from None
        if status != "ok":
            raise AuditError(value)
        return list(value)

    def revive(self) -> None:
        """Start another child if this one died, as the next group would.

        ``/readyz`` calls it, so a child that died between deliveries is back
        before the next one, and a store it cannot open shows as not ready.
        It never waits behind a group: one in flight has a child to answer it.
        """
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._running()
        finally:
            self._lock.release()

    def _running(self) -> None:
        # With the lock held.
        if self._process is not None and self._process.is_alive():
            return
        if self._process is not None:
            self._died = self._process.exitcode
            logger.warning(
                "the inbox's store process exited (code %s); starting another", self._died
            )
            self._conn.close()
            self._process = self._conn = None
        if self._failed_at is not None:
            waited = time.monotonic() - self._failed_at
            if waited < self.RETRY_AFTER_S:
                raise AuditError(
                    f"the inbox's store process failed to start {waited:.1f} s ago; "
                    f"it is tried again {self.RETRY_AFTER_S:g} s after that"
                )
        try:
            self.start()
        except AuditError:
            self._failed_at = time.monotonic()
            raise
        self._failed_at = None
        if self._died is not None and self._audit is not None:
            self._audit.record("webhook", "store_process.restarted", {"exit_code": self._died})
        self._died = None

    def stop(self, *, grace_s: float = 10) -> None:
        """Close the pipe (the child exits after its group) and wait; for good."""
        with self._lock:
            self._stopped = True
            atexit.unregister(self.stop)
            if self._process is None:
                return
            self._conn.close()
            self._process.join(grace_s)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)
            self._process = self._conn = None


def _store_main(settings: Settings, conn: Any, level: int) -> None:
    """The store process: commit each group it is sent until the pipe closes."""
    import signal

    from playbooks import logs

    # serve stops this process by closing the pipe, once its last group is in.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.configure(0 if level >= logging.ERROR else 1 if level >= logging.INFO else 2)
    try:
        inbox, _audit = open_audit(settings)
    except TokenwardError as failure:
        conn.send(("failed", str(failure)))
        return
    conn.send(("ready", None))
    while True:
        try:
            deliveries, refusals = conn.recv()
        except (EOFError, OSError):
            return
        try:
            answer: tuple[str, Any] = ("ok", inbox.record(deliveries, refusals))
        except TokenwardError as failure:
            answer = ("failed", str(failure))
        except Exception as failure:  # the request side must hear of it, not hang
            logger.exception("the inbox could not store a group")
            answer = (
                "failed",
                f"the inbox could not store the deliveries ({type(failure).__name__})",
            )
        conn.send(answer)


# -- the worker inside the service -------------------------------------------------


class WorkerProcess:
    """The inbox worker in a child process of ``tokenward serve``.

    Runs are long and CPU-bound in Python (scoring, the audit chain); in a
    process of their own they never hold the interpreter that acknowledges
    deliveries. The child stops when asked (SIGTERM, letting runs in flight
    finish) and dies with its parent: if ``tokenward serve`` is killed, the
    worker goes too, and its leases run out for the next start to recover.
    """

    def __init__(self, settings: Settings, spec: SourceSpec) -> None:
        self._settings = settings
        self._spec = spec
        self._process: multiprocessing.process.BaseProcess | None = None
        # Set when the worker stopped on a configuration it cannot run with:
        # it is not started again, and the webhook stops accepting.
        self.failed = False

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._process = context.Process(
            target=_worker_main,
            args=(self._settings, self._spec, os.getpid(), logging.getLogger().level),
            name="tokenward-worker",
            daemon=True,
        )
        self._process.start()

    def stop(self, *, grace_s: float = 30) -> None:
        """Let the runs in flight finish (up to *grace_s*); a lease covers the rest."""
        if self._process is None or not self._process.is_alive():
            return
        self._process.terminate()
        self._process.join(grace_s)
        if self._process.is_alive():
            logger.warning("the worker did not stop in %g s; its leases will run out", grace_s)
            self._process.kill()
            self._process.join(5)

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def exit_code(self) -> int | None:
        return self._process.exitcode if self._process is not None else None


async def _supervise(parts: ServiceParts, *, every_s: float = 5, backoff_s: float = 30) -> None:
    """Start the worker again if it died (a crash, the OOM killer), at most every *backoff_s*."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        await asyncio.sleep(every_s)
        worker = parts.worker
        if worker is None or worker.failed or worker.alive:
            continue
        if worker.exit_code == CANNOT_START:
            # Starting it again would fail the same way: say so, and stop.
            worker.failed = True
            logger.error(
                "the worker cannot run with this configuration (see its error above); "
                "deliveries are refused with 503 until tokenward serve is restarted"
            )
            await asyncio.to_thread(
                parts.audit.record, "webhook", "worker.failed", {"exit_code": worker.exit_code}
            )
            continue
        if loop.time() - started < backoff_s:
            continue
        logger.error("the worker process stopped unexpectedly; starting it again")
        await asyncio.to_thread(
            parts.audit.record,
            "webhook",
            "worker.restarted",
            {"exit_code": worker.exit_code},
        )
        worker.start()
        started = loop.time()


def _worker_main(settings: Settings, spec: SourceSpec, parent: int, level: int) -> None:
    """The worker process: process the inbox until SIGTERM or the parent's death."""
    import signal

    from playbooks import logs

    logs.configure(0 if level >= logging.ERROR else 1 if level >= logging.INFO else 2)

    def orphaned() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=orphaned, name="parent-watch", daemon=True).start()
    # Runs are background work; acknowledging a delivery is what must not wait.
    os.nice(10)
    try:
        worker = build_worker(settings, spec)
    except TokenwardError as failure:
        logger.error("the worker cannot start: %s", failure)
        sys.exit(CANNOT_START)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await worker.run_forever(stop)

    try:
        asyncio.run(run())
    except TokenwardError as failure:
        logger.error("the worker stopped: %s", failure)
        sys.exit(CANNOT_START)


# -- the application ----------------------------------------------------------------


@dataclass
class ServiceParts:
    """Everything the app needs, built by :func:`build_parts` (or a test)."""

    settings: Settings
    audit: AuditLog
    inbox: Inbox
    gate: Gate
    keys: KeySource | None = None
    approvals: PlanApprovals | None = None
    # The worker process serve starts, if any.
    worker: WorkerProcess | None = None
    # The schedules of the scheduled hunt and the reconciliation, if configured.
    scheduler: JobScheduler | None = None
    # The process that commits deliveries, if any; else a thread does.
    store_process: StoreProcess | None = None
    recorder: Recorder | None = field(default=None, init=False)


class AcceptedBody(BaseModel):
    status: str = Field(
        description="accepted, or duplicate when an earlier delivery is the same run"
    )
    run_id: str
    delivery_id: str
    detail: str = ""


class ErrorBody(BaseModel):
    error: str
    message: str
    problems: list[str] = Field(default_factory=list)


class HealthBody(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
    recovered_incidents: int = Field(
        default=0,
        description="Incidents reconciliation found in the incidents API that the "
        "webhook never received, since the store was made",
    )
    jobs: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Each scheduled job's watermark and last completed cycle",
    )


class DecisionBody(BaseModel):
    plan_hash: str = Field(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")
    reason: str = Field(default="", max_length=2000)


class PlanBody(BaseModel):
    plan_id: str
    run_id: str
    status: str
    content_hash: str
    created_at: str
    actions: list[dict[str, Any]] = Field(default_factory=list)
    decisions: list[dict[str, Any]] = Field(default_factory=list)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": _PUBLIC[status][1]} for status in statuses}


def create_app(parts: ServiceParts | None = None) -> FastAPI:
    """The ASGI app; *parts* may be None only to describe it (the OpenAPI document)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert parts is not None, "create_app(None) only describes the service"
        background: list[asyncio.Task[None]] = []
        if parts.store_process is not None:
            await asyncio.to_thread(parts.store_process.start)
        parts.recorder = Recorder(parts.inbox, apart=parts.store_process)
        parts.recorder.start()
        if parts.keys is not None:
            background.append(asyncio.create_task(parts.keys.keep_fresh(), name="signing-keys"))
        if parts.worker is not None:
            parts.worker.start()
            background.append(asyncio.create_task(_supervise(parts), name="worker-supervisor"))
        if parts.scheduler is not None:
            parts.scheduler.start()
        parts.audit.record(
            "webhook",
            "service.started",
            {
                "worker": parts.worker is not None,
                "jobs": parts.scheduler.jobs if parts.scheduler else [],
            },
        )
        logger.info("tokenward serve ready")
        try:
            yield
        finally:
            # No new cycle is queued once stopping; a cycle being run is the
            # worker's to finish (or, if it is killed, the next start's).
            if parts.scheduler is not None:
                parts.scheduler.stop()
            # The supervisor first, so it cannot start the worker it sees stop.
            for task in background:
                task.cancel()
            if parts.worker is not None:
                await asyncio.to_thread(parts.worker.stop)
            await parts.recorder.stop()
            if parts.store_process is not None:
                await asyncio.to_thread(parts.store_process.stop)
            parts.audit.record("webhook", "service.stopped", {})
            with contextlib.suppress(Exception):  # busy: the next stop folds it in
                await asyncio.to_thread(parts.audit.store.checkpoint)

    app = FastAPI(
        title="tokenward",
        version="0.1.0",
        summary="Contains Microsoft Entra ID device code phishing, triggered by Sentinel.",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )

    @app.post(
        WEBHOOK_PATH,
        status_code=202,
        summary="Deliver a Sentinel incident",
        description=(
            "The body of the automation rule's incident trigger (what the Logic App's "
            "`@triggerBody()` holds), or a bare incident resource. Authenticate with an "
            "Entra ID bearer token, or with `X-Tokenward-Timestamp` (Unix seconds) and "
            "`X-Tokenward-Signature: sha256=<hex of HMAC-SHA256(secret, "
            "'<timestamp>.<raw body>')>`. The delivery is stored before the answer; the same "
            "incident with the same accounts, addresses and window is one run however "
            "often it is delivered."
        ),
        responses={
            202: {"model": AcceptedBody},
            **_errors(400, 401, 403, 413, 415, 422, 503),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": delivery_schema()}},
            },
            "security": [{"entraId": []}, {"hmacSignature": [], "hmacTimestamp": []}],
        },
    )
    async def sentinel_webhook(request: Request) -> Response:
        assert parts is not None
        received = utcnow()
        body = b""
        caller = ""
        try:
            body = await _read_limited(request, parts.settings.webhook.max_body_bytes)
            sender = parts.gate.sender(request.headers, body)
            caller = sender.label
            _require_json(request.headers.get("content-type", ""))
            delivery, scope = _delivery(parts.settings, body, sender, received)
        except Refused as refusal:
            return _refuse(parts, request, refusal, body, caller)

        if parts.worker is not None and parts.worker.failed:
            # Accepting would promise a run no worker will make.
            logger.error(
                "delivery for incident %s refused: the worker cannot run", scope.incident.number
            )
            return _error(
                503,
                detail="tokenward's worker is not running; the delivery was not stored",
                headers={"Retry-After": "60"},
            )
        try:
            assert parts.recorder is not None
            accepted = await parts.recorder.store(delivery)
        except Exception as failure:
            logger.error(
                "delivery for incident %s not stored: %s",
                scope.incident.number,
                type(failure).__name__,
            )
            return _error(503, headers={"Retry-After": "5"})
        if accepted.duplicate:
            logger.info(
                "delivery for incident %s is run %s again: %s",
                scope.incident.number,
                accepted.run_id,
                accepted.reason,
            )
        else:
            logger.info(
                "accepted incident %s (%s) as run %s",
                scope.incident.number,
                scope.event,
                accepted.run_id,
            )
        return JSONResponse(
            {
                "status": "duplicate" if accepted.duplicate else "accepted",
                "run_id": accepted.run_id,
                "delivery_id": accepted.delivery_id,
                "detail": accepted.reason,
            },
            status_code=202,
        )

    @app.get("/healthz", summary="The process is up", responses={200: {"model": HealthBody}})
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get(
        "/readyz",
        summary="Ready to accept deliveries",
        description="The store answers, its process runs (started again if it died), "
        "authentication is configured and loaded, the worker runs. "
        "Says only which check failed, nothing about the configuration.",
        responses={200: {"model": HealthBody}, 503: {"model": HealthBody}},
    )
    async def readyz() -> Response:
        assert parts is not None
        checks = {"store": "ok", "auth": "ok" if parts.gate.ready else "not ready"}
        state: dict[str, Any] = {}
        try:
            await asyncio.to_thread(parts.inbox.ping)
            state = await asyncio.to_thread(service_state, parts.audit.store)
        except Exception:
            checks["store"] = "unreachable"
        if parts.store_process is not None:
            try:
                await asyncio.to_thread(parts.store_process.revive)
                checks["store_process"] = "ok"
            except Exception as failure:  # not started, for whatever reason: not ready
                logger.warning("the inbox's store process could not start: %s", failure)
                checks["store_process"] = "failed"
        if parts.worker is not None:
            checks["worker"] = (
                "failed" if parts.worker.failed else "ok" if parts.worker.alive else "stopped"
            )
        if parts.scheduler is not None:
            checks["schedule"] = "ok" if parts.scheduler.running else "stopped"
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks, **state},
            status_code=200 if ready else 503,
        )

    if parts is None or parts.settings.metrics.enabled:

        @app.get(
            "/metrics",
            summary="Prometheus metrics",
            description="Runs, detection and containment times per finding, recovered "
            "incidents, throttled calls and the inbox, read from the store (so every "
            "worker's work is counted), in the Prometheus text format. Served only "
            "when metrics.enabled.",
            responses={200: {"content": {"text/plain": {}}}},
        )
        async def metrics() -> Response:
            assert parts is not None
            body, content_type = await asyncio.to_thread(metrics_response, parts.audit.store)
            return Response(body, media_type=content_type)

    @app.get(
        "/plans",
        summary="Stored plans",
        responses={200: {"model": list[PlanBody]}, **_errors(401, 403, 501)},
        openapi_extra={"security": [{"entraId": []}]},
    )
    async def list_plans(request: Request, status: str | None = None, limit: int = 50) -> Response:
        assert parts is not None
        try:
            parts.gate.approver(request.headers)
            approvals = _approvals(parts)
        except Refused as refusal:
            return _refuse(parts, request, refusal, b"", refusal.caller)
        found = await asyncio.to_thread(
            approvals.plans, status=status, limit=max(1, min(limit, 500))
        )
        return JSONResponse([_plan(view) for view in found])

    @app.get(
        "/plans/{plan_id}",
        summary="One stored plan, its actions and content hash",
        responses={200: {"model": PlanBody}, **_errors(401, 403, 404, 501)},
        openapi_extra={"security": [{"entraId": []}]},
    )
    async def show_plan(plan_id: str, request: Request) -> Response:
        assert parts is not None
        try:
            parts.gate.approver(request.headers)
            approvals = _approvals(parts)
            view = await asyncio.to_thread(approvals.plan, plan_id)
            if view is None:
                raise Refused(404, f"no plan {plan_id[:80]!r}")
        except Refused as refusal:
            return _refuse(parts, request, refusal, b"", refusal.caller)
        return JSONResponse(_plan(view))

    for decision in ("approved", "rejected"):
        verb = "approve" if decision == "approved" else "reject"
        app.add_api_route(
            f"/plans/{{plan_id}}/{verb}",
            _decide_route(lambda: parts, decision),
            methods=["POST"],
            summary=f"{verb.capitalize()} a plan, bound to its content hash",
            description=(
                "Needs an approver's own Entra ID token (a person listed in webhook.approvers "
                "or holding webhook.approver_role); their identity is recorded with the decision. "
                "The body names the plan hash the approver saw: a plan that changed since is refused."
            ),
            responses={
                200: {"model": PlanBody},
                **_errors(400, 401, 403, 404, 409, 501),
            },
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": DecisionBody.model_json_schema()}},
                },
                "security": [{"entraId": []}],
            },
        )

    return app


def _decide_route(
    get_parts: Callable[[], ServiceParts | None], decision: str
) -> Callable[..., Any]:
    async def decide(plan_id: str, request: Request) -> Response:
        parts = get_parts()
        assert parts is not None
        body = b""
        caller = ""
        try:
            person = parts.gate.approver(request.headers)
            caller = person.label
            approvals = _approvals(parts)
            body = await _read_limited(request, 16_384)
            try:
                asked = DecisionBody.model_validate(parse_body(body))
            except (PayloadError, ValueError):
                raise Refused(
                    400,
                    "the decision body is not {plan_hash, reason}",
                    detail='send {"plan_hash": "<64 hex>", "reason": "..."}',
                    caller=caller,
                ) from None
            approval = ApprovalRequest(
                plan_id=plan_id,
                plan_hash=asked.plan_hash,
                decision="approved" if decision == "approved" else "rejected",
                approver=Approver(
                    principal_id=person.principal_id,
                    name=person.name,
                    tenant_id=person.tenant_id,
                    app_id=person.app_id,
                ),
                reason=asked.reason,
                at=utcnow(),
            )
            try:
                view = await asyncio.to_thread(approvals.decide, approval)
            except PlanNotFound:
                raise Refused(404, f"no plan {plan_id[:80]!r}", caller=caller) from None
            except ApprovalRefused as refused:
                raise Refused(409, str(refused), detail=str(refused), caller=caller) from None
        except Refused as refusal:
            return _refuse(parts, request, refusal, body, caller)
        parts.audit.record(
            view.run_id,
            f"plan.{decision}",
            {
                "plan": view.plan_id,
                "hash": approval.plan_hash,
                "approver": approval.approver.__dict__,
                "reason": approval.reason,
            },
            actor=person.label,
        )
        logger.info("plan %s %s by %s", view.plan_id, decision, person.label)
        return JSONResponse(_plan(view))

    return decide


def _approvals(parts: ServiceParts) -> PlanApprovals:
    if parts.approvals is None:
        raise Refused(501, "no approval storage is configured")
    return parts.approvals


def _plan(view: PlanView) -> dict[str, Any]:
    return {
        "plan_id": view.plan_id,
        "run_id": view.run_id,
        "status": view.status,
        "content_hash": view.content_hash,
        "created_at": isoformat_z(view.created_at),
        "actions": list(view.actions),
        "decisions": list(view.decisions),
    }


# -- reading and checking a delivery -------------------------------------------------


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Refused(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise Refused(413, f"Content-Length {declared} is over {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"the body passed {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _require_json(content_type: str) -> None:
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in ("", "application/json"):
        raise Refused(415, f"content type {media[:80]!r}")


def _delivery(
    settings: Settings, body: bytes, sender: Caller, received: datetime
) -> tuple[Delivery, IncidentScope]:
    try:
        return delivery_for(
            body,
            caller=sender.label,
            scheme=sender.scheme,
            received=received,
            margin_before=parse_duration(settings.sentinel.window_before),
            margin_after=parse_duration(settings.sentinel.window_after),
            allowed_workspaces=settings.sentinel.allowed_workspaces,
        )
    except PayloadError as failure:
        raise Refused(
            failure.status, str(failure), detail=str(failure), caller=sender.label
        ) from None
    except WorkspaceRefused as failure:
        raise Refused(403, str(failure), caller=sender.label) from None
    except InputError as failure:
        raise Refused(422, str(failure), detail=str(failure), caller=sender.label) from None


def _refuse(
    parts: ServiceParts, request: Request, refusal: Refused, body: bytes, caller: str
) -> Response:
    logger.warning(
        "refused %s %s with %d: %s",
        request.method,
        request.url.path,
        refusal.status,
        refusal.reason,
    )
    if parts.recorder is not None:
        parts.recorder.refuse(
            Refusal(
                status=refusal.status,
                reason=refusal.reason[:500],
                path=request.url.path[:200],
                scheme="bearer"
                if request.headers.get("authorization")
                else "hmac"
                if request.headers.get(SIGNATURE_HEADER)
                else "",
                caller=(caller or refusal.caller)[:256],
                size=len(body),
                body_sha256=hashlib.sha256(body).hexdigest() if body else "",
            )
        )
    # Only an authenticated sender hears what was wrong with its body.
    detail = refusal.detail if caller or refusal.caller else ""
    headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
    if refusal.status == 503:
        headers = {"Retry-After": "5"}
    return _error(refusal.status, detail=detail, headers=headers)


def _error(status: int, *, detail: str = "", headers: dict[str, str] | None = None) -> JSONResponse:
    code, message = _PUBLIC[status]
    body: dict[str, Any] = {"error": code, "message": detail or message}
    return JSONResponse(body, status_code=status, headers=headers)


# -- the OpenAPI document ---------------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    """The service's OpenAPI document, as committed in docs/openapi.json."""
    app = create_app(None)
    document = app.openapi()
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(schema_components())
    components["securitySchemes"] = {
        "entraId": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": (
                "An Entra ID access token for webhook.audiences "
                "(the Logic App's managed identity; approvers' own tokens)."
            ),
        },
        "hmacSignature": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Tokenward-Signature",
            "description": "sha256=<hex of HMAC-SHA256(secret, '<timestamp>.<raw body>')>",
        },
        "hmacTimestamp": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Tokenward-Timestamp",
            "description": "Unix seconds; outside webhook.replay_window the request is refused.",
        },
    }
    return document


# -- wiring: the connectors of the service's runs ---------------------------------


def open_audit(settings: Settings) -> tuple[Inbox, AuditLog]:
    from playbooks.store import open_store

    key = settings.audit.hmac_key
    store = open_store(settings.store.url)
    audit = AuditLog(store, key=key.get_secret_value().encode() if key is not None else None)
    audit.check_key()
    return Inbox(store, audit, mode=settings.webhook.mode), audit


def build_worker(settings: Settings, spec: SourceSpec) -> Worker:
    """A worker for the inbox in *settings*, its runs hunting where *spec* says.

    Its connectors are :class:`~playbooks.wiring.ServiceTools`, made when it
    starts: the Graph responder only for approve and auto and only after the
    permission preflight; in dry-run none is made at all.
    """
    from playbooks.playbook import load_playbook

    playbook = load_playbook(settings.playbook.path)
    inbox, audit = open_audit(settings)
    return Worker(
        settings=settings,
        playbook=playbook,
        inbox=inbox,
        audit=audit,
        tools=ServiceTools(settings, playbook, spec),
    )


def build_parts(
    settings: Settings,
    *,
    spec: SourceSpec | None,
    with_worker: bool,
    approvals: PlanApprovals | None = None,
    store_apart: bool = False,
) -> ServiceParts:
    """The service as settings describe it; :class:`SettingsError` if it cannot start.

    In approve or auto with a worker, the Graph token's permissions are checked
    first (:class:`~playbooks.errors.PermissionDenied` if one is missing), so a
    service that could not contain never starts. Approvals are the stored
    plans' unless *approvals* is given. With *store_apart*, deliveries are
    committed by a :class:`StoreProcess` (not for a database in memory, which
    another process cannot open).
    """
    from connectors.entra_keys import SigningKeys
    from playbooks.approvals import StoredApprovals
    from playbooks.store import in_memory

    problems = service_problems(settings)
    if problems:
        raise SettingsError("tokenward serve cannot start: " + "; ".join(problems))
    _check_tls_files(settings)
    inbox, audit = open_audit(settings)

    keys = None
    if AuthScheme.BEARER in settings.webhook.auth:
        ca = settings.azure.ca_bundle
        verify: Any = ssl.create_default_context(cafile=str(ca)) if ca else True
        keys = KeySource(SigningKeys(metadata_url=openid_metadata_url(settings), verify=verify))
    worker = None
    if with_worker:
        if spec is None:
            raise SettingsError(
                "the worker needs a query source: give --source files:DIR (exported "
                "logs), loganalytics, defender or live (or --no-worker and run "
                "tokenward worker apart)"
            )
        # Check the source, the credential, the playbook and the Graph
        # permissions here, so a mistake stops serve at once instead of a
        # worker failing out of sight while the webhook goes on accepting.
        from playbooks.playbook import load_playbook

        require_source(spec)
        require_credential(settings, spec)

        playbook = load_playbook(settings.playbook.path)
        if writing_modes(settings):
            require_permissions(
                settings,
                playbook,
                why=f"tokenward serve ({', '.join(writing_modes(settings))})",
            )
        worker = WorkerProcess(settings, spec)
    scheduler = JobScheduler(settings.schedule, inbox) if jobs_configured(settings) else None
    return ServiceParts(
        settings=settings,
        audit=audit,
        inbox=inbox,
        gate=build_gate(settings, keys=keys),
        keys=keys,
        approvals=approvals or StoredApprovals(audit, settings.approvals),
        worker=worker,
        scheduler=scheduler,
        store_process=StoreProcess(settings, audit=audit)
        if store_apart and not in_memory(settings.store.url)
        else None,
    )


def _check_tls_files(settings: Settings) -> None:
    """Refuse (:class:`SettingsError`) a certificate and key TLS cannot use, before listening."""
    server = settings.server
    if server.certfile is None or server.keyfile is None:
        return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        # No password: an encrypted key fails here instead of prompting.
        context.load_cert_chain(server.certfile, server.keyfile, password=lambda: b"")
    except FileNotFoundError as missing:
        raise SettingsError(
            f"{missing.filename or server.certfile}: no such file",
            source=Location(key="server.certfile"),
        ) from None
    except ssl.SSLError:
        raise SettingsError(
            f"{server.certfile} and {server.keyfile} are not a PEM certificate chain and its "
            "unencrypted private key",
            source=Location(key="server.certfile"),
        ) from None
    except OSError as failure:
        raise SettingsError(
            f"{failure.filename or server.certfile}: {failure.strerror or failure}",
            source=Location(key="server.certfile"),
        ) from None


def listen(settings: Settings) -> socket.socket:
    """The service's listening socket; :class:`SettingsError` naming server.port if
    the address cannot be had (in use, not this machine's, a privileged port)."""
    server = settings.server
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((server.host, server.port))
        sock.listen(2048)
    except OSError as failure:
        sock.close()
        raise SettingsError(
            f"cannot listen on {server.host}:{server.port}: {failure.strerror or failure}",
            source=Location(key="server.port"),
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(parts: ServiceParts, sock: socket.socket | None = None) -> None:
    """Run the service under uvicorn until SIGINT or SIGTERM, on *sock* (from
    :func:`listen`) or on server.host:port."""
    import uvicorn

    server = parts.settings.server
    config = uvicorn.Config(
        create_app(parts),
        host=server.host,
        port=server.port,
        ssl_certfile=str(server.certfile) if server.certfile else None,
        ssl_keyfile=str(server.keyfile) if server.keyfile else None,
        proxy_headers=bool(server.forwarded_allow_ips),
        forwarded_allow_ips=list(server.forwarded_allow_ips) or None,
        server_header=False,
        date_header=True,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=30,
    )
    uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)


__all__ = [
    "Gate",
    "Recorder",
    "ServiceParts",
    "SourceSpec",
    "build_parts",
    "create_app",
    "openapi_document",
    "serve",
    "service_problems",
]


if __name__ == "__main__":  # python -m playbooks.server > docs/openapi.json
    import json
    import sys

    json.dump(openapi_document(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
