"""The protocols the engine calls, which connectors implement.

The engine decides and records; it reaches the outside only through these.
A connector returns a result or raises one of :mod:`playbooks.errors`, never
a vendor exception and never ``None`` for a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from playbooks.errors import (
    AuthenticationFailed,
    BadRequest,
    ConnectorError,
    NotFound,
    PermissionDenied,
    QueryError,
    ServiceUnavailable,
    Throttled,
    TimedOut,
)
from playbooks.models import (
    ActionResult,
    DirectoryUser,
    PlannedAction,
    RunStatus,
    Target,
    Window,
)

__all__ = [
    "AttemptListener",
    "AuthenticationFailed",
    "CallAttempt",
    "BadRequest",
    "DirectoryReader",
    "ConnectorError",
    "ExecutionContext",
    "IncidentFeed",
    "IncidentPage",
    "IncidentWrite",
    "IncidentWriter",
    "NotFound",
    "PermissionDenied",
    "QueryError",
    "QueryOutcome",
    "QuerySource",
    "RenderedQuery",
    "Responder",
    "ServiceUnavailable",
    "Throttled",
    "TimedOut",
    "listening_for_attempts",
    "report_attempt",
]

Row = dict[str, Any]


@dataclass(frozen=True)
class RenderedQuery:
    """A query ready to run: the exact text a person sees and a service runs."""

    name: str
    tables: tuple[str, ...]
    text: str
    # The widest time range the text reads; services that take a timespan get it.
    window: Window


@dataclass(frozen=True)
class QueryOutcome:
    """What a query returned, and whether it returned all of it."""

    name: str
    rows: list[Row]
    status: RunStatus
    duration_ms: int
    error: str | None = None
    # Service-side details (error codes, statistics) safe to keep in the audit.
    details: dict[str, Any] = field(default_factory=dict)


class QuerySource(Protocol):
    """Runs rendered KQL where the logs are."""

    @property
    def description(self) -> str:
        """Where the queries run, in words for a report."""
        ...

    async def run_queries(self, queries: Sequence[RenderedQuery]) -> list[QueryOutcome]:
        """Run every query, as one batch where the service allows.

        A query that fails is returned with status ``failed`` and its error;
        the source raises only when it cannot run anything at all.
        """
        ...


@dataclass(frozen=True)
class ExecutionContext:
    """What a responder needs to know about the run it acts for."""

    run_id: str
    # The sign-in each user's actions answer, for the ledger and verification.
    sign_in_times: dict[str, Any] = field(default_factory=dict)
    # Called with each result as soon as it is known (the ledger's outcome),
    # before the rest of the actions finish: a crash then loses as little as can be.
    on_result: Callable[[Sequence[ActionResult]], None] | None = None

    def settled(self, results: Sequence[ActionResult]) -> None:
        if self.on_result is not None and results:
            self.on_result(results)


class Responder(Protocol):
    """Carries out planned actions and says exactly what took effect."""

    @property
    def description(self) -> str: ...

    @property
    def sends_requests(self) -> bool:
        """False for a responder that only shows what it would send."""
        ...

    async def execute(
        self, actions: Sequence[PlannedAction], context: ExecutionContext
    ) -> list[ActionResult]:
        """One result per action, in order; one failing action never stops the rest."""
        ...


class DirectoryReader(Protocol):
    """Reads users as they are now, before and after acting on them."""

    async def read_users(self, targets: Sequence[Target]) -> list[DirectoryUser]:
        """One reading per target, in order; a user that cannot be read has
        ``error`` set (not found, permission, throttled) instead of raising."""
        ...


@dataclass(frozen=True)
class IncidentWrite:
    """What the incident service answered to one write (never a body or token)."""

    http_status: int
    attempts: int = 1
    request_id: str | None = None
    # A comment: True when this write created it, False when it updated it.
    created: bool = False
    detail: str = ""


class IncidentWriter(Protocol):
    """Writes a run's outcome back to the incident it came from.

    Both writes are idempotent, so a run retried after a crash repeats them
    safely: a comment is written under an id fixed per run (the same id
    updates, never adds), and labels are set, not appended.
    """

    async def comment(self, *, incident_id: str, comment_id: str, message: str) -> IncidentWrite:
        """Create or update the comment *comment_id* on the incident."""
        ...

    async def label(self, *, incident_id: str, labels: Sequence[str]) -> IncidentWrite:
        """Make *labels* the incident's tokenward labels; others' labels stay."""
        ...


@dataclass(frozen=True)
class IncidentPage:
    """One page of a workspace's incidents, oldest first, and where the next is."""

    incidents: list[dict[str, Any]]
    # The service's link to the next page; None on the last.
    next_link: str | None = None


class IncidentFeed(Protocol):
    """Lists a workspace's incidents, for reconciliation with the webhook."""

    async def incidents_created_after(
        self,
        *,
        workspace: str,
        after: datetime,
        page_size: int,
        next_link: str | None = None,
    ) -> IncidentPage:
        """Incidents of *workspace* created after *after*, oldest first; with
        *next_link*, the page it names."""
        ...

    async def entities(self, *, incident_id: str) -> list[dict[str, Any]]:
        """The incident's entities (the listing does not carry them)."""
        ...


# -- attempts at outside calls ------------------------------------------------

AttemptOutcome = Literal["succeeded", "retrying", "failed"]


@dataclass(frozen=True)
class CallAttempt:
    """One attempt at one call to an outside service, as the audit keeps it.

    Nothing here may hold a token, a secret or a response body: the service's
    status, error code and request id are what a person needs to follow up.
    """

    # log_analytics, defender, graph, arm
    service: str
    # What was called, e.g. "query_batch" or "runHuntingQuery".
    operation: str
    # What the call was for: query names, user ids.
    subjects: tuple[str, ...]
    number: int
    outcome: AttemptOutcome
    elapsed_ms: int
    status: int | None = None
    code: str | None = None
    error_class: str | None = None
    message: str | None = None
    request_id: str | None = None
    # What the service asked for, in seconds, and what tokenward then waited.
    retry_after: float | None = None
    wait: float | None = None

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["subjects"] = list(self.subjects)
        return {key: value for key, value in record.items() if value is not None}


AttemptListener = Callable[[CallAttempt], None]

_listener: ContextVar[AttemptListener | None] = ContextVar(
    "tokenward_attempt_listener", default=None
)


def report_attempt(attempt: CallAttempt) -> None:
    """Hand an attempt to whoever the current run listens with (the audit)."""
    listener = _listener.get()
    if listener is not None:
        listener(attempt)


@contextmanager
def listening_for_attempts(listener: AttemptListener) -> Iterator[None]:
    """Every attempt reported inside the block goes to *listener*.

    The runner wraps a run in this, so each connector's retries land in the
    run's audit without the connector knowing about runs or the store.
    """
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)
