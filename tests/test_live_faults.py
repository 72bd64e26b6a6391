"""Bad input and faults in a live hunt: each ends with a message that says what
failed and what to check, the audit records it, and nothing acts on a failed
or partial hunt without a person."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from playbooks.models import ActionKind, Gate, RunStatus
from playbooks.playbook import BUNDLED, load_playbook
from tests.emulator import WORKSPACE_ID, abandoning_requests
from tests.live import LiveRun, live_settings, phished_tenant, run_live

BATCH = r"^/v1/\$batch$"


@pytest.fixture
def tenant(emu: Any) -> Any:
    emu.log_analytics.workspace.load(phished_tenant(1))
    return emu


def assert_failed_without_actions(done: LiveRun, *phrases: str) -> str:
    report = done.report
    assert report.status is RunStatus.FAILED
    assert report.actions == () and report.findings == ()
    error = report.error or ""
    for phrase in phrases:
        assert phrase in error, error
    kinds = [r.kind for r in done.records()]
    assert "run.failed" in kinds
    assert not [kind for kind in kinds if kind.startswith(("action.", "plan."))]
    (failed,) = done.records("run.failed")
    assert failed.data["error"] == report.error
    return error


def test_an_unknown_workspace_names_the_setting_to_fix(tenant: Any, audit_log: Any) -> None:
    settings = live_settings(
        tenant, log_analytics={"workspace_id": "00000000-0000-4000-8000-000000000bad"}
    )

    done = run_live(tenant, audit_log, settings=settings)

    assert_failed_without_actions(
        done,
        "WorkspaceNotFoundError",
        "check log_analytics.workspace_id (00000000-0000-4000-8000-000000000bad)",
    )
    assert len(tenant.requests(BATCH)) == 1


def test_a_refused_token_is_an_authentication_failure_tried_once(
    tenant: Any, audit_log: Any
) -> None:
    tenant.audiences["log_analytics"] = "https://api.loganalytics.us"

    done = run_live(tenant, audit_log)

    assert_failed_without_actions(
        done,
        "AuthenticationFailed",
        "401",
        "InvalidAuthenticationTokenAudience",
        "check [azure.credential]",
    )
    assert len(tenant.requests(BATCH)) == 1


def test_a_forbidden_workspace_names_the_role_the_identity_needs(
    tenant: Any, audit_log: Any
) -> None:
    tenant.fault(
        scope="query",
        times=None,
        status=403,
        body={
            "error": {
                "code": "InsufficientAccessError",
                "message": "The provided credentials have insufficient access to perform the requested operation",
            }
        },
    )

    done = run_live(tenant, audit_log)

    assert_failed_without_actions(
        done,
        "InsufficientAccessError",
        f"needs the Log Analytics Reader (or Microsoft Sentinel Reader) role on workspace {WORKSPACE_ID}",
    )
    assert len(tenant.requests(BATCH)) == 1


def test_a_semantic_error_in_an_edited_template_points_at_the_template(
    tenant: Any, audit_log: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "playbook"
    shutil.copytree(BUNDLED.parent, folder)
    template = folder / "url_clicks.kql"
    template.write_text(
        template.read_text().replace(
            "| where Timestamp between ((HitTime",
            "| where ClickedAt > ago(1d)\n| where Timestamp between ((HitTime",
        )
    )

    done = run_live(tenant, audit_log, playbook=load_playbook(folder / "playbook.yaml"))

    error = assert_failed_without_actions(
        done, "the url_clicks query failed", "BadArgumentError", "ClickedAt"
    )
    assert f"rendered from {template}" in error
    failed = [q for q in done.report.queries if q.status is RunStatus.FAILED]
    assert [q.name for q in failed] == ["url_clicks"] and "ClickedAt" in (failed[0].error or "")
    (record,) = [r for r in done.records("query.completed") if r.data["name"] == "url_clicks"]
    assert record.data["status"] == "failed" and record.data["details"]["status"] == 400


def test_an_html_gateway_page_is_retried_then_reported_as_the_service_failing(
    tenant: Any, audit_log: Any
) -> None:
    tenant.fault(
        path=BATCH,
        status=502,
        body="<html><head><title>502 Bad Gateway</title></head></html>",
        times=None,
    )
    settings = live_settings(tenant, retry={"max_attempts": 3})

    done = run_live(tenant, audit_log, settings=settings)

    assert_failed_without_actions(done, "ServiceUnavailable", "not JSON (502)", "after 3 attempts")
    assert len(tenant.requests(BATCH)) == 3
    assert [a.data["outcome"] for a in done.records("call.attempt")] == [
        "retrying",
        "retrying",
        "failed",
    ]


def test_throttling_with_a_retry_after_above_the_cap_stops_and_records_it(
    tenant: Any, audit_log: Any
) -> None:
    # B08 at the batch: 0.249 s, then backoff, then 3600 s > wait_max.
    tenant.fault(path=BATCH, status=429, headers={"Retry-After": "0.249"})
    tenant.fault(path=BATCH, status=429)
    tenant.fault(path=BATCH, status=429, headers={"Retry-After": "3600"})

    done = run_live(tenant, audit_log)

    assert_failed_without_actions(
        done, "Throttled", "asked to wait 3600 s, longer than retry.wait_max (30 s)"
    )
    assert len(tenant.requests(BATCH)) == 3
    attempts = [a.data for a in done.records("call.attempt")]
    assert [(a["outcome"], a.get("retry_after")) for a in attempts] == [
        ("retrying", 0.249),
        ("retrying", None),
        ("failed", 3600),
    ]


def test_a_throttled_query_inside_the_batch_is_re_sent_alone(tenant: Any, audit_log: Any) -> None:
    tenant.fault(
        scope="query",
        query="ThreatIntelligenceIndicator",
        status=429,
        headers={"Retry-After": "0.05"},
    )

    done = run_live(tenant, audit_log)

    assert done.report.status is RunStatus.COMPLETE
    first, again, _follow_on = tenant.requests(BATCH)
    assert len(first.json()["requests"]) == 5
    (resent,) = again.json()["requests"]
    assert "ThreatIntelligenceIndicator" in resent["body"]["query"]


def test_a_gateway_timeout_is_re_run_once_per_half_window_then_fails_as_a_timeout(
    tenant: Any, audit_log: Any
) -> None:
    # B18: never the same heavy query again and again; halves, once.
    tenant.fault(scope="query", query=r"^// Device code authentications", status=504, times=None)

    done = run_live(tenant, audit_log)

    assert_failed_without_actions(done, "the hunt query failed", "GatewayTimeout")
    first, halves = tenant.requests(BATCH)
    assert len(first.json()["requests"]) == 5
    assert [item["body"]["timespan"] for item in halves.json()["requests"]] == [
        "2026-01-15T00:00:00.000Z/2026-01-15T06:00:00.000Z",
        "2026-01-15T06:00:00.000Z/2026-01-15T12:00:00.000Z",
    ]


def test_a_client_timeout_re_runs_the_batch_over_halves_and_recovers(
    tenant: Any, audit_log: Any
) -> None:
    # The emulator answers the ten queries of the halves in about 3 s on a
    # slow machine: the read timeout stays well clear of an honest answer.
    tenant.fault(path=BATCH, delay=11, times=1)
    settings = live_settings(
        tenant, azure={"read_timeout": 10}, log_analytics={"server_timeout": 9}
    )

    with abandoning_requests():
        done = run_live(tenant, audit_log, settings=settings)

    assert done.report.status is RunStatus.COMPLETE, done.report.error
    assert len(done.report.findings) == 1
    timed_out, halves, _follow_on = tenant.requests(BATCH)
    assert len(halves.json()["requests"]) == 10
    hunt = next(q for q in done.report.queries if q.name == "hunt")
    assert hunt.detail == "re-run over 2 narrower windows after a partial or timed-out answer"


def test_a_partial_hunt_is_re_run_over_halves_and_counts_as_complete_when_they_are(
    tenant: Any, audit_log: Any
) -> None:
    # B17: a truncated answer is never taken as all there is.
    tenant.fault(scope="query", query=r"^// Device code authentications", partial_rows=0, times=1)

    done = run_live(tenant, audit_log)

    assert done.report.status is RunStatus.COMPLETE
    assert len(done.report.findings) == 1
    (first_try,) = [
        r
        for r in done.records("query.completed")
        if r.data["name"] == "hunt" and r.data["step"] == "hunt"
    ]
    assert first_try.data["status"] == "partial"
    assert first_try.data["details"]["partial_error"]["inner_code"] == "-2133196797"
    assert len([r for r in done.records("query.completed") if r.data["step"] == "hunt.split"]) == 2


def test_a_hunt_that_stays_partial_holds_every_high_tier_action_for_a_person(
    tenant: Any, audit_log: Any
) -> None:
    tenant.fault(scope="query", query="^// Safe Links clicks", partial_rows=1, times=None)

    done = run_live(tenant, audit_log, settings=live_settings(tenant))

    report = done.report
    assert report.status is RunStatus.PARTIAL
    clicks = next(q for q in report.queries if q.name == "url_clicks")
    assert clicks.status is RunStatus.PARTIAL
    assert (
        clicks.detail
        == "re-run over 2 narrower windows after a partial or timed-out answer; still partial"
    )
    assert any("url_clicks results arrived partial" in w for w in report.warnings)
    (finding,) = report.findings
    assert finding.tier.value == "high"
    contain = [
        a
        for a in report.actions
        if a.action in (ActionKind.REVOKE_SESSIONS, ActionKind.DISABLE_ACCOUNT)
    ]
    assert contain and all(a.gate is Gate.APPROVAL for a in contain)
    (plan,) = done.records("plan.created")
    assert {a["gate"] for a in plan.data["actions"] if a["action"] == "revoke_sessions"} == {
        "approval"
    }


def test_a_query_whose_tables_are_routed_to_two_sources_fails_the_run_naming_them(
    tenant: Any, audit_log: Any
) -> None:
    settings = live_settings(tenant, sources={"tables": {"EmailEvents": "defender"}})

    done = run_live(tenant, audit_log, mode="live", settings=settings)

    assert_failed_without_actions(
        done,
        "the emails query reads tables from different sources",
        "EmailEvents (defender), UrlClickEvents (log_analytics)",
    )
