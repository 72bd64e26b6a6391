"""The protocols the engine calls, which connectors implement.

The engine decides and records; it reaches the outside only through these.
A connector returns a result or raises one of :mod:`playbooks.errors`, never
a vendor exception and never ``None`` for a failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from playbooks.errors import (
    AuthenticationFailed,
    BadRequest,
    ConnectorError,
    NotFound,
    PermissionDenied,
    QueryError,
    ServiceUnavailable,
    Throttled,
)
from playbooks.models import ActionResult, PlannedAction, RunStatus, Window

__all__ = [
    "AuthenticationFailed",
    "BadRequest",
    "ConnectorError",
    "ExecutionContext",
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


class IncidentWriter(Protocol):
    """Writes a run's outcome back to the incident it came from."""

    async def comment(self, *, incident_id: str, comment_id: str, message: str) -> None: ...

    async def label(self, *, incident_id: str, labels: Sequence[str]) -> None: ...
