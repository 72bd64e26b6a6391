"""Bad input gets a 4xx that says what is wrong, and nothing is stored or half-run.

Every case is sent by an authenticated sender (a wrong body from Sentinel
itself must be fixable from the answer) and, last, a valid delivery shows the
service went on working.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.service import Service, incident, running_service


@pytest.fixture(scope="module")
def service(emulator: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    emulator.reset()
    with running_service(emulator, tmp_path_factory.mktemp("bad-input")) as running:
        yield running


def with_properties(**changes: Any) -> dict[str, Any]:
    return incident(**changes)


def without_title() -> dict[str, Any]:
    body = incident()
    del body["object"]["properties"]["title"]
    return body


def entity(**fields: Any) -> dict[str, Any]:
    return incident(relatedEntities=[fields])


def nested(depth: int) -> bytes:
    return b'{"object": ' + b"[" * depth + b"]" * depth + b"}"


BAD_BODIES: dict[str, tuple[bytes, int, str]] = {
    "not-json": (b"{not json", 400, "the body is not JSON: Expecting property name"),
    "truncated": (json.dumps(incident()).encode()[:-10], 400, "the body is not JSON"),
    "empty": (b"", 400, "the body is not JSON"),
    "not-utf8": (b'{"a": "\xff\xfe"}', 400, "the body is not UTF-8"),
    "duplicate-keys": (b'{"object": {}, "object": {}}', 400, "repeats the key 'object'"),
    "nan": (b'{"object": NaN}', 400, "uses NaN, which is not JSON"),
    "nul-character": (
        json.dumps(with_properties(title="a\u0000b")).encode(),
        400,
        "holds a NUL character",
    ),
    "lone-surrogate": (json.dumps(with_properties(title="\ud800")).encode(), 400, "lone surrogate"),
    "too-deep": (nested(100), 400, "nests deeper than 32 levels"),
    "recursion-bomb": (nested(200_000)[:500_000], 400, "the body is not JSON"),
    "deep-enough-to-overflow": (
        nested(200_000),
        400,
        "the body is not JSON tokenward can read: it nests deeper than 32 levels",
    ),
    "huge-number": (
        b'{"object": ' + b"9" * 5000 + b"}",
        400,
        "the body is not JSON tokenward can read: it holds a number too long to be one",
    ),
    "a-list": (b"[1, 2]", 422, "the body is a JSON array, not a JSON object"),
    "a-string": (b'"incident"', 422, "the body is a JSON string, not a JSON object"),
    "null": (b"null", 422, "the body is JSON null, not a JSON object"),
    "no-incident": (b'{"hello": "world"}', 422, "the body holds no incident"),
    "an-alert": (
        json.dumps({**incident(), "objectSchemaType": "Alert"}).encode(),
        422,
        "objectSchemaType",
    ),
    "null-title": (
        json.dumps(with_properties(title=None)).encode(),
        422,
        "object.properties.title has the wrong type",
    ),
    "missing-title": (
        json.dumps(without_title()).encode(),
        422,
        "object.properties.title is missing",
    ),
    "missing-properties": (
        json.dumps({"object": {"id": incident()["object"]["id"]}}).encode(),
        422,
        "object.properties is missing",
    ),
    "number-as-text": (
        json.dumps(with_properties(incidentNumber="1207")).encode(),
        422,
        "object.properties.incidentNumber has the wrong type",
    ),
    "entities-not-a-list": (
        json.dumps(with_properties(relatedEntities={"kind": "Account"})).encode(),
        422,
        "object.properties.relatedEntities has the wrong type",
    ),
    "entity-without-kind": (
        json.dumps(entity(properties={"aadUserId": "x"})).encode(),
        422,
        "relatedEntities[0].kind is missing",
    ),
    "entity-kind-not-text": (
        json.dumps(entity(kind=7, properties={})).encode(),
        422,
        "relatedEntities[0].kind has the wrong type",
    ),
    "entity-kind-hostile": (
        json.dumps(entity(kind="Account' or 1==1", properties={})).encode(),
        422,
        "relatedEntities[0].kind is not an entity kind",
    ),
    "entity-properties-not-an-object": (
        json.dumps(entity(kind="Account", properties="megan")).encode(),
        422,
        "relatedEntities[0].properties has the wrong type",
    ),
    "bad-time": (
        json.dumps(with_properties(firstActivityTimeUtc="yesterday")).encode(),
        422,
        "firstActivityTimeUtc is not a timestamp",
    ),
    "hostile-resource-id": (
        json.dumps(
            {
                **incident(),
                "object": {**incident()["object"], "id": "/subscriptions/../../etc/passwd"},
            }
        ).encode(),
        422,
        "the incident has no valid resource id",
    ),
    "resource-id-with-query": (
        json.dumps(
            {
                **incident(),
                "object": {
                    **incident()["object"],
                    "id": incident()["object"]["id"] + "?api-version=evil",
                },
            }
        ).encode(),
        422,
        "the incident has no valid resource id",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BODIES), ids=list(BAD_BODIES))
def test_every_bad_body_gets_a_4xx_that_says_what_is_wrong_and_nothing_is_stored(
    service: Service, emu: Any, case: str
) -> None:
    raw, status, message = BAD_BODIES[case]
    before = service.parts.inbox.counts()

    answer = service.post(None, raw=raw)

    assert answer.status_code == status, answer.text
    assert message in answer.json()["message"]
    assert not re.search(r"[A-Z][a-z]+Error\b|\b(list|dict|str|NoneType)\b", answer.text), (
        "the sender is told in JSON's words, not Python's"
    )
    assert service.parts.inbox.counts() == before
    assert emu.requests(r"^/subscriptions") == []


def test_an_oversized_body_is_refused_before_it_is_read(service: Service) -> None:
    limit = service.parts.settings.webhook.max_body_bytes
    answer = service.post(None, raw=b"{" + b" " * limit + b"}")
    assert answer.status_code == 413
    assert answer.json() == {
        "error": "too_large",
        "message": "the body is larger than tokenward accepts",
    }


def test_an_oversized_body_without_a_length_is_cut_off_while_streaming(service: Service) -> None:
    limit = service.parts.settings.webhook.max_body_bytes

    def chunks() -> Iterator[bytes]:
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    with service.client() as client:
        answer = client.post(
            "/webhooks/sentinel",
            content=chunks(),
            headers={
                "Authorization": f"Bearer {service.token()}",
                "Content-Type": "application/json",
            },
        )
    assert answer.status_code == 413


def test_a_body_that_is_not_json_by_its_content_type_is_refused(service: Service) -> None:
    answer = service.post(incident(), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 415 and answer.json()["error"] == "unsupported_media_type"


def test_hostile_strings_in_names_are_kept_out_of_the_hunt_but_the_incident_is_still_reported(
    service: Service, emu: Any
) -> None:
    body = incident(
        title="<script>alert(1)</script>",
        relatedEntities=[
            {"kind": "Account", "properties": {"userPrincipalName": 'x" or 1==1 or "@contoso.com'}},
            {"kind": "Ip", "properties": {"address": "1.2.3.4 | take 5"}},
        ],
    )
    answer = service.post(body)
    assert answer.status_code == 202
    service.wait_done(answer.json()["delivery_id"])
    assert emu.sentinel.comments_of(body["object"]["id"]) == {}, "the service runs in dry-run"
    (message,) = service.would_be_comments(body)
    assert "no account in this incident could be resolved" in message
    assert "hunts again" not in message, "an incident with no account is never re-hunted"
    assert "<script>" not in message and 'x" or 1==1' not in message


def test_an_unknown_entity_kind_is_ignored_with_a_warning_not_a_lost_incident(
    service: Service, emu: Any
) -> None:
    body = incident()
    body["object"]["properties"]["relatedEntities"].append(
        {"kind": "Spaceship", "properties": {"name": "x"}}
    )
    answer = service.post(body)
    assert answer.status_code == 202
    service.wait_done(answer.json()["delivery_id"])
    (message,) = service.would_be_comments(body)
    assert "entity kind &#x27;spaceship&#x27; is not one tokenward knows; ignored" in message


def test_after_all_of_it_a_valid_delivery_is_still_accepted_and_run(service: Service) -> None:
    answer = service.post(incident())
    assert answer.status_code == 202
    assert service.wait_done(answer.json()["delivery_id"])["status"] == "done"
