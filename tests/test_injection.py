"""KQL injection: a value from an incident or a log row is one literal, whatever it holds.

Incident identities are refused by shape before they reach a query; anything
that does reach one (users of a hunt, the hunt's own rows handed to another
service) is quoted by the helpers, and the local engine proves the rendered
query matches exactly the row holding that value and nothing more.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb_kql
import pytest

from playbooks.actions import revoke_sessions
from playbooks.errors import IdentityError
from playbooks.identities import require_guid, require_ip, require_upn
from playbooks.kql import HitsTable, kql_string
from playbooks.models import Target
from playbooks.playbook import load_playbook
from playbooks.rows import sign_in_from_row
from tests.test_kql_literals import HOSTILE

AT = datetime(2026, 1, 15, 9, 24, 58, tzinfo=UTC)
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)

HOSTILE_IDENTITIES = HOSTILE + [
    'alice@contoso.com" or UserPrincipalName != "',
    "alice@contoso.com\n| union SigninLogs",
    "alice@contoso.com // ",
    'bob@contoso.com"] | extend x = dynamic(["',
    '185.220.101.47" or 1==1 or "',
    "10.0.0.1 | take 100",
    "::1\n",
    "ａｌｉｃｅ@contoso.com",
    "alice@contoso.com\u200b",
]


def sign_in(upn: str, *, ip: str = "198.51.100.7", display: str = "Alice") -> dict[str, Any]:
    return {
        "TimeGenerated": AT.isoformat(),
        "Id": f"id-{abs(hash(upn))}",
        "UserPrincipalName": upn,
        "UserDisplayName": display,
        "UserId": "aaaaaaaa-0000-4000-8000-000000000001",
        "AuthenticationProtocol": "deviceCode",
        "ResultType": "0",
        "IPAddress": ip,
    }


# Legitimate shapes that look odd: an apostrophe is allowed in a UPN, and an
# address is returned in canonical form (the newline never goes further).
ACCEPTED = {
    ("o'brien@contoso.com", "require_upn"): "o'brien@contoso.com",
    ("::1\n", "require_ip"): "::1",
}


@pytest.mark.parametrize("value", HOSTILE_IDENTITIES)
def test_a_hostile_identity_is_refused_by_shape_before_any_query(value: str) -> None:
    for check in (require_upn, require_guid, require_ip):
        expected = ACCEPTED.get((value, check.__name__))
        if expected is not None:
            assert check(value) == expected
            continue
        with pytest.raises(IdentityError):
            check(value)


@pytest.mark.parametrize("value", [v for v in HOSTILE_IDENTITIES if "\x00" not in v])
def test_a_hostile_user_in_the_hunt_is_one_literal_and_matches_only_itself(
    value: str, load_tables: Any
) -> None:
    playbook = load_playbook()
    con = load_tables(
        {
            "SigninLogs": [
                sign_in("alice@contoso.com"),
                sign_in("bob@contoso.com", ip="203.0.113.9"),
                sign_in(value, display=value, ip="192.0.2.1"),
            ]
        }
    )

    text = playbook.render(
        "hunt",
        {"start": NOW - timedelta(hours=12), "end": NOW, "users": [value.lower()]},
    )

    literal = kql_string(value.lower())
    # In the list three times: the "no users" test, the UPN test, the object id test.
    assert text.count(literal) == 3
    assert text.count(f"dynamic([{literal}])") == 3
    rows = duckdb_kql.kql(con, text, allow_write=False, query_now=NOW).fetchall()
    columns = duckdb_kql.kql(con, text, allow_write=False, query_now=NOW).columns
    found = [dict(zip(columns, row, strict=True))["UserPrincipalName"] for row in rows]
    # The hostile row matches when the value is exactly its own UPN, and no other row ever does.
    assert set(found) <= {value}
    assert "alice@contoso.com" not in found or value.lower() == "alice@contoso.com"


@pytest.mark.parametrize("value", [v for v in HOSTILE_IDENTITIES if "\x00" not in v])
def test_hostile_cells_in_the_hunts_rows_stay_one_cell_each_in_the_datatable(value: str) -> None:
    hits = HitsTable(
        [
            {
                "Id": value,
                "TimeGenerated": AT,
                "UserPrincipalName": value,
                "UserId": value,
                "IPAddress": value,
            },
            {
                "Id": "si-2",
                "TimeGenerated": AT,
                "UserPrincipalName": "bob@contoso.com",
                "IPAddress": "203.0.113.9",
            },
        ]
    )
    query = f"let hits = {hits.render()};\nhits | project Id, UserPrincipalName, UserId, IPAddress, SessionId"

    rows = duckdb_kql.kql(duckdb_kql.connect(), query, allow_write=False).fetchall()

    assert rows == [
        (value, value, value, value, ""),
        ("si-2", "bob@contoso.com", "", "203.0.113.9", ""),
    ]


def test_a_correlation_given_hostile_hits_returns_no_rows_beyond_its_matches(
    load_tables: Any,
) -> None:
    playbook = load_playbook()
    hostile = '" or 1==1 or "'
    con = load_tables(
        {
            "UrlClickEvents": [
                {
                    "Timestamp": (AT - timedelta(minutes=3)).isoformat(),
                    "AccountUpn": "alice@contoso.com",
                    "Url": "https://a.example",
                    "ActionType": "ClickAllowed",
                    "ReportId": "r1",
                },
                {
                    "Timestamp": (AT - timedelta(minutes=2)).isoformat(),
                    "AccountUpn": "carol@contoso.com",
                    "Url": "https://c.example",
                    "ActionType": "ClickAllowed",
                    "ReportId": "r2",
                },
            ]
        }
    )
    hits = HitsTable(
        [{"Id": "si-1", "TimeGenerated": AT, "UserPrincipalName": hostile + "alice@contoso.com"}]
    )
    text = playbook.render_with_hits(
        "url_clicks",
        {
            "start": NOW - timedelta(hours=12),
            "end": NOW,
            "before": timedelta(hours=1),
            "after": timedelta(minutes=5),
        },
        hits,
    )

    assert duckdb_kql.kql(con, text, allow_write=False, query_now=NOW).fetchall() == []


@pytest.mark.parametrize("value", ["nul\x00byte", "bell\x07", "line\u2028separator"])
def test_control_characters_in_a_hit_are_refused_not_passed_on(value: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        HitsTable([{"Id": "si-1", "TimeGenerated": AT, "UserPrincipalName": value}])


@pytest.mark.parametrize(
    "value", ["../../../groups/abc?x=1#", "me", "aaaaaaaa-0000-4000-8000", *HOSTILE]
)
def test_a_user_id_from_the_logs_that_is_no_object_id_never_reaches_a_graph_path(
    value: str,
) -> None:
    sign_in = sign_in_from_row(
        {
            "TimeGenerated": "2026-01-15T09:00:00Z",
            "Id": "row-1",
            "UserPrincipalName": "pat.lee_fabrikam.com#EXT#@contoso.onmicrosoft.com",
            "UserId": value,
            "AuthenticationProtocol": "deviceCode",
        }
    )

    assert sign_in is not None
    assert sign_in.user_id == ""
    target = Target(user_principal_name=sign_in.user_principal_name, user_id=sign_in.user_id)
    assert revoke_sessions(target).path == (
        "/users/pat.lee_fabrikam.com%23EXT%23@contoso.onmicrosoft.com/revokeSignInSessions"
    )
