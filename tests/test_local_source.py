"""The local engine evaluates a query embedded in later ones once, with the same answer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from connectors.exports.local import LocalKqlSource
from playbooks.models import Window
from playbooks.playbook import load_playbook
from playbooks.ports import RenderedQuery
from tests import export_shapes as shapes
from tests.conftest import load_directory

START = datetime(2026, 1, 15, tzinfo=UTC)
END = START + timedelta(days=1)


def rendered() -> list[RenderedQuery]:
    playbook = load_playbook()
    texts = playbook.render_all(
        {
            "start": START,
            "end": END,
            "users": [],
            "before": timedelta(minutes=60),
            "after": timedelta(minutes=5),
            "days": timedelta(days=30),
            "lookback": timedelta(days=30),
        }
    )
    window = Window(start=START, end=END)
    return [
        RenderedQuery(name=name, tables=(), text=text, window=window)
        for name, text in texts.items()
    ]


def test_a_batch_reuses_the_hunt_and_answers_as_each_query_alone(
    tmp_path: Path,
) -> None:
    shapes.log_analytics_json(
        tmp_path,
        "SigninLogs",
        [
            {
                "TimeGenerated": "2026-01-15T09:24:58Z",
                "Id": "s1",
                "UserPrincipalName": "A@contoso.com",
                "AuthenticationProtocol": "deviceCode",
            },
            {
                "TimeGenerated": "2026-01-14T09:00:00Z",
                "Id": "s0",
                "UserPrincipalName": "a@contoso.com",
                "AuthenticationProtocol": "none",
            },
        ],
    )
    shapes.log_analytics_json(
        tmp_path,
        "UrlClickEvents",
        [
            {
                "Timestamp": "2026-01-15T09:20:00Z",
                "AccountUpn": "a@CONTOSO.com",
                "Url": "https://x.example/",
                "ReportId": "r1",
            }
        ],
    )
    con, _ = load_directory(tmp_path)
    source = LocalKqlSource(con, now=END, origin="test")
    queries = rendered()

    together = asyncio.run(source.run_queries(queries))
    alone = [asyncio.run(source.run_queries([query]))[0] for query in queries]

    assert [outcome.rows for outcome in together] == [outcome.rows for outcome in alone]
    assert [len(outcome.rows) for outcome in together] == [1, 1, 0, 1, 0]
    assert [bool(outcome.details) for outcome in together] == [False, True, True, True, True]
    leftovers = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE 'tokenward_reused_%'"
    ).fetchone()
    assert leftovers == (0,)


def test_instants_come_back_aware_in_utc_whatever_the_column_is_called(tmp_path: Path) -> None:
    shapes.log_analytics_json(
        tmp_path,
        "SigninLogs",
        [
            {"TimeGenerated": "2026-01-15T09:24:58.1234567Z", "Id": "s1"},
            {"TimeGenerated": "1969-12-31T23:59:59Z", "Id": "s0"},
        ],
    )
    con, _ = load_directory(tmp_path)
    source = LocalKqlSource(con, now=END, origin="test")
    query = RenderedQuery(
        name="instants",
        tables=(),
        text="SigninLogs | project Id, ['Signed \"in\" at'] = TimeGenerated, "
        "Later = TimeGenerated + 1h, ['*'] = iff(false, TimeGenerated, datetime(null)) "
        "| order by Id asc",
        window=Window(start=START, end=END),
    )

    (outcome,) = asyncio.run(source.run_queries([query]))

    assert outcome.error is None
    assert [row["Id"] for row in outcome.rows] == ["s0", "s1"]
    assert [row['Signed "in" at'] for row in outcome.rows] == [
        datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2026, 1, 15, 9, 24, 58, 123456, tzinfo=UTC),
    ]
    assert outcome.rows[1]["Later"] == datetime(2026, 1, 15, 10, 24, 58, 123456, tzinfo=UTC)
    assert all(row["Later"].utcoffset() == timedelta(0) for row in outcome.rows)
    assert [row["*"] for row in outcome.rows] == [None, None]


def test_instants_are_read_in_utc_whatever_the_session_time_zone() -> None:
    import duckdb_kql

    from connectors.exports.local import _fetch_rows

    con = duckdb_kql.connect(":memory:")
    con.execute("SET TimeZone = 'America/New_York'")
    relation = con.sql(
        "SELECT TIMESTAMPTZ '2026-01-15 09:24:58.5+00' AS \"*\", 1 AS n, "
        "CAST(NULL AS TIMESTAMPTZ) AS never"
    )

    assert _fetch_rows(relation) == [
        {"*": datetime(2026, 1, 15, 9, 24, 58, 500000, tzinfo=UTC), "n": 1, "never": None}
    ]
