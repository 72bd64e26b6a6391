"""Rendered KQL run in Defender XDR advanced hunting, through Microsoft Graph.

``security/runHuntingQuery`` takes one query per call (there is no batch), so
a phase's queries go out concurrently, at most ``defender.concurrency`` at a
time: the round trips still depend on the number of queries, never on the
number of users.

kiota types the result rows on its own: strings that look like GUIDs become
``uuid.UUID``, strings that look like dates become ``datetime`` (even in
String columns), and the schema's keys arrive as ``name``/``type`` or
``Name``/``Type``. Rows are normalised here to the shapes the Log Analytics
source gives: aware UTC datetimes in DateTime columns, text in String
columns, parsed values in dynamic ones.

The API's ``timespan`` counts back from the moment the query runs, so it is
sent as the time from the query window's start to now; the window itself is
in the query text. A date-looking value in a String column comes back as ISO
text with a ``Z`` and GUIDs in lower case: kiota does not keep the original
spelling.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from msgraph.generated.security.microsoft_graph_security_run_hunting_query.run_hunting_query_post_request_body import (  # noqa: E501
    RunHuntingQueryPostRequestBody,
)
from msgraph.graph_service_client import GraphServiceClient

from connectors.retry import RetryPolicy, call_with_retries, graph_error
from playbooks.errors import (
    AuthenticationFailed,
    BadRequest,
    ConnectorError,
    PermissionDenied,
)
from playbooks.models import RunStatus
from playbooks.ports import AttemptListener, QueryOutcome, RenderedQuery
from playbooks.times import as_utc, isoformat_z, utcnow

logger = logging.getLogger(__name__)

SERVICE = "defender"
# Advanced hunting's column types, as the Log Analytics names the rows use.
_KINDS = {
    "string": "string",
    "datetime": "datetime",
    "object": "dynamic",
    "dynamic": "dynamic",
    "boolean": "bool",
    "bool": "bool",
    "int32": "int",
    "int": "int",
    "int64": "long",
    "long": "long",
    "double": "real",
    "real": "real",
    "guid": "guid",
    "timespan": "timespan",
}


class DefenderSource:
    """A :class:`~playbooks.ports.QuerySource` over Defender XDR advanced hunting."""

    def __init__(
        self,
        graph: GraphServiceClient,
        *,
        policy: RetryPolicy,
        concurrency: int = 4,
        graph_host: str = "",
        on_attempt: AttemptListener | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._graph = graph
        self._policy = policy
        self._limit = concurrency
        self._graph_host = graph_host
        self._on_attempt = on_attempt
        self._clock = clock

    @property
    def description(self) -> str:
        where = f" ({self._graph_host})" if self._graph_host else ""
        return f"Defender XDR advanced hunting through Microsoft Graph{where}"

    async def run_queries(self, queries: Sequence[RenderedQuery]) -> list[QueryOutcome]:
        gate = asyncio.Semaphore(self._limit)

        async def one(query: RenderedQuery) -> QueryOutcome:
            async with gate:
                return await self._run(query)

        return list(await asyncio.gather(*(one(query) for query in queries)))

    async def _run(self, query: RenderedQuery) -> QueryOutcome:
        started = time.perf_counter()
        body = RunHuntingQueryPostRequestBody(
            query=query.text, timespan=iso_duration(self._clock() - query.window.start)
        )
        hunting = self._graph.security.microsoft_graph_security_run_hunting_query
        logger.info("running %s in Defender advanced hunting", query.name)
        try:
            result = await call_with_retries(
                lambda: hunting.post(body),
                service=SERVICE,
                name="runHuntingQuery",
                subjects=[query.name],
                classify=lambda failure: graph_error(
                    failure, what=f"runHuntingQuery for the {query.name} query"
                ),
                policy=self._policy,
                on_attempt=self._on_attempt,
            )
        except ConnectorError as failure:
            error = _with_hint(failure)
            logger.warning("query %s failed in Defender: %s", query.name, error.error_class)
            return QueryOutcome(
                name=query.name,
                rows=[],
                status=RunStatus.FAILED,
                duration_ms=_ms(started),
                error=str(error),
                details={
                    key: value
                    for key, value in {
                        "status": error.status,
                        "code": error.code,
                        "error_class": error.error_class,
                        "request_id": error.request_id,
                        "retry_after": error.retry_after,
                    }.items()
                    if value is not None
                },
            )
        rows = hunting_rows(result)
        logger.debug("query %s returned %d rows", query.name, len(rows))
        return QueryOutcome(
            name=query.name,
            rows=rows,
            status=RunStatus.COMPLETE,
            duration_ms=_ms(started),
        )


def hunting_rows(result: Any) -> list[dict[str, Any]]:
    """``HuntingQueryResults`` rows with the kiota conversions undone per column type."""
    kinds: dict[str, str] = {}
    for column in getattr(result, "schema", None) or []:
        extra = getattr(column, "additional_data", None) or {}
        name = getattr(column, "name", None) or extra.get("Name") or extra.get("name")
        kind = getattr(column, "type", None) or extra.get("Type") or extra.get("type") or ""
        if name:
            kinds[str(name)] = _KINDS.get(str(kind).lower(), "string")
    rows = []
    for item in getattr(result, "results", None) or []:
        values = getattr(item, "additional_data", None) or {}
        rows.append({name: _cell(kinds.get(name, ""), value) for name, value in values.items()})
    return rows


def _cell(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "datetime":
        if isinstance(value, datetime):
            return as_utc(value)
        try:
            return as_utc(str(value))
        except ValueError:
            return value
    if kind == "dynamic":
        if isinstance(value, str):
            try:
                return _plain(json.loads(value))
            except ValueError:
                return value
        return _plain(value)
    if kind in ("string", "guid", "timespan", ""):
        return _text(value)
    return value


def _text(value: Any) -> Any:
    # kiota made these from strings; give the string back. A GUID comes back
    # in lower case, and a date-looking string in ISO form with a Z.
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return isoformat_z(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return _text(value)


def iso_duration(span: timedelta) -> str:
    """A positive duration as ISO 8601, rounded up to the minute: ``P31DT2H5M``."""
    minutes = max(1, math.ceil(span.total_seconds() / 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    text = f"P{days}D" if days else "P"
    if hours or minutes:
        text += "T" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    return text


def _with_hint(error: ConnectorError) -> ConnectorError:
    hint = ""
    if isinstance(error, PermissionDenied):
        hint = "the app needs the ThreatHunting.Read.All application permission on Microsoft Graph"
    elif isinstance(error, AuthenticationFailed):
        hint = "check [azure.credential] and that the token is issued for Microsoft Graph"
    elif isinstance(error, BadRequest):
        hint = "the query text was refused: check the template it was rendered from"
    if not hint or hint in str(error):
        return error
    return type(error)(
        f"{error}; {hint}",
        status=error.status,
        code=error.code,
        request_id=error.request_id,
        client_request_id=error.client_request_id,
        retry_after=error.retry_after,
    )


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
