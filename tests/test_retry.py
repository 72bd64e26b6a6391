"""The one retry layer: which failures are retried, how long it waits, when it stops.

Each rule runs a real azure-core client (the Resource Manager client from the
factory) against the emulator, and counts the requests the emulator saw.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.core.rest import HttpRequest

from connectors.clients import Clients
from connectors.credentials import build_credential
from connectors.retry import RetryPolicy, azure_error, call_with_retries, retry_after_seconds
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
from playbooks.ports import CallAttempt, listening_for_attempts
from playbooks.settings import settings_from_dict
from tests.emulator import ENVIRON, abandoning_requests, settings_data

SUBSCRIPTION = "/subscriptions/00000000-0000-4000-8000-00000000aaaa"


class RecordingSleep:
    """Waits as asked for tiny waits, and only records long ones."""

    def __init__(self, real_up_to: float = 0.3) -> None:
        self.waits: list[float] = []
        self.real_up_to = real_up_to

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if seconds <= self.real_up_to:
            await asyncio.sleep(seconds)


def get_subscription(
    emu: Any,
    *,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    **azure: Any,
) -> tuple[Any, list[CallAttempt], float]:
    """GET a subscription through the factory's ARM client and the retry layer."""
    settings = settings_from_dict(
        settings_data(emu, azure=azure, log_analytics={"server_timeout": 1}), environ=ENVIRON
    )
    attempts: list[CallAttempt] = []

    async def run() -> Any:
        async with Clients(settings.azure, build_credential(settings.azure)) as clients:
            arm = clients.arm()

            async def call() -> Any:
                request = HttpRequest(
                    "GET", arm.format_url(SUBSCRIPTION), params={"api-version": "2022-12-01"}
                )
                response = await arm.send_request(request)
                response.raise_for_status()
                return response.json()

            with listening_for_attempts(attempts.append):
                return await call_with_retries(
                    call,
                    service="arm",
                    name="get subscription",
                    classify=lambda failure: azure_error(
                        failure, service="Resource Manager", what="get subscription"
                    ),
                    policy=policy or RetryPolicy(wait_initial=0.01, wait_max=30, deadline=120),
                    sleep=sleep,
                )

    started = time.monotonic()
    try:
        result: Any = asyncio.run(run())
    except ConnectorError as failure:
        result = failure
    return result, attempts, time.monotonic() - started


def calls(emu: Any) -> int:
    return len(emu.requests(r"^/subscriptions/", method="GET"))


# -- Retry-After as services send it ---------------------------------------------


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "0.249"}, 0.249),
        ({"Retry-After": " 2 "}, 2.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"x-ms-retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"Retry-After": "Wed, 15 Jan 2026 09:00:30 GMT"}, 30.0),
        ({"Retry-After": "Wed, 15 Jan 2026 08:59:00 GMT"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-3"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_is_read_as_seconds_decimals_milliseconds_or_a_date(
    headers: Any, seconds: float | None
) -> None:
    now = datetime(2026, 1, 15, 9, 0, 0, tzinfo=UTC)
    assert retry_after_seconds(headers, now=now) == seconds


# -- B08: the field case, exactly ---------------------------------------------------


def test_a_retry_after_above_wait_max_stops_the_call_as_throttled_with_the_value_recorded(
    emu: Any,
) -> None:
    emu.fault(path="^/subscriptions/", status=429, headers={"Retry-After": "0.249"})
    emu.fault(path="^/subscriptions/", status=429)
    emu.fault(path="^/subscriptions/", status=429, headers={"Retry-After": "3600"})
    sleep = RecordingSleep()

    result, attempts, elapsed = get_subscription(emu, sleep=sleep)

    assert isinstance(result, Throttled)
    assert result.retry_after == 3600
    assert "asked to wait 3600 s, longer than retry.wait_max (30 s)" in str(result)
    assert "after 3 attempts" in str(result)
    # The 200 that would come next is never asked for.
    assert calls(emu) == 3
    assert [a.outcome for a in attempts] == ["retrying", "retrying", "failed"]
    assert [a.status for a in attempts] == [429, 429, 429]
    assert [a.retry_after for a in attempts] == [0.249, None, 3600]
    # First wait: what the service asked; second: exponential backoff for the
    # second retry (wait_initial 0.01 s doubled, then jittered down by up to half).
    assert sleep.waits[0] == 0.249
    assert 0.01 <= sleep.waits[1] <= 0.02
    assert len(sleep.waits) == 2
    # Bounded: the hour asked for is never waited (the waits above say so);
    # the wall clock only has to stay far below it, even on a busy machine.
    assert elapsed < 30


def test_the_same_sequence_with_a_short_retry_after_reaches_the_200_after_three_retries(
    emu: Any,
) -> None:
    emu.fault(path="^/subscriptions/", status=429, headers={"Retry-After": "0.249"})
    emu.fault(path="^/subscriptions/", status=429)
    emu.fault(path="^/subscriptions/", status=429, headers={"Retry-After": "2"})
    sleep = RecordingSleep()

    result, attempts, _ = get_subscription(emu, sleep=sleep)

    assert result["state"] == "Enabled"
    assert calls(emu) == 4
    assert [a.outcome for a in attempts] == ["retrying", "retrying", "retrying", "succeeded"]
    assert sleep.waits[0] == 0.249 and sleep.waits[2] == 2.0


def test_the_sdk_does_not_retry_behind_tokenwards_back(emu: Any) -> None:
    emu.fault(path="^/subscriptions/", status=503, headers={"Retry-After": "0"}, times=None)

    result, attempts, _ = get_subscription(
        emu, policy=RetryPolicy(max_attempts=2, wait_initial=0.01)
    )

    assert isinstance(result, ServiceUnavailable)
    # Two attempts by tokenward's count, two requests on the wire: no hidden retries.
    assert len(attempts) == calls(emu) == 2
    assert "retry.max_attempts (2) reached" in str(result)


# -- what is retried, what is not ------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, BadRequest), (401, AuthenticationFailed), (403, PermissionDenied), (404, NotFound)],
)
def test_client_errors_are_never_retried(
    emu: Any, status: int, error: type[ConnectorError]
) -> None:
    emu.fault(
        path="^/subscriptions/",
        status=status,
        headers={"x-ms-request-id": "rid-7", "Retry-After": "1"},
        body={"error": {"code": f"Code{status}", "message": "refused"}},
    )

    result, attempts, _ = get_subscription(emu)

    assert type(result) is error
    assert calls(emu) == 1
    assert (result.status, result.code, result.request_id) == (status, f"Code{status}", "rid-7")
    assert [(a.outcome, a.error_class) for a in attempts] == [("failed", error("").error_class)]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried_with_backoff_until_they_clear(emu: Any, status: int) -> None:
    emu.fault(path="^/subscriptions/", status=status, times=2)

    result, attempts, elapsed = get_subscription(emu)

    assert result["state"] == "Enabled"
    assert calls(emu) == 3
    assert [a.wait is not None and 0.005 <= a.wait <= 0.04 for a in attempts[:2]] == [True, True]
    assert elapsed < 30


def test_an_html_gateway_page_is_a_service_fault_not_a_parse_error(emu: Any) -> None:
    emu.fault(
        path="^/subscriptions/",
        status=502,
        body="<html><body><h1>502 Bad Gateway</h1></body></html>",
        times=None,
    )

    result, attempts, _ = get_subscription(
        emu, policy=RetryPolicy(max_attempts=3, wait_initial=0.01)
    )

    assert isinstance(result, ServiceUnavailable)
    assert result.status == 502
    assert calls(emu) == 3
    assert "not a service error (a gateway page?)" in str(result)


def test_no_attempt_starts_once_the_next_wait_would_pass_the_deadline(emu: Any) -> None:
    emu.fault(path="^/subscriptions/", status=429, headers={"Retry-After": "60"}, times=None)
    sleep = RecordingSleep()

    result, attempts, elapsed = get_subscription(
        emu, policy=RetryPolicy(wait_max=90, deadline=30), sleep=sleep
    )

    assert isinstance(result, Throttled)
    assert calls(emu) == 1
    assert "the next wait would pass retry.deadline (30 s)" in str(result)
    # It gives up at once rather than waiting towards the deadline.
    assert sleep.waits == []
    assert elapsed < 30


def test_a_slow_answer_times_out_and_is_retried_only_where_the_policy_allows(emu: Any) -> None:
    emu.fault(path="^/subscriptions/", delay=2, times=None)

    with abandoning_requests():
        result, attempts, elapsed = get_subscription(
            emu,
            policy=RetryPolicy(max_attempts=3, wait_initial=0.01, retry_timeouts=False),
            read_timeout=1.1,
        )

    assert isinstance(result, TimedOut)
    assert calls(emu) == 1
    assert "timeouts are not retried as they stand" in str(result)
    # The read timeout (1.1 s) ended the attempt, not the answer 2 s later.
    assert attempts[0].elapsed_ms < 1900
    assert elapsed < 30

    emu.reset()
    emu.fault(path="^/subscriptions/", delay=2, times=1)
    with abandoning_requests():
        result, attempts, _ = get_subscription(
            emu, policy=RetryPolicy(max_attempts=3, wait_initial=0.01), read_timeout=1.1
        )
    assert result["state"] == "Enabled"
    assert [a.error_class for a in attempts] == ["timeout", None]


def test_an_unreachable_service_is_retried_then_reported_as_unavailable(emu: Any) -> None:
    result, attempts, _ = get_subscription(
        emu,
        policy=RetryPolicy(max_attempts=2, wait_initial=0.01),
        arm_endpoint="https://127.0.0.1:9",
    )

    assert isinstance(result, ServiceUnavailable)
    assert "could not be reached" in str(result)
    assert len(attempts) == 2


def test_a_programming_error_is_not_swallowed_as_a_service_fault() -> None:
    async def broken() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        asyncio.run(
            call_with_retries(
                broken,
                service="arm",
                name="x",
                policy=RetryPolicy(),
                classify=lambda failure: azure_error(failure, service="ARM", what="x"),
            )
        )
