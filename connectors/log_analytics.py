"""Rendered KQL run in the Sentinel workspace through azure-monitor-query.

Every query of a phase goes in one ``query_batch`` request, so a hunt costs
the same round trips for one user or five hundred. Each query carries its
time window twice: in its text (the templates filter on it) and as the API
``timespan`` (which the service applies to every table first). The service
may run each query for ``server_timeout`` seconds, always less than the HTTP
read timeout (checked when settings load, B18).

What comes back is read defensively:

* a ``LogsQueryPartialResult`` (a result cut at the service's size limits) is
  a PARTIAL outcome carrying the inner error code, never an empty answer
  (B17);
* a per-query error is a FAILED outcome saying what to check; throttling and
  service faults of single queries are retried inside the one retry layer by
  re-sending only those queries;
* whole-request failures are raised as :mod:`playbooks.errors` types with the
  setting or role to check. azure-monitor-query 2.0 loses the 401/404
  subclasses and lets an HTML 502 page escape as ``JSONDecodeError``; the raw
  response seen by ``raw_response_hook`` gives the real status back.

Known limits: the service documents ``$batch`` as deprecated (the SDK still
sends it), and a step's queries go in one batch without splitting it, so a
playbook with many more queries than today's five would need chunking. Per-query
``Retry-After`` is read from the batch item's headers where the service sends
them; otherwise such a query backs off exponentially.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from azure.monitor.query import (
    LogsBatchQuery,
    LogsQueryError,
    LogsQueryPartialResult,
    LogsQueryResult,
    LogsTable,
)
from azure.monitor.query.aio import LogsQueryClient

from connectors.retry import (
    REQUEST_ID_HEADERS,
    Classify,
    RetryPolicy,
    azure_error,
    call_with_retries,
    error_for_status,
    header,
    retry_after_seconds,
)
from playbooks.errors import (
    AuthenticationFailed,
    BadRequest,
    ConnectorError,
    Location,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    SettingsError,
    TimedOut,
)
from playbooks.models import RunStatus
from playbooks.ports import AttemptListener, QueryOutcome, RenderedQuery
from playbooks.times import as_utc

logger = logging.getLogger(__name__)

SERVICE = "log_analytics"
TITLE = "Log Analytics"


@dataclass
class _Item:
    """One query of the batch, and what has come back for it so far."""

    index: int
    query: RenderedQuery
    outcome: QueryOutcome | None = None
    # The retryable failure of the latest attempt, if that is all it got.
    retryable: ConnectorError | None = None


@dataclass
class _RawBatch:
    """What the last HTTP response said, before the SDK parsed it."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    items: dict[str, Mapping[str, Any]] = field(default_factory=dict)


class LogAnalyticsSource:
    """A :class:`~playbooks.ports.QuerySource` over one Log Analytics workspace."""

    def __init__(
        self,
        client: LogsQueryClient,
        *,
        workspace_id: str,
        server_timeout: int,
        policy: RetryPolicy,
        endpoint: str = "",
        on_attempt: AttemptListener | None = None,
    ) -> None:
        if not workspace_id:
            raise SettingsError(
                "a Log Analytics hunt needs the workspace id in log_analytics.workspace_id",
                source=Location(key="log_analytics.workspace_id"),
            )
        self._client = client
        self._workspace_id = workspace_id
        self._server_timeout = server_timeout
        self._policy = RetryPolicy(
            max_attempts=policy.max_attempts,
            wait_initial=policy.wait_initial,
            wait_max=policy.wait_max,
            deadline=policy.deadline,
            # The same heavy query after a timeout times out again (B18).
            retry_timeouts=False,
        )
        self._endpoint = endpoint
        self._on_attempt = on_attempt

    @property
    def description(self) -> str:
        where = f" at {self._endpoint}" if self._endpoint else ""
        return f"Log Analytics workspace {self._workspace_id}{where}"

    async def run_queries(self, queries: Sequence[RenderedQuery]) -> list[QueryOutcome]:
        """All *queries* in one ``$batch``; only failed retryable ones are re-sent."""
        if not queries:
            return []
        items = [_Item(index, query) for index, query in enumerate(queries)]
        started = time.perf_counter()
        raw = _RawBatch()

        async def send_pending() -> None:
            pending = [item for item in items if item.outcome is None]
            await self._send(pending, raw, started)
            still = [item.retryable for item in pending if item.retryable is not None]
            if still:
                # Raise the one that asks to wait longest: the batch waits for it.
                raise max(still, key=lambda error: error.retry_after or 0.0)

        try:
            await call_with_retries(
                send_pending,
                service=SERVICE,
                name="query_batch",
                subjects=[query.name for query in queries],
                classify=self._classifier(raw),
                policy=self._policy,
                on_attempt=self._on_attempt,
            )
        except ConnectorError as failure:
            if not any(item.retryable for item in items):
                raise _with_hint(failure, self._workspace_id) from None
        return [item.outcome or _failed(item, started) for item in items]

    async def _send(self, pending: list[_Item], raw: _RawBatch, started: float) -> None:
        batch = [
            LogsBatchQuery(
                self._workspace_id,
                item.query.text,
                timespan=(item.query.window.start, item.query.window.end),
                server_timeout=self._server_timeout,
            )
            for item in pending
        ]

        def seen(response: Any) -> None:
            http = response.http_response
            raw.status = http.status_code
            raw.headers = dict(http.headers)
            raw.items = {}
            try:
                body = json.loads(http.body() or b"null")
            except ValueError:
                return
            for entry in (body or {}).get("responses", []) if isinstance(body, dict) else []:
                if isinstance(entry, Mapping):
                    raw.items[str(entry.get("id"))] = entry

        logger.info(
            "querying Log Analytics workspace %s: %s",
            self._workspace_id,
            ", ".join(item.query.name for item in pending),
        )
        results = await self._client.query_batch(batch, raw_response_hook=seen)
        for item, request, result in zip(pending, batch, results, strict=True):
            item.retryable = None
            entry = raw.items.get(request.id, {})
            item.outcome, item.retryable = self._read(item.query, result, entry, started)

    def _read(
        self,
        query: RenderedQuery,
        result: LogsQueryResult | LogsQueryPartialResult | LogsQueryError,
        entry: Mapping[str, Any],
        started: float,
    ) -> tuple[QueryOutcome | None, ConnectorError | None]:
        elapsed = _ms(started)
        if isinstance(result, LogsQueryResult):
            rows = [row for table in result.tables[:1] for row in _rows(table)]
            logger.debug("query %s returned %d rows", query.name, len(rows))
            return QueryOutcome(
                name=query.name,
                rows=rows,
                status=RunStatus.COMPLETE,
                duration_ms=elapsed,
            ), None
        if isinstance(result, LogsQueryPartialResult):
            rows = [row for table in (result.partial_data or [])[:1] for row in _rows(table)]
            partial = _partial_error(entry, result)
            logger.warning(
                "query %s came back partial (%s) with %d rows",
                query.name,
                partial.get("inner_code") or partial.get("code"),
                len(rows),
            )
            return QueryOutcome(
                name=query.name,
                rows=rows,
                status=RunStatus.PARTIAL,
                duration_ms=elapsed,
                error=partial["summary"],
                details={"partial_error": partial},
            ), None

        status = _int(entry.get("status"))
        headers = {str(k): str(v) for k, v in (entry.get("headers") or {}).items()}
        error = _item_error(query, result, status, headers, self._workspace_id)
        if error.retryable and not isinstance(error, TimedOut):
            return None, error
        return QueryOutcome(
            name=query.name,
            rows=[],
            status=RunStatus.FAILED,
            duration_ms=elapsed,
            error=str(error),
            details=_error_details(error),
        ), None

    def _classifier(self, raw: _RawBatch) -> Classify:
        def classify(failure: BaseException) -> ConnectorError | None:
            if isinstance(failure, ConnectorError):
                return failure
            if isinstance(failure, ValueError) and raw.status is not None:
                # An HTML page (a gateway's 502) where JSON was expected.
                return error_for_status(
                    raw.status if raw.status >= 400 else 502,
                    f"Log Analytics answered query_batch with a page that is not JSON "
                    f"({raw.status}): a gateway or proxy in between failed",
                    request_id=header(raw.headers, *REQUEST_ID_HEADERS),
                    retry_after=retry_after_seconds(raw.headers),
                )
            return azure_error(failure, service=TITLE, what="query_batch")

        return classify


def _item_error(
    query: RenderedQuery,
    result: LogsQueryError,
    status: int | None,
    headers: Mapping[str, str],
    workspace_id: str,
) -> ConnectorError:
    code = getattr(result, "code", None)
    message = str(getattr(result, "message", "") or "no message")
    error = error_for_status(
        status or _status_for_code(code),
        f"Log Analytics could not run the {query.name} query ({code}: {message})",
        code=code,
        request_id=header(headers, *REQUEST_ID_HEADERS),
        retry_after=retry_after_seconds(headers),
    )
    return _with_hint(error, workspace_id)


def _status_for_code(code: str | None) -> int | None:
    lowered = (code or "").lower()
    for needle, status in (
        ("badargument", 400),
        ("semantic", 400),
        ("syntax", 400),
        ("notfound", 404),
        ("insufficientaccess", 403),
        ("forbidden", 403),
        ("authorization", 401),
        ("invalidtoken", 401),
        ("throttl", 429),
        ("toomanyrequests", 429),
        ("gatewaytimeout", 504),
        ("timeout", 504),
    ):
        if needle in lowered:
            return status
    return None


def _with_hint(error: ConnectorError, workspace_id: str) -> ConnectorError:
    """The same error with what a person should check."""
    hint = ""
    if isinstance(error, NotFound):
        hint = (
            f"check log_analytics.workspace_id ({workspace_id}): it is the workspace's "
            "id (a GUID on its overview page), and the workspace must be in the configured cloud"
        )
    elif isinstance(error, AuthenticationFailed):
        hint = "check [azure.credential] and that the token is issued for Log Analytics"
    elif isinstance(error, PermissionDenied):
        hint = (
            f"the identity needs the Log Analytics Reader (or Microsoft Sentinel Reader) "
            f"role on workspace {workspace_id}"
        )
    elif isinstance(error, BadRequest):
        hint = "the query text was refused: check the template it was rendered from"
    elif isinstance(error, TimedOut):
        hint = (
            "the query ran past log_analytics.server_timeout; it is re-run over "
            "narrower windows where possible"
        )
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


def _partial_error(entry: Mapping[str, Any], result: LogsQueryPartialResult) -> dict[str, Any]:
    """The partial error as data the audit can keep, innermost code included."""
    body = entry.get("body")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            body = None
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        partial = result.partial_error
        error = {
            "code": getattr(partial, "code", None),
            "message": getattr(partial, "message", None),
            "details": [],
        }
    inner_code, inner_message = None, None
    for detail in error.get("details") or []:
        inner = detail.get("innererror") if isinstance(detail, Mapping) else None
        while isinstance(inner, Mapping):
            inner_code = inner.get("code") or inner_code
            inner_message = inner.get("message") or inner_message
            inner = inner.get("innererror")
    summary = f"partial result ({error.get('code')}"
    summary += f", {inner_code}: {inner_message})" if inner_code else ")"
    return {
        "code": error.get("code"),
        "message": error.get("message"),
        "inner_code": inner_code,
        "inner_message": inner_message,
        "summary": summary,
    }


def _rows(table: LogsTable) -> list[dict[str, Any]]:
    kinds = list(table.columns_types or [])
    names = list(table.columns)
    return [
        {name: _cell(kinds[i] if i < len(kinds) else "", row[i]) for i, name in enumerate(names)}
        for row in table.rows
    ]


def _cell(kind: str, value: Any) -> Any:
    """A cell in the shape every source gives: aware UTC datetimes, parsed dynamics."""
    if value is None:
        return None
    if kind == "datetime":
        if isinstance(value, datetime):
            return as_utc(value)
        try:
            return as_utc(str(value))
        except ValueError:
            return value
    if kind == "dynamic" and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _failed(item: _Item, started: float) -> QueryOutcome:
    error = item.retryable or ServiceUnavailable("no answer for the query")
    return QueryOutcome(
        name=item.query.name,
        rows=[],
        status=RunStatus.FAILED,
        duration_ms=_ms(started),
        error=str(error),
        details=_error_details(error),
    )


def _error_details(error: ConnectorError) -> dict[str, Any]:
    details = {
        "status": error.status,
        "code": error.code,
        "error_class": error.error_class,
        "request_id": error.request_id,
        "retry_after": error.retry_after,
    }
    return {key: value for key, value in details.items() if value is not None}


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
