"""Live hunts through the real SDKs against the emulator: round trips, wire contract, results.

The emulator runs the rendered KQL over the same rows in Log Analytics and in
advanced hunting, so every mode must reach the same findings; what differs is
only where each query went and how many requests it took.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from playbooks.audit import AuditLog
from playbooks.models import RunStatus, Tier
from playbooks.store import open_store
from tests.emulator import WORKSPACE_ID
from tests.emulator.identity import claims_of
from tests.live import TOR_EXIT, live_settings, phished_tenant, run_live

MIXED = {"tables": {"EmailEvents": "defender", "UrlClickEvents": "defender"}}


def requests_by_kind(emu: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for request in emu.requests():
        if request.path.endswith("/oauth2/v2.0/token"):
            kind = "token " + request.form()["scope"]
        elif request.path == "/v1/$batch":
            kind = "log analytics $batch"
        elif "runHuntingQuery" in request.path:
            kind = "graph runHuntingQuery"
        else:
            kind = f"{request.method} {request.path}"
        counts[kind] = counts.get(kind, 0) + 1
    return counts


# The whole cost of one hunt of a phished tenant, whatever its size.
EXPECTED = {
    "log_analytics": {
        "token https://api.loganalytics.io/.default": 1,
        # hunt + url_clicks + emails + baseline + threat_intel; then follow-on.
        "log analytics $batch": 2,
    },
    "defender": {
        "token https://graph.microsoft.com/.default": 1,
        # five queries of the hunt step, two of the follow-on step.
        "graph runHuntingQuery": 7,
    },
    "live": {
        "token https://api.loganalytics.io/.default": 1,
        "token https://graph.microsoft.com/.default": 1,
        # hunt step: hunt + baseline + threat_intel; follow-on step.
        "log analytics $batch": 2,
        # correlate step: url_clicks and emails, given the hits as a datatable.
        "graph runHuntingQuery": 2,
    },
}


@pytest.mark.parametrize("mode", ["log_analytics", "defender", "live"])
@pytest.mark.parametrize("users", [1, 10, 500])
def test_a_hunt_costs_the_same_requests_for_one_ten_or_five_hundred_users(
    emu: Any, mode: str, users: int
) -> None:
    audit_log = AuditLog(open_store("sqlite://"))
    emu.log_analytics.workspace.load(phished_tenant(users, history=3))
    # 500 users' queries take the emulator seconds on a busy machine: a read
    # timeout it cannot reach, for a retried request would be a round trip more.
    settings = live_settings(
        emu, sources=MIXED, guardrails={"max_users_per_run": 1000}, azure={"read_timeout": 120}
    )

    done = run_live(emu, audit_log, mode=mode, settings=settings)

    assert done.report.status is RunStatus.COMPLETE, done.report.error
    assert len(done.report.findings) == users
    assert {f.tier for f in done.report.findings} == {Tier.HIGH}
    assert requests_by_kind(emu) == EXPECTED[mode]


def test_the_batch_carries_the_exact_rendered_kql_its_window_and_the_server_timeout(
    emu: Any, audit_log: Any
) -> None:
    emu.log_analytics.workspace.load(phished_tenant(1))

    done = run_live(emu, audit_log)

    first, follow_on = emu.requests(r"^/v1/\$batch$")
    sent = first.json()["requests"]
    hunt_step = [q for q in done.report.queries if q.phase == "hunt"]
    assert [item["body"]["query"] for item in sent] == [q.text for q in hunt_step]
    assert [q.name for q in hunt_step] == [
        "hunt",
        "url_clicks",
        "emails",
        "baseline",
        "threat_intel",
    ]
    assert {item["workspace"] for item in sent} == {WORKSPACE_ID}
    assert {item["headers"]["Prefer"] for item in sent} == {"wait=4"}
    by_name = {q.name: item["body"]["timespan"] for q, item in zip(hunt_step, sent, strict=True)}
    # The hunt reads the window; the baseline reads 30 days before it as well.
    assert by_name["hunt"] == "2026-01-15T00:00:00.000Z/2026-01-15T12:00:00.000Z"
    assert by_name["baseline"] == "2025-12-16T00:00:00.000Z/2026-01-15T12:00:00.000Z"
    assert by_name["url_clicks"] == "2026-01-14T23:00:00.000Z/2026-01-15T12:05:00.000Z"
    # Each correlation embeds the hunt's exact text.
    for query in hunt_step[1:]:
        assert "let hits = " + hunt_step[0].text.strip() in query.text
    assert [item["body"]["query"] for item in follow_on.json()["requests"]] == [
        q.text for q in done.report.queries if q.phase == "follow_on"
    ]


def test_tokens_are_asked_for_with_production_scopes_and_sent_only_for_their_audience(
    emu: Any, audit_log: Any
) -> None:
    emu.log_analytics.workspace.load(phished_tenant(1))

    run_live(emu, audit_log, mode="live", settings=live_settings(emu, sources=MIXED))

    scopes = sorted(r.form()["scope"] for r in emu.requests(r"/oauth2/v2\.0/token$"))
    assert scopes == [
        "https://api.loganalytics.io/.default",
        "https://graph.microsoft.com/.default",
    ]
    for request in emu.requests(r"^/v1/\$batch$"):
        assert claims_of(request.authorization)["aud"] == "https://api.loganalytics.io"  # type: ignore[index]
    for request in emu.requests("runHuntingQuery"):
        assert claims_of(request.authorization)["aud"] == "https://graph.microsoft.com"  # type: ignore[index]


def test_queries_in_defender_get_the_hunts_rows_as_a_datatable_not_its_text(
    emu: Any, audit_log: Any
) -> None:
    emu.log_analytics.workspace.load(phished_tenant(3))

    done = run_live(emu, audit_log, mode="live", settings=live_settings(emu, sources=MIXED))

    bodies = {r.json()["query"].splitlines()[0]: r.json() for r in emu.requests("runHuntingQuery")}
    assert len(bodies) == 2
    for body in bodies.values():
        assert (
            "let hits = datatable(Id:string, TimeGenerated:datetime, UserPrincipalName:string"
            in body["query"]
        )
        # The hunt is not in it (it reads both sign-in tables; Defender has neither).
        assert "AADNonInteractiveUserSignInLogs" not in body["query"]
        assert body["timespan"].startswith("P")
    correlate = [q for q in done.report.queries if q.phase == "correlate"]
    assert [q.name for q in correlate] == ["url_clicks", "emails"]
    assert all("Defender" in q.source for q in correlate)
    # Three users' hits went in: their sign-in ids are in the literal.
    hunt_ids = {sign_in.id for f in done.report.findings for sign_in in f.sign_ins}
    assert all(f'"{hit}"' in correlate[0].text for hit in hunt_ids)


def test_every_mode_reaches_the_same_findings_as_the_local_engine(
    emu: Any, audit_log: Any, tmp_path: Any
) -> None:
    emu.log_analytics.workspace.load(phished_tenant(2))
    settings = live_settings(emu, sources=MIXED)

    seen = {}
    for mode in ("log_analytics", "defender", "live"):
        done = run_live(emu, audit_log, mode=mode, settings=settings)
        seen[mode] = [
            (
                f.user_principal_name,
                f.score,
                tuple(r.signal for r in f.reasons),
                len(f.evidence.url_clicks),
                len(f.evidence.emails),
            )
            for f in done.report.findings
        ]
    assert seen["log_analytics"] == seen["defender"] == seen["live"]
    assert "threat_intel_ip" in seen["live"][0][2]


def test_the_follow_on_step_reports_what_the_stolen_token_touched(emu: Any, audit_log: Any) -> None:
    emu.log_analytics.workspace.load(phished_tenant(1))

    done = run_live(emu, audit_log)

    (finding,) = done.report.findings
    activity = finding.follow_on
    assert activity is not None and activity.complete
    assert activity.touched == ("mail", "files", "directory")
    mail = activity.graph_activity[0]
    assert (mail.requests, mail.methods, mail.ip_addresses) == (2, ("GET",), (TOR_EXIT,))
    assert activity.session is not None and activity.session.sign_ins == 1
    assert activity.session.countries == ("NL",)
    (record,) = done.records("finding.follow_on")
    assert record.data["touched"] == ["mail", "files", "directory"]


def test_threat_intelligence_in_the_workspace_fires_the_signal(emu: Any, audit_log: Any) -> None:
    emu.log_analytics.workspace.load(phished_tenant(1))

    done = run_live(emu, audit_log)

    (reason,) = [r for r in done.report.findings[0].reasons if r.signal == "threat_intel_ip"]
    assert reason.detail == f"{TOR_EXIT} is in the workspace's threat-intelligence table"


def test_every_attempt_is_in_the_audit_of_its_run(emu: Any, audit_log: Any) -> None:
    emu.log_analytics.workspace.load(phished_tenant(1))
    emu.fault(path=r"^/v1/\$batch$", status=503, times=1)

    done = run_live(emu, audit_log)

    assert done.report.status is RunStatus.COMPLETE
    attempts = [r.data for r in done.records("call.attempt")]
    assert [(a["operation"], a["number"], a["outcome"], a.get("status")) for a in attempts] == [
        ("query_batch", 1, "retrying", 503),
        ("query_batch", 2, "succeeded", None),
        ("query_batch", 1, "succeeded", None),
    ]
    assert attempts[0]["subjects"] == ["hunt", "url_clicks", "emails", "baseline", "threat_intel"]
    assert {r.run_id for r in done.records("call.attempt")} == {done.report.run_id}
    assert json.dumps([r.data for r in done.audit.records()]).count("eyJ") == 0


def test_follow_on_and_threat_intelligence_also_work_over_exported_files(
    load_tables: Any, audit_log: Any
) -> None:
    import asyncio
    from datetime import timedelta

    from connectors.exports.local import LocalKqlSource
    from playbooks.engine import Runner, RunRequest
    from playbooks.models import Mode, Window
    from playbooks.playbook import load_playbook
    from playbooks.settings import Settings
    from tests.live import NOW

    con = load_tables(phished_tenant(1))
    source = LocalKqlSource(con, now=NOW, origin="exports")
    request = RunRequest(
        trigger="test",
        mode=Mode.DRY_RUN,
        window=Window(start=NOW - timedelta(hours=12), end=NOW),
        now=NOW,
    )

    report = asyncio.run(Runner(load_playbook(), Settings(), source, audit_log).run(request))

    (finding,) = report.findings
    assert "threat_intel_ip" in {r.signal for r in finding.reasons}
    assert finding.follow_on is not None and finding.follow_on.touched == (
        "mail",
        "files",
        "directory",
    )
    assert finding.follow_on.session is not None and finding.follow_on.session.sign_ins == 1


def test_no_token_or_secret_reaches_a_log_line_or_an_audit_record(
    emu: Any, audit_log: Any, caplog: Any
) -> None:
    import logging

    from tests.emulator import ENVIRON

    emu.log_analytics.workspace.load(phished_tenant(1))
    emu.fault(path=r"^/v1/\$batch$", status=429, headers={"Retry-After": "0.01"}, times=1)
    caplog.set_level(logging.DEBUG)

    done = run_live(emu, audit_log, mode="live", settings=live_settings(emu, sources=MIXED))

    issued = [r.authorization.split(" ", 1)[1] for r in emu.requests() if r.authorization]
    assert issued
    logged = "\n".join(record.getMessage() for record in caplog.records)
    audited = json.dumps([record.data for record in done.audit.records()])
    for secret in [ENVIRON["TOKENWARD_CLIENT_SECRET"], *issued]:
        assert secret not in logged
        assert secret not in audited
