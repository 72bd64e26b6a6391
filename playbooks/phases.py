"""Running a step's queries: one call to the source, re-runs over narrower windows.

A step (hunt, correlate, follow_on) hands every query it needs to the source
at once, so the source can send them as one batch. A query that comes back
partial (cut at the service's size limit, B17) or timed out (B18) is re-run
over the two halves of its window, all such halves in one more call, up to
``hunt.split_depth`` times; the halves' rows are merged without duplicates.
A query that is still partial stays partial: the run says so and holds
high-tier actions for a person.

Every query sent, halves included, is written to the audit with its text,
status, rows and service details.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from playbooks.audit import AuditLog
from playbooks.errors import ConnectorError
from playbooks.models import QueryRecord, RunStatus
from playbooks.ports import QueryOutcome, QuerySource, RenderedQuery

logger = logging.getLogger(__name__)

Render = Callable[[datetime, datetime], RenderedQuery]


@dataclass(frozen=True)
class Planned:
    """A query of a step, renderable over any window (for re-runs over halves)."""

    name: str
    render: Render


@dataclass
class Ran:
    """A query as the step finished it: the text first sent and the merged outcome."""

    query: RenderedQuery
    outcome: QueryOutcome
    parts: int = 1

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.outcome.rows


@dataclass
class _Part:
    start: datetime
    end: datetime
    query: RenderedQuery
    outcome: QueryOutcome


@dataclass
class StepRunner:
    """Runs the steps of one run against one source, recording every query."""

    source: QuerySource
    audit: AuditLog
    run_id: str
    split_depth: int = 1
    records: list[QueryRecord] = field(default_factory=list)

    async def run(
        self, step: str, planned: Sequence[Planned], start: datetime, end: datetime
    ) -> dict[str, Ran]:
        """Every query of *step* over [start, end], halves re-run as needed."""
        if not planned:
            return {}
        parts: dict[str, list[_Part]] = {p.name: [] for p in planned}
        first = [p.render(start, end) for p in planned]
        for query, outcome in zip(first, await self._send(step, first), strict=True):
            parts[query.name].append(_Part(start, end, query, outcome))

        for _ in range(self.split_depth):
            redo = [
                (p, part)
                for p in planned
                for part in parts[p.name]
                if _needs_split(part.outcome) and part.end - part.start > _MIN_SPLIT
            ]
            if not redo:
                break
            halves: list[tuple[Planned, datetime, datetime, RenderedQuery]] = []
            for p, part in redo:
                middle = part.start + (part.end - part.start) / 2
                for lo, hi in ((part.start, middle), (middle, part.end)):
                    halves.append((p, lo, hi, p.render(lo, hi)))
                parts[p.name].remove(part)
            logger.info("re-running %d queries over halves of their windows", len(redo))
            outcomes = await self._send(f"{step}.split", [q for _, _, _, q in halves])
            for (p, lo, hi, query), outcome in zip(halves, outcomes, strict=True):
                parts[p.name].append(_Part(lo, hi, query, outcome))

        finished = {}
        for p, query in zip(planned, first, strict=True):
            ran = _merged(query, sorted(parts[p.name], key=lambda part: part.start))
            finished[p.name] = ran
            self.records.append(_record(ran, step, self.source.description))
        return finished

    def skipped(self, step: str, query: RenderedQuery, reason: str) -> Ran:
        """A query not sent because its answer is known (no hits to correlate)."""
        outcome = QueryOutcome(
            name=query.name,
            rows=[],
            status=RunStatus.COMPLETE,
            duration_ms=0,
            details={"skipped": reason},
        )
        self._audit(step, query, outcome)
        ran = Ran(query, outcome)
        self.records.append(
            _record(ran, step, self.source.description, detail=f"not sent: {reason}")
        )
        return ran

    async def _send(self, step: str, queries: Sequence[RenderedQuery]) -> list[QueryOutcome]:
        try:
            outcomes = await self.source.run_queries(queries)
        except ConnectorError as failure:
            # Nothing ran: every query of the call failed the same way.
            logger.warning("the source could not run the %s step: %s", step, failure.error_class)
            details = {
                key: value
                for key, value in {
                    "status": failure.status,
                    "code": failure.code,
                    "error_class": failure.error_class,
                    "request_id": failure.request_id,
                    "retry_after": failure.retry_after,
                }.items()
                if value is not None
            }
            outcomes = [
                QueryOutcome(
                    name=q.name,
                    rows=[],
                    status=RunStatus.FAILED,
                    duration_ms=0,
                    error=f"{type(failure).__name__}: {failure}",
                    details=details,
                )
                for q in queries
            ]
        for query, outcome in zip(queries, outcomes, strict=True):
            self._audit(step, query, outcome)
        return list(outcomes)

    def _audit(self, step: str, query: RenderedQuery, outcome: QueryOutcome) -> None:
        self.audit.record(
            self.run_id,
            "query.completed",
            {
                "name": query.name,
                "step": step,
                "source": self.source.description,
                "tables": list(query.tables),
                "text": query.text,
                "window": query.window.model_dump(mode="json"),
                "status": outcome.status.value,
                "row_count": len(outcome.rows),
                "duration_ms": outcome.duration_ms,
                "error": outcome.error,
                "details": outcome.details,
            },
        )


# Halves narrower than this are not worth another round trip.
_MIN_SPLIT = timedelta(minutes=1)


def _needs_split(outcome: QueryOutcome) -> bool:
    if outcome.status is RunStatus.PARTIAL:
        return True
    return outcome.status is RunStatus.FAILED and outcome.details.get("error_class") == "timeout"


def _merged(first: RenderedQuery, parts: Sequence[_Part]) -> Ran:
    if len(parts) == 1:
        return Ran(first, parts[0].outcome)
    seen: set[str] = set()
    rows = []
    for part in parts:
        for row in part.outcome.rows:
            key = json.dumps(row, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                rows.append(row)
    statuses = [part.outcome.status for part in parts]
    if RunStatus.FAILED in statuses:
        status = RunStatus.FAILED
    elif RunStatus.PARTIAL in statuses:
        status = RunStatus.PARTIAL
    else:
        status = RunStatus.COMPLETE
    errors = [part.outcome.error for part in parts if part.outcome.error]
    outcome = QueryOutcome(
        name=first.name,
        rows=rows,
        status=status,
        duration_ms=sum(part.outcome.duration_ms for part in parts),
        error=errors[0] if errors and status is not RunStatus.COMPLETE else None,
        details={
            "parts": [
                {
                    "start": part.start.isoformat(),
                    "end": part.end.isoformat(),
                    "status": part.outcome.status.value,
                    "rows": len(part.outcome.rows),
                }
                for part in parts
            ]
        },
    )
    return Ran(first, outcome, parts=len(parts))


def _record(ran: Ran, step: str, source: str, *, detail: str | None = None) -> QueryRecord:
    outcome = ran.outcome
    if detail is None and ran.parts > 1:
        detail = f"re-run over {ran.parts} narrower windows after a partial or timed-out answer"
        if outcome.status is not RunStatus.COMPLETE:
            detail += f"; still {outcome.status.value}"
    if detail is None and outcome.status is RunStatus.PARTIAL:
        detail = outcome.error
    return QueryRecord(
        name=ran.query.name,
        tables=ran.query.tables,
        text=ran.query.text,
        row_count=len(outcome.rows),
        status=outcome.status,
        duration_ms=outcome.duration_ms,
        error=outcome.error if outcome.status is RunStatus.FAILED else None,
        source=source,
        phase=step,
        detail=detail,
    )
