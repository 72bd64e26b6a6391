"""Write-back to Sentinel: one comment per id however often it is sent, labels under the etag."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from connectors.clients import Clients
from connectors.credentials import build_credential
from connectors.retry import RetryPolicy
from connectors.sentinel import SentinelIncidents
from playbooks.errors import BadRequest, NotFound, ServiceUnavailable
from playbooks.ports import IncidentWrite
from playbooks.settings import settings_from_dict
from tests.emulator import ENVIRON, settings_data
from tests.emulator.identity import claims_of

FIXTURE = Path(__file__).parent / "fixtures" / "sentinel-incident-trigger.json"
INCIDENT = json.loads(FIXTURE.read_text())["object"]
INCIDENT_ID = INCIDENT["id"]
COMMENT_ID = "0f6b7a52-3c1d-5e8f-9a0b-1c2d3e4f5a6b"
T = TypeVar("T")


def with_writer(emu: Any, use: Callable[[SentinelIncidents], Awaitable[T]], **retry: Any) -> T:
    settings = settings_from_dict(settings_data(emu, retry=retry), environ=ENVIRON)

    async def run() -> T:
        async with Clients(settings.azure, build_credential(settings.azure)) as clients:
            writer = SentinelIncidents(
                clients.arm(),
                api_version=settings.sentinel.api_version,
                policy=RetryPolicy.from_settings(settings.retry),
            )
            return await use(writer)

    return asyncio.run(run())


def comment(
    message: str = "tokenward: 1 finding",
) -> Callable[[SentinelIncidents], Awaitable[IncidentWrite]]:
    async def write(writer: SentinelIncidents) -> IncidentWrite:
        return await writer.comment(incident_id=INCIDENT_ID, comment_id=COMMENT_ID, message=message)

    return write


def labels(*names: str) -> Callable[[SentinelIncidents], Awaitable[IncidentWrite]]:
    async def write(writer: SentinelIncidents) -> IncidentWrite:
        return await writer.label(incident_id=INCIDENT_ID, labels=names)

    return write


def test_a_comment_is_a_put_by_a_fixed_id_so_sending_it_twice_leaves_one_comment(emu: Any) -> None:
    emu.sentinel.add(INCIDENT)

    first = with_writer(emu, comment("first"))
    again = with_writer(emu, comment("second"))

    assert (first.http_status, first.created) == (201, True)
    assert (again.http_status, again.created) == (200, False)
    (only,) = emu.sentinel.comments_of(INCIDENT_ID).values()
    assert only["properties"]["message"] == "second"
    puts = emu.requests(r"/comments/", method="PUT")
    assert [r.path.rsplit("/", 1)[-1] for r in puts] == [COMMENT_ID, COMMENT_ID]
    assert all(r.query == "api-version=2025-09-01" for r in puts)
    assert claims_of(puts[0].authorization)["aud"] == "https://management.azure.com"  # type: ignore[index]


def test_a_throttled_comment_is_retried_by_the_one_retry_layer(emu: Any) -> None:
    emu.sentinel.add(INCIDENT)
    emu.fault(method="PUT", path=r"/comments/", status=429, headers={"Retry-After": "0.01"})

    written = with_writer(emu, comment())

    assert (written.http_status, written.attempts) == (201, 2)
    assert len(emu.sentinel.comments_of(INCIDENT_ID)) == 1


def test_a_comment_on_an_incident_that_does_not_exist_is_not_found(emu: Any) -> None:
    with pytest.raises(
        NotFound,
        match=r"Microsoft Sentinel refused the comment on incident 4b1e6f0a-.* \(404 NotFound",
    ):
        with_writer(emu, comment())


def test_labels_are_set_under_the_etag_and_others_labels_are_kept(emu: Any) -> None:
    seeded = dict(
        INCIDENT,
        properties={
            **INCIDENT["properties"],
            "labels": [
                {"labelName": "vip", "labelType": "User"},
                {"labelName": "tokenward:needs-approval", "labelType": "User"},
            ],
        },
    )
    emu.sentinel.add(seeded)

    written = with_writer(emu, labels("tokenward:contained"))

    assert written.detail == "labels set: tokenward:contained"
    stored = emu.sentinel.incident(INCIDENT_ID)["properties"]
    assert [label["labelName"] for label in stored["labels"]] == ["vip", "tokenward:contained"]
    assert stored["title"] == INCIDENT["properties"]["title"]
    (put,) = emu.requests(r"(?i)/incidents/[^/]+$", method="PUT")
    assert set(put.json()["properties"]) <= {
        "title",
        "description",
        "severity",
        "status",
        "classification",
        "classificationReason",
        "classificationComment",
        "owner",
        "labels",
        "firstActivityTimeUtc",
        "lastActivityTimeUtc",
        "providerName",
        "providerIncidentId",
    }
    assert "incidentNumber" not in put.json()["properties"]


def test_labels_already_set_are_not_written_again(emu: Any) -> None:
    emu.sentinel.add(
        dict(
            INCIDENT,
            properties={
                **INCIDENT["properties"],
                "labels": [{"labelName": "tokenward:contained", "labelType": "User"}],
            },
        )
    )

    written = with_writer(emu, labels("tokenward:contained"))

    assert written.detail == "labels already set"
    assert emu.requests(r"(?i)/incidents/[^/]+$", method="PUT") == []


def test_a_change_between_read_and_write_is_refused_with_412_and_labelling_reads_again(
    emu: Any,
) -> None:
    emu.sentinel.add(INCIDENT)
    # An analyst changes the incident just after tokenward read it: the first
    # PUT carries a stale etag.
    emu.fault(
        method="PUT",
        path=r"(?i)/incidents/[^/]+$",
        status=412,
        body={"error": {"code": "PreconditionFailed", "message": "etag"}},
    )

    written = with_writer(emu, labels("tokenward:needs-approval"))

    assert written.http_status == 200
    assert [r.method for r in emu.requests(r"(?i)/incidents/[^/]+$")] == [
        "GET",
        "PUT",
        "GET",
        "PUT",
    ]
    assert [
        label["labelName"] for label in emu.sentinel.incident(INCIDENT_ID)["properties"]["labels"]
    ] == ["tokenward:needs-approval"]


def test_an_incident_that_keeps_changing_is_given_up_on_with_a_reason(emu: Any) -> None:
    emu.sentinel.add(INCIDENT)
    emu.fault(method="PUT", path=r"(?i)/incidents/[^/]+$", status=412, times=None)

    with pytest.raises(ServiceUnavailable, match="changed 5 times while tokenward labelled it"):
        with_writer(emu, labels("tokenward:contained"))


def test_the_stale_etag_is_really_refused_by_the_emulated_service(emu: Any) -> None:
    emu.sentinel.add(INCIDENT)

    async def stale(writer: SentinelIncidents) -> IncidentWrite:
        # Read, let an analyst change the incident, then write: a real conflict.
        original = writer._send
        calls = {"n": 0}

        async def send(method: str, path: str, body: Any = None, **kw: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 2:
                emu.sentinel.touch(INCIDENT_ID, status="Active")
            return await original(method, path, body, **kw)

        writer._send = send  # type: ignore[method-assign]
        return await writer.label(incident_id=INCIDENT_ID, labels=["tokenward:contained"])

    written = with_writer(emu, stale)

    assert written.http_status == 200
    statuses = [r.method for r in emu.requests(r"(?i)/incidents/[^/]+$")]
    assert statuses == ["GET", "PUT", "GET", "PUT"]
    assert emu.sentinel.incident(INCIDENT_ID)["properties"]["status"] == "Active"


@pytest.mark.parametrize(
    ("incident_id", "comment_id", "reason"),
    [
        (INCIDENT_ID + "/../../x", COMMENT_ID, "is not a Sentinel incident resource id"),
        ("https://evil.example/x", COMMENT_ID, "is not a Sentinel incident resource id"),
        (INCIDENT_ID, "../comments", "is not a GUID"),
    ],
)
def test_ids_that_are_not_safe_in_a_url_never_leave_tokenward(
    emu: Any, incident_id: str, comment_id: str, reason: str
) -> None:
    async def write(writer: SentinelIncidents) -> IncidentWrite:
        return await writer.comment(incident_id=incident_id, comment_id=comment_id, message="x")

    with pytest.raises(BadRequest, match=reason):
        with_writer(emu, write)
    assert emu.requests(r"^/subscriptions") == []


def test_labels_outside_tokenwards_prefix_are_refused(emu: Any) -> None:
    with pytest.raises(BadRequest, match="do not start with 'tokenward:'"):
        with_writer(emu, labels("severity:low"))
