"""The one retry layer: every call to a Microsoft service goes through here.

The SDKs' own retries are off (see :mod:`connectors.clients`), so a call is
retried exactly as the audit says. The rules, in order:

* a failure is first translated into a :mod:`playbooks.errors` type by the
  caller's ``classify``; anything it does not recognise is a bug and is raised
  at once;
* 400, 401, 403 and 404 are never retried: they fail the same way again;
* 429 and 5xx, dropped connections and timeouts are retried, honouring the
  service's ``Retry-After`` (seconds, decimal seconds such as ``0.249``, or an
  HTTP date) and, without one, backing off exponentially with jitter;
* a ``Retry-After`` longer than ``wait_max`` stops the call as throttled,
  with the service's value recorded, instead of sleeping on (field case B08);
* no attempt starts once the next wait would pass the call's deadline;
* every attempt, successful or not, is reported to ``on_attempt`` (by default
  the running playbook's audit, see :func:`playbooks.ports.report_attempt`).

The deadline bounds waits and new attempts, not an attempt in flight: those
are bounded by the HTTP timeouts, because cancelling a write halfway leaves
its outcome unknown.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from kiota_abstractions.api_error import APIError
from tenacity import AsyncRetrying, RetryCallState
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from playbooks.errors import (
    AuthenticationFailed,
    BadRequest,
    ConnectorError,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    Throttled,
    TimedOut,
)
from playbooks.ports import AttemptListener, CallAttempt, report_attempt
from playbooks.settings import RetrySettings

logger = logging.getLogger(__name__)

T = TypeVar("T")
Classify = Callable[[BaseException], ConnectorError | None]
Sleep = Callable[[float], Awaitable[None]]

RETRY_AFTER_HEADERS = ("retry-after-ms", "x-ms-retry-after-ms", "retry-after")
REQUEST_ID_HEADERS = ("request-id", "x-ms-request-id", "x-ms-correlation-request-id")


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often one call may be tried."""

    max_attempts: int = 4
    wait_initial: float = 0.5
    wait_max: float = 30.0
    deadline: float = 120.0
    # Query sources turn this off: the same heavy query after a timeout times
    # out again; they re-run it over a narrower window instead (B18).
    retry_timeouts: bool = True

    @classmethod
    def from_settings(cls, settings: RetrySettings, *, retry_timeouts: bool = True) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            wait_initial=settings.wait_initial,
            wait_max=settings.wait_max,
            deadline=settings.deadline,
            retry_timeouts=retry_timeouts,
        )

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: between half and all of the step."""
        step = min(self.wait_max, self.wait_initial * float(2 ** (attempt - 1)))
        return step * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class _Decision:
    retry: bool
    wait: float = 0.0
    # Why the call stops here, for the final error's message.
    reason: str = ""


async def call_with_retries(
    operation: Callable[[], Awaitable[T]],
    *,
    service: str,
    name: str,
    classify: Classify,
    policy: RetryPolicy,
    subjects: Sequence[str] = (),
    on_attempt: AttemptListener | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run *operation* until it succeeds or the policy says stop.

    Raises the translated :class:`~playbooks.errors.ConnectorError` of the last
    attempt, its message saying how many attempts were made and why it stopped.
    """
    report = on_attempt or report_attempt
    started = clock()
    decisions: dict[int, _Decision] = {}

    retrying = AsyncRetrying(
        retry=_RetryIf(decisions),
        stop=_StopUnless(decisions),
        wait=_WaitAsDecided(decisions),
        sleep=sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            number = attempt.retry_state.attempt_number
            attempt_started = clock()
            try:
                result = await operation()
            except BaseException as failure:
                error = classify(failure)
                if error is None:
                    raise
                decision = _decide(error, number, policy, elapsed=clock() - started)
                decisions[number] = decision
                report(
                    _attempt(
                        error,
                        service=service,
                        name=name,
                        subjects=subjects,
                        number=number,
                        decision=decision,
                        elapsed=clock() - attempt_started,
                    )
                )
                if decision.retry:
                    logger.info(
                        "%s %s attempt %d failed (%s); retrying in %.2f s",
                        service,
                        name,
                        number,
                        _short(error),
                        decision.wait,
                    )
                    raise error from failure
                raise _final(error, number, decision.reason) from failure
            report(
                CallAttempt(
                    service=service,
                    operation=name,
                    subjects=tuple(subjects),
                    number=number,
                    outcome="succeeded",
                    elapsed_ms=_ms(clock() - attempt_started),
                )
            )
            return result
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover


K = TypeVar("K")


@dataclass(frozen=True)
class Settled:
    """How one of :func:`call_each_with_retries`'s keys ended."""

    # The call's result, or its final ConnectorError.
    value: Any
    attempts: int
    # From the first attempt to the answer that settled it.
    elapsed_ms: int

    @property
    def error(self) -> ConnectorError | None:
        return self.value if isinstance(self.value, ConnectorError) else None


async def call_each_with_retries(
    keys: Sequence[K],
    send: Callable[[Sequence[K]], Awaitable[Mapping[K, Any]]],
    *,
    service: str,
    name: Callable[[K], str],
    subjects: Callable[[K], Sequence[str]],
    policy: RetryPolicy,
    on_settled: Callable[[Mapping[K, Settled]], None] | None = None,
    on_attempt: AttemptListener | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[K, Settled]:
    """Send *keys* in rounds until each succeeds or the policy stops it.

    For calls that travel together but succeed or fail one by one (the
    sub-requests of a Graph ``$batch``): *send* answers every key it is given
    with a result or a :class:`~playbooks.errors.ConnectorError` (a failure
    of the whole request is each key's failure). The rules of
    :func:`call_with_retries` apply to each key on its own: 400/401/403/404
    stop at once; throttled and transient keys go again, together, after the
    longest wait any of them asked for (their own ``Retry-After``, else the
    backoff); each key's attempts and the call's deadline are bounded; every
    attempt is reported. *on_settled* hears each round's finished keys as
    soon as the round ends.
    """
    report = on_attempt or report_attempt
    started = clock()
    attempts: dict[K, int] = {}
    results: dict[K, Settled] = {}
    pending = list(keys)
    while pending:
        round_started = clock()
        answers = await send(pending)
        elapsed = clock() - round_started
        again: list[K] = []
        waits: list[float] = []
        finished: dict[K, Settled] = {}
        for key in pending:
            number = attempts[key] = attempts.get(key, 0) + 1
            answer = answers[key]
            so_far = _ms(clock() - started)
            if not isinstance(answer, ConnectorError):
                finished[key] = Settled(answer, number, so_far)
                report(
                    CallAttempt(
                        service=service,
                        operation=name(key),
                        subjects=tuple(subjects(key)),
                        number=number,
                        outcome="succeeded",
                        elapsed_ms=_ms(elapsed),
                    )
                )
                continue
            decision = _decide(answer, number, policy, elapsed=clock() - started)
            report(
                _attempt(
                    answer,
                    service=service,
                    name=name(key),
                    subjects=subjects(key),
                    number=number,
                    decision=decision,
                    elapsed=elapsed,
                )
            )
            if decision.retry:
                again.append(key)
                waits.append(decision.wait)
            else:
                finished[key] = Settled(_final(answer, number, decision.reason), number, so_far)
        results.update(finished)
        if on_settled is not None and finished:
            on_settled(finished)
        if again:
            logger.info(
                "%s: %d of %d calls throttled or failing; retrying them in %.2f s",
                service,
                len(again),
                len(pending),
                max(waits),
            )
            await sleep(max(waits))
        pending = again
    return results


def _decide(
    error: ConnectorError, number: int, policy: RetryPolicy, *, elapsed: float
) -> _Decision:
    if not error.retryable:
        return _Decision(retry=False, reason="")
    if isinstance(error, TimedOut) and not policy.retry_timeouts:
        return _Decision(retry=False, reason="timeouts are not retried as they stand")
    if error.retry_after is not None and error.retry_after > policy.wait_max:
        return _Decision(
            retry=False,
            reason=(
                f"the service asked to wait {error.retry_after:g} s, longer than "
                f"retry.wait_max ({policy.wait_max:g} s)"
            ),
        )
    if number >= policy.max_attempts:
        return _Decision(retry=False, reason=f"retry.max_attempts ({policy.max_attempts}) reached")
    if error.retry_after is not None and error.retry_after > 0:
        wait = error.retry_after
    else:
        wait = policy.backoff(number)
    if elapsed + wait > policy.deadline:
        return _Decision(
            retry=False,
            reason=f"the next wait would pass retry.deadline ({policy.deadline:g} s)",
        )
    return _Decision(retry=True, wait=wait)


class _RetryIf(retry_base):
    def __init__(self, decisions: dict[int, _Decision]) -> None:
        self._decisions = decisions

    def __call__(self, retry_state: RetryCallState) -> bool:
        decision = self._decisions.get(retry_state.attempt_number)
        return decision is not None and decision.retry


class _StopUnless(stop_base):
    def __init__(self, decisions: dict[int, _Decision]) -> None:
        self._decisions = decisions

    def __call__(self, retry_state: RetryCallState) -> bool:
        decision = self._decisions.get(retry_state.attempt_number)
        return decision is None or not decision.retry


class _WaitAsDecided(wait_base):
    def __init__(self, decisions: dict[int, _Decision]) -> None:
        self._decisions = decisions

    def __call__(self, retry_state: RetryCallState) -> float:
        decision = self._decisions.get(retry_state.attempt_number)
        return decision.wait if decision is not None else 0.0


def _attempt(
    error: ConnectorError,
    *,
    service: str,
    name: str,
    subjects: Sequence[str],
    number: int,
    decision: _Decision,
    elapsed: float,
) -> CallAttempt:
    return CallAttempt(
        service=service,
        operation=name,
        subjects=tuple(subjects),
        number=number,
        outcome="retrying" if decision.retry else "failed",
        elapsed_ms=_ms(elapsed),
        status=error.status,
        code=error.code,
        error_class=error.error_class,
        message=_short(error),
        request_id=error.request_id,
        retry_after=error.retry_after,
        wait=round(decision.wait, 3) if decision.retry else None,
    )


def _final(error: ConnectorError, attempts: int, reason: str) -> ConnectorError:
    """The last error, saying how often it was tried and why tokenward stopped."""
    if attempts == 1 and not reason:
        return error
    tried = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    text = f"{error} (after {tried}; {reason})" if reason else f"{error} (after {tried})"
    final = type(error)(
        text,
        status=error.status,
        code=error.code,
        request_id=error.request_id,
        client_request_id=error.client_request_id,
        retry_after=error.retry_after,
        service_message=error.service_message,
        service_date=error.service_date,
    )
    return final


# -- Retry-After ------------------------------------------------------------------


def retry_after_seconds(
    headers: Mapping[str, Any] | None, *, now: datetime | None = None
) -> float | None:
    """What a response's ``Retry-After`` (or ``retry-after-ms``) asks for, in seconds.

    Accepts delta-seconds as an integer or a decimal (``0.249``) and HTTP
    dates; returns ``None`` when the header is missing or unreadable, so the
    caller backs off on its own.
    """
    if not headers:
        return None
    lowered = {str(key).lower(): value for key, value in headers.items()}
    for name in RETRY_AFTER_HEADERS:
        raw = lowered.get(name)
        if raw is None:
            continue
        value = str(raw).strip()
        seconds = _seconds(value)
        if seconds is None and name == "retry-after":
            seconds = _http_date_delay(value, now=now)
        if seconds is None:
            continue
        return seconds / 1000 if name.endswith("-ms") else seconds
    return None


def _seconds(value: str) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        return None
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        return None
    return seconds


def _http_date_delay(value: str, *, now: datetime | None) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    moment = now or datetime.now(UTC)
    return max(0.0, (when - moment).total_seconds())


def header(headers: Mapping[str, Any] | None, *names: str) -> str | None:
    """The first of *names* present in *headers*, case-insensitively."""
    if not headers:
        return None
    lowered = {str(key).lower(): value for key, value in headers.items()}
    for name in names:
        value = lowered.get(name.lower())
        if value:
            return str(value)
    return None


# -- vendor errors to tokenward errors -------------------------------------------


def error_for_status(
    status: int | None,
    message: str,
    *,
    code: str | None = None,
    request_id: str | None = None,
    client_request_id: str | None = None,
    retry_after: float | None = None,
    service_message: str | None = None,
    service_date: str | None = None,
) -> ConnectorError:
    """The tokenward error class for an HTTP status (and a service error code)."""
    kind: type[ConnectorError]
    lowered = (code or "").lower()
    if status == 400:
        kind = BadRequest
    elif status == 401:
        kind = AuthenticationFailed
    elif status == 403:
        kind = PermissionDenied
    elif status == 404:
        kind = NotFound
    elif status == 429:
        kind = Throttled
    elif status == 504 or "gatewaytimeout" in lowered:
        kind = TimedOut
    elif status is not None and status >= 500:
        kind = ServiceUnavailable
    elif status is not None and 400 <= status < 500:
        kind = BadRequest
    else:
        kind = ServiceUnavailable
    return kind(
        message,
        status=status,
        code=code,
        request_id=request_id,
        client_request_id=client_request_id,
        retry_after=retry_after,
        service_message=service_message,
        service_date=service_date,
    )


def graph_error(failure: BaseException, *, what: str) -> ConnectorError | None:
    """A Graph (kiota) failure as a tokenward error; ``None`` if it is not one.

    Reads what B14 asks the audit to keep: the status, ``error.code`` and
    message, the request and client request ids (from the body's innerError
    or the headers) and Retry-After.
    """
    if isinstance(failure, ConnectorError):
        return failure
    if isinstance(failure, APIError):
        status = failure.response_status_code
        headers = failure.response_headers or {}
        odata = getattr(failure, "error", None)
        code = getattr(odata, "code", None)
        message = getattr(odata, "message", None)
        inner = getattr(odata, "inner_error", None)
        request_id = getattr(inner, "request_id", None) or header(headers, *REQUEST_ID_HEADERS)
        client_request_id = getattr(inner, "client_request_id", None) or header(
            headers, "client-request-id"
        )
        if odata is None and status is not None and status >= 500:
            detail = "an error page that is not Graph JSON (a gateway or proxy answered)"
        else:
            detail = message or "no message"
        label = f"{status} {code}" if code else f"{status}"
        return error_for_status(
            status,
            f"Microsoft Graph refused {what} ({label}: {detail})",
            code=code,
            request_id=request_id,
            client_request_id=client_request_id,
            retry_after=retry_after_seconds(headers),
        )
    return transport_error(failure, service="Microsoft Graph", what=what)


def graph_answer_error(
    status: int, headers: Mapping[str, Any] | None, body: Any, *, what: str
) -> ConnectorError | None:
    """A Graph answer read as data (a ``$batch`` sub-response, or a response
    taken whole) as a tokenward error; ``None`` for a 2xx.

    The same fields as :func:`graph_error` reads from an ``ODataError``: the
    status, ``error.code`` and message, the request and client request ids
    from ``innerError`` or the headers, and ``Retry-After``.
    """
    if 200 <= status < 300:
        return None
    error = body.get("error") if isinstance(body, Mapping) else None
    code = message = request_id = client_request_id = date = None
    if isinstance(error, Mapping):
        code = error.get("code")
        message = error.get("message")
        inner = error.get("innerError") or error.get("innererror") or {}
        if isinstance(inner, Mapping):
            request_id = inner.get("request-id") or inner.get("requestId")
            client_request_id = inner.get("client-request-id") or inner.get("clientRequestId")
            date = inner.get("date")
    request_id = request_id or header(headers, *REQUEST_ID_HEADERS)
    client_request_id = client_request_id or header(headers, "client-request-id")
    if error is None and status >= 500:
        detail = "an error page that is not Graph JSON (a gateway or proxy answered)"
    else:
        detail = str(message) if message else "no message"
    label = f"{status} {code}" if code else f"{status}"
    return error_for_status(
        status,
        f"Microsoft Graph refused {what} ({label}: {detail})",
        code=str(code) if code else None,
        request_id=str(request_id) if request_id else None,
        client_request_id=str(client_request_id) if client_request_id else None,
        retry_after=retry_after_seconds(headers),
        service_message=str(message) if message else None,
        service_date=str(date) if date else None,
    )


def azure_error(failure: BaseException, *, service: str, what: str) -> ConnectorError | None:
    """An azure-core failure (HttpResponseError, transport, credential) as a tokenward error."""
    if isinstance(failure, ConnectorError):
        return failure
    if isinstance(failure, ClientAuthenticationError) and failure.response is None:
        # The credential could not get a token: no request reached the service.
        return AuthenticationFailed(f"no token for {service}: {_first_line(failure)}")
    if isinstance(failure, HttpResponseError) and failure.response is not None:
        response: Any = failure.response
        headers = dict(response.headers)
        code, message = _azure_code(failure)
        label = f"{failure.status_code} {code}" if code else f"{failure.status_code}"
        return error_for_status(
            failure.status_code,
            f"{service} refused {what} ({label}: {message})",
            code=code,
            request_id=header(headers, *REQUEST_ID_HEADERS),
            client_request_id=header(headers, "x-ms-client-request-id", "client-request-id"),
            retry_after=retry_after_seconds(headers),
        )
    return transport_error(failure, service=service, what=what)


def transport_error(failure: BaseException, *, service: str, what: str) -> ConnectorError | None:
    """A connection or timeout failure from any of the HTTP stacks, or ``None``."""
    if isinstance(failure, ServiceRequestTimeoutError | ServiceResponseTimeoutError):
        return TimedOut(f"{service} did not answer {what} in time ({_first_line(failure)})")
    if isinstance(failure, httpx.TimeoutException | asyncio.TimeoutError | TimeoutError):
        return TimedOut(f"{service} did not answer {what} in time ({type(failure).__name__})")
    if isinstance(failure, ServiceRequestError | ServiceResponseError | httpx.TransportError):
        return ServiceUnavailable(
            f"{service} could not be reached for {what} ({_first_line(failure)})"
        )
    if isinstance(failure, json.JSONDecodeError):
        return ServiceUnavailable(
            f"{service} answered {what} with something that is not JSON "
            "(an HTML error page from a gateway or proxy)"
        )
    if isinstance(failure, AzureError):
        return ServiceUnavailable(f"{service} failed {what} ({_first_line(failure)})")
    return None


def _azure_code(failure: HttpResponseError) -> tuple[str | None, str]:
    """The service's error code and innermost message, from the model or the body."""
    model = failure.model
    code = (
        getattr(model, "code", None) if model is not None and not isinstance(model, type) else None
    )
    message = getattr(model, "message", None) if code else None
    if code is None and failure.error is not None:
        code = failure.error.code
        message = failure.error.message
    if code is None:
        response: Any = failure.response
        try:
            body = response.json() if response is not None else None
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = error.get("code")
            message = _innermost_message(error)
    if message is None:
        message = "no message" if code else "the body is not a service error (a gateway page?)"
    return code, str(message)


def _innermost_message(error: Mapping[str, Any]) -> str | None:
    message = error.get("message")
    inner = error.get("innererror") or error.get("innerError")
    while isinstance(inner, Mapping):
        message = inner.get("message") or message
        inner = inner.get("innererror") or inner.get("innerError")
    return str(message) if message is not None else None


def _first_line(failure: BaseException) -> str:
    text = str(failure).strip().splitlines()
    return text[0][:300] if text else type(failure).__name__


def _short(error: ConnectorError) -> str:
    text = str(error)
    return text if len(text) <= 300 else text[:297] + "..."


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


__all__ = [
    "Classify",
    "RetryPolicy",
    "azure_error",
    "Settled",
    "call_each_with_retries",
    "call_with_retries",
    "error_for_status",
    "graph_answer_error",
    "graph_error",
    "header",
    "retry_after_seconds",
    "transport_error",
]
