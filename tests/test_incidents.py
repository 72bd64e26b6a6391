"""A Sentinel incident to a scope: accounts in every shape, IPs, the window."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from playbooks.errors import InputError
from playbooks.incidents import Confidence, resolve_account, scope_from_incident
from tests.conftest import CORPUS, requires_corpus

FIXTURE = Path(__file__).parent / "fixtures" / "sentinel-incident-trigger.json"
NOW = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)


def trigger() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def test_the_trigger_body_gives_the_incident_accounts_ips_and_widened_window() -> None:
    scope = scope_from_incident(trigger(), now=NOW)
    assert scope.incident.number == 1207
    assert scope.incident.resource_id.endswith("/Incidents/4b1e6f0a-2d3c-4e5f-8a9b-0c1d2e3f4a5b")
    assert scope.event == "Create"
    (account,) = scope.accounts
    assert (account.user_id, account.user_principal_name) == (
        "6f1a7a3e-1c2b-4d8e-9a41-3b7c2d9e0f11",
        "target.user@contoso.com",
    )
    assert account.confidence is Confidence.HIGH
    assert scope.ip_addresses == ("185.220.101.47",)
    assert scope.unresolved == (
        "account 'svc-backup' has no Entra object id or UPN (on-premises only, or not mapped)",
    )
    assert scope.window.start == datetime(2026, 1, 15, 7, 21, 58, tzinfo=UTC)
    assert scope.window.end == datetime(2026, 1, 15, 9, 54, 58, tzinfo=UTC)
    assert scope.users == ("6f1a7a3e-1c2b-4d8e-9a41-3b7c2d9e0f11", "target.user@contoso.com")


def test_the_bare_incident_resource_is_accepted_too() -> None:
    bare = trigger()["object"]
    assert (
        scope_from_incident(bare, now=NOW).accounts[0].user_principal_name
        == "target.user@contoso.com"
    )


@requires_corpus()
def test_the_published_incident_example_is_a_scope_with_no_accounts() -> None:
    example = json.loads(
        (
            CORPUS / "azure-rest-api-specs-securityinsights-2024-09-01" / "GetIncidentById.json"
        ).read_text()
    )
    scope = scope_from_incident(example, now=NOW)
    assert scope.incident.number == 3177
    assert scope.accounts == () and scope.users == ()


# Field case B06: the same person in five entity shapes.
@pytest.mark.parametrize(
    ("props", "user_id", "upn", "confidence"),
    [
        (
            {"aadUserId": "aaaaaaaa-0000-4000-8000-000000000002"},
            "aaaaaaaa-0000-4000-8000-000000000002",
            "",
            Confidence.HIGH,
        ),
        (
            {"UserPrincipalName": "Megan.Bowen@contoso.com"},
            "",
            "Megan.Bowen@contoso.com",
            Confidence.HIGH,
        ),
        (
            {"accountName": "megan.bowen", "upnSuffix": "contoso.com"},
            "",
            "megan.bowen@contoso.com",
            Confidence.HIGH,
        ),
        (
            {"Name": "megan.bowen", "UPNSuffix": "contoso.com"},
            "",
            "megan.bowen@contoso.com",
            Confidence.HIGH,
        ),
        ({"fullName": "megan.bowen@contoso.com"}, "", "megan.bowen@contoso.com", Confidence.LOW),
    ],
)
def test_account_entities_resolve_in_the_order_the_field_learnt(
    props: dict[str, str], user_id: str, upn: str, confidence: Confidence
) -> None:
    account = resolve_account({key.lower(): value for key, value in props.items()})
    assert not isinstance(account, str)
    assert (account.user_id, account.user_principal_name, account.confidence) == (
        user_id,
        upn,
        confidence,
    )


def test_an_account_with_a_name_only_is_unresolvable_with_a_reason() -> None:
    assert resolve_account({"accountname": "megan.bowen"}) == (
        "account 'megan.bowen' has no Entra object id or UPN (on-premises only, or not mapped)"
    )


@pytest.mark.parametrize(
    "hostile",
    [
        'x" or 1==1 or "@contoso.com',
        "a@b.com\n| take 1000",
        "megan@contoso.com//",
        'evil@"x".com',
        "ünï@contoso.com",
    ],
)
def test_a_hostile_name_is_refused_by_its_shape_and_never_reaches_the_hunt(hostile: str) -> None:
    payload = trigger()
    payload["object"]["properties"]["relatedEntities"] = [
        {"kind": "Account", "properties": {"userPrincipalName": hostile}}
    ]
    scope = scope_from_incident(payload, now=NOW)
    assert scope.accounts == () and scope.users == ()
    assert len(scope.unresolved) == 1


def test_a_hostile_object_id_is_refused_and_the_upn_is_used() -> None:
    account = resolve_account(
        {"aaduserid": "' or 1 -- ", "userprincipalname": "megan.bowen@contoso.com"}
    )
    assert not isinstance(account, str) and account.user_id == ""


def test_a_bad_ip_entity_is_reported_not_passed_on() -> None:
    payload = trigger()
    payload["object"]["properties"]["relatedEntities"].append(
        {"kind": "Ip", "properties": {"address": "1.2.3.4 | take 5"}}
    )
    scope = scope_from_incident(payload, now=NOW)
    assert scope.ip_addresses == ("185.220.101.47",)
    assert any("is not an IP address" in item for item in scope.unresolved)


def test_entities_inside_alerts_count_too_and_duplicates_collapse() -> None:
    payload = trigger()
    alert_entities = [
        {
            "Type": "account",
            "AadUserId": "6f1a7a3e-1c2b-4d8e-9a41-3b7c2d9e0f11",
            "Name": "target.user",
            "UPNSuffix": "contoso.com",
        }
    ]
    payload["object"]["properties"]["alerts"] = [
        {"properties": {"entities": json.dumps(alert_entities)}}
    ]
    assert len(scope_from_incident(payload, now=NOW).accounts) == 1


def test_a_payload_without_an_incident_is_refused_by_what_is_missing() -> None:
    with pytest.raises(InputError, match="holds no incident"):
        scope_from_incident({"hello": "world"}, now=NOW)
    alert = trigger() | {"objectSchemaType": "Alert"}
    with pytest.raises(InputError, match="carries a Alert, not an incident"):
        scope_from_incident(alert, now=NOW)
    broken = trigger()
    broken["object"]["id"] = "/subscriptions/x/../../etc"
    with pytest.raises(InputError, match="no valid resource id"):
        scope_from_incident(broken, now=NOW)


def test_the_fingerprint_changes_only_with_accounts_ips_or_window() -> None:
    first = scope_from_incident(trigger(), now=NOW)
    renamed = trigger()
    renamed["object"]["properties"]["title"] = "renamed"
    renamed["object"]["etag"] = '"new"'
    assert scope_from_incident(renamed, now=NOW).fingerprint == first.fingerprint
    wider = trigger()
    wider["object"]["properties"]["firstActivityTimeUtc"] = "2026-01-15T08:00:00Z"
    assert scope_from_incident(wider, now=NOW).fingerprint != first.fingerprint


def test_without_activity_times_the_window_reaches_back_a_day() -> None:
    payload = trigger()
    for key in ("firstActivityTimeUtc", "lastActivityTimeUtc", "createdTimeUtc"):
        payload["object"]["properties"].pop(key)
    scope = scope_from_incident(payload, now=NOW)
    assert scope.window.end == NOW
    assert NOW - scope.window.start == timedelta(hours=26)


def test_a_redelivery_later_has_the_same_fingerprint_though_its_window_ends_later() -> None:
    # Fresh incident: the widened window still reaches past "now" and is cut there.
    early = scope_from_incident(trigger(), now=datetime(2026, 1, 15, 9, 41, tzinfo=UTC))
    later = scope_from_incident(trigger(), now=datetime(2026, 1, 15, 9, 47, tzinfo=UTC))
    assert early.window.end != later.window.end
    assert early.fingerprint == later.fingerprint


def test_the_incident_key_ignores_case_and_names_the_workspace() -> None:
    scope = scope_from_incident(trigger(), now=NOW)
    assert scope.incident_key == scope.incident.resource_id.lower()
    assert scope.workspace_resource_id.endswith("/workspaces/law-soc")


@pytest.mark.parametrize(
    "bad_id",
    [
        "/subscriptions/5f2c3b7e-0000-4000-8000-000000000001/resourceGroups/rg soc/providers/Microsoft.OperationalInsights/workspaces/law-soc/providers/Microsoft.SecurityInsights/Incidents/x",
        "/subscriptions/5f2c3b7e-0000-4000-8000-000000000001/resourceGroups/rg-soc/providers/Microsoft.OperationalInsights/workspaces/law-soc?x=1/providers/Microsoft.SecurityInsights/Incidents/x",
        "/subscriptions/not-a-guid/resourceGroups/rg-soc/providers/Microsoft.OperationalInsights/workspaces/law-soc/providers/Microsoft.SecurityInsights/Incidents/x",
    ],
    ids=["space", "query", "subscription"],
)
def test_a_resource_id_that_is_not_safe_as_a_url_path_is_refused(bad_id: str) -> None:
    payload = trigger()
    payload["object"]["id"] = bad_id
    with pytest.raises(InputError, match="no valid resource id"):
        scope_from_incident(payload, now=NOW)


@pytest.mark.parametrize(
    ("props", "user_id", "upn", "confidence"),
    [
        (
            {
                "externalDirectoryObjectId": "AAAAAAAA-0000-4000-8000-000000000002",
                "upn": "megan.bowen@contoso.com",
            },
            "aaaaaaaa-0000-4000-8000-000000000002",
            "megan.bowen@contoso.com",
            Confidence.HIGH,
        ),
        ({"upn": "megan.bowen@contoso.com"}, "", "megan.bowen@contoso.com", Confidence.HIGH),
        ({"mailboxPrimaryAddress": "megan@contoso.com"}, "", "megan@contoso.com", Confidence.LOW),
    ],
    ids=["object-id", "upn", "address-only"],
)
def test_a_mailbox_entity_names_the_phished_recipient(
    props: dict[str, str], user_id: str, upn: str, confidence: Confidence
) -> None:
    payload = trigger()
    payload["object"]["properties"]["relatedEntities"] = [{"kind": "Mailbox", "properties": props}]
    (account,) = scope_from_incident(payload, now=NOW).accounts
    assert (account.user_id, account.user_principal_name, account.confidence) == (
        user_id,
        upn,
        confidence,
    )


def test_an_entity_kind_sentinel_does_not_document_is_ignored_with_a_warning() -> None:
    payload = trigger()
    payload["object"]["properties"]["relatedEntities"].append(
        {"kind": "Spaceship", "properties": {}}
    )
    scope = scope_from_incident(payload, now=NOW)
    assert scope.accounts[0].user_principal_name == "target.user@contoso.com"
    assert scope.warnings == ("entity kind 'spaceship' is not one tokenward knows; ignored",)


def test_an_incident_whose_activity_spans_decades_is_hunted_over_its_last_30_days() -> None:
    body = trigger()
    body["object"]["properties"]["firstActivityTimeUtc"] = "1900-01-01T00:00:00Z"
    scope = scope_from_incident(body, now=NOW)
    assert scope.window.end - scope.window.start == timedelta(days=30)
    assert scope.window.end == datetime(2026, 1, 15, 9, 54, 58, tzinfo=UTC)
    assert any("activity spans" in w and "covers its last 30 days" in w for w in scope.warnings), (
        scope.warnings
    )


def test_an_incident_whose_last_activity_is_before_its_first_is_hunted_around_the_first() -> None:
    body = trigger()
    properties = body["object"]["properties"]
    properties["lastActivityTimeUtc"] = "2026-01-01T00:00:00Z"
    scope = scope_from_incident(body, now=NOW)
    first = datetime.fromisoformat(properties["firstActivityTimeUtc"].replace("Z", "+00:00"))
    assert scope.window.start < first < scope.window.end
    assert "the incident's last activity is before its first" in " ".join(scope.warnings)
