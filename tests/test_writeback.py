"""A run triggered by an incident reports back: one comment, its labels, every state;
a dry-run only records them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from playbooks.audit import AuditLog
from playbooks.engine import Runner, RunRequest
from playbooks.errors import PermissionDenied
from playbooks.incidents import scope_from_incident
from playbooks.models import ActionKind, ActionStatus, Mode, RunReport
from playbooks.playbook import load_playbook
from playbooks.writeback import MAX_MESSAGE, comment_message, labels_for
from tests import factories
from tests.runs import (
    RecordingWriter,
    local_source,
    scenario_settings,
    seed_scenario,
    trigger_body,
)


def incident_run(
    tmp_path: Path,
    audit_log: AuditLog,
    payload: dict[str, Any] | None = None,
    *,
    writer: RecordingWriter | None = None,
    mode: Mode = Mode.DRY_RUN,
) -> tuple[RunReport, RecordingWriter]:
    scenario = seed_scenario()
    settings = scenario_settings(scenario)
    scope = scope_from_incident(payload or trigger_body(), now=scenario.clock)
    writer = writer or RecordingWriter()
    runner = Runner(
        load_playbook(),
        settings,
        local_source(scenario, tmp_path / "exports"),
        audit_log,
        writer=writer,
    )
    request = RunRequest(
        trigger="sentinel:Create",
        mode=mode,
        window=scope.window,
        now=scenario.clock,
        users=scope.users,
        incident=scope.incident,
        low_confidence_users=scope.low_confidence_users,
        warnings=scope.unresolved + scope.warnings,
        run_id="r-incident-1",
    )
    return asyncio.run(runner.run(request)), writer


def would_be(report: RunReport, audit_log: AuditLog) -> tuple[str, tuple[str, ...]]:
    """The comment and the labels a dry-run recorded instead of writing them."""
    (comment,) = [a for a in report.actions if a.action is ActionKind.COMMENT_ON_INCIDENT]
    assert comment.status is ActionStatus.WOULD_SEND
    (record,) = [r for r in audit_log.records() if r.kind == "incident.dry_run"]
    assert record.data["request"] == comment.request.model_dump(mode="json")
    return comment.request.body["properties"]["message"], tuple(record.data["labels"])


def test_in_dry_run_the_incident_is_not_written_to_and_the_comment_it_would_get_is_recorded(
    tmp_path: Path, audit_log: AuditLog
) -> None:
    report, writer = incident_run(tmp_path, audit_log)

    assert writer.calls == [] and writer.comments == {} and writer.labels == {}
    message, labels = would_be(report, audit_log)
    assert "<b>tokenward</b> (dry-run, nothing sent)" in message
    assert "<b>1 finding(s)</b> (1 high)" in message
    assert "<b>target.user@contoso.com</b>: high, score 100" in message
    assert "threat_intel_ip: 185.220.101.47 is in 185.220.101.0/24" in message
    assert "Click on https://secure-access.contoso-verify.workers.dev/session" in message
    assert "Mail “Action required: re-verify your Microsoft 365 access”" in message
    assert "revoke_sessions target.user@contoso.com: <b>would send</b>" in message
    assert "access tokens already issued stay valid until they expire" in message
    assert "account &#x27;svc-backup&#x27; has no Entra object id or UPN" in message
    assert labels == ("tokenward:dry-run",)
    kinds = [r.kind for r in audit_log.records(run_id="r-incident-1")]
    assert "incident.labels.intent" not in kinds and "action.intent" not in kinds


def test_outside_dry_run_the_seed_incident_gets_its_labels_then_one_comment(
    tmp_path: Path, audit_log: AuditLog
) -> None:
    report, writer = incident_run(tmp_path, audit_log, mode=Mode.APPROVE)

    ((key, message),) = writer.comments.items()
    assert key[0] == trigger_body()["object"]["id"]
    assert "<b>tokenward</b> (approve)" in message
    assert "<b>target.user@contoso.com</b>: high, score 100" in message
    (comment,) = [a for a in report.actions if a.action is ActionKind.COMMENT_ON_INCIDENT]
    assert (comment.status, comment.http_status) == (ActionStatus.SUCCEEDED, 201)
    assert writer.calls == ["label", "comment"]


def test_the_comment_intent_and_outcome_are_audited_with_the_fixed_comment_id(
    tmp_path: Path, audit_log: AuditLog
) -> None:
    _, writer = incident_run(tmp_path, audit_log, mode=Mode.APPROVE)
    kinds = [r.kind for r in audit_log.records(run_id="r-incident-1")]
    assert kinds[-5:] == [
        "incident.labels.intent",
        "incident.labels.outcome",
        "action.intent",
        "action.outcome",
        "run.finished",
    ]
    intent = next(r for r in audit_log.records(run_id="r-incident-1") if r.kind == "action.intent")
    ((_, comment_id),) = writer.comments
    assert intent.data["comment_id"] == comment_id
    assert intent.data["path"].endswith(f"/comments/{comment_id}?api-version=2025-09-01")


def test_an_incident_with_no_resolvable_account_is_reported_back_and_nothing_is_hunted(
    tmp_path: Path, audit_log: AuditLog
) -> None:
    payload = trigger_body()
    payload["object"]["properties"]["relatedEntities"] = [
        {"kind": "Account", "properties": {"accountName": "megan.bowen"}}
    ]

    report, _ = incident_run(tmp_path, audit_log, payload)

    assert report.queries == () and report.findings == ()
    message, labels = would_be(report, audit_log)
    assert "no account in this incident could be resolved" in message
    assert "account &#x27;megan.bowen&#x27; has no Entra object id or UPN" in message
    assert labels == ("tokenward:unresolved-account", "tokenward:dry-run")
    assert "incident.unresolvable_identity" in [r.kind for r in audit_log.records()]


def test_a_low_confidence_identity_is_never_acted_on_without_approval(
    tmp_path: Path, audit_log: AuditLog
) -> None:
    payload = trigger_body()
    payload["object"]["properties"]["relatedEntities"] = [
        {"kind": "Account", "properties": {"fullName": "target.user@contoso.com"}}
    ]

    report, _ = incident_run(tmp_path, audit_log, payload)

    containment = [a for a in report.actions if a.action is not ActionKind.COMMENT_ON_INCIDENT]
    assert containment and all(a.status is ActionStatus.AWAITING_APPROVAL for a in containment)
    assert all("low_confidence_identity" in [d.guardrail for d in a.decisions] for a in containment)
    assert "tokenward:needs-approval" in would_be(report, audit_log)[1]


def test_a_refused_comment_is_recorded_and_changes_nothing_the_run_decided(
    tmp_path: Path, audit_log: AuditLog
) -> None:
    writer = RecordingWriter(
        fail_with=PermissionDenied(
            "Microsoft Sentinel refused the comment (403 AuthorizationFailed: no Responder role)",
            status=403,
            code="AuthorizationFailed",
        )
    )

    report, _ = incident_run(tmp_path, audit_log, writer=writer, mode=Mode.APPROVE)

    assert report.status.value == "complete" and len(report.findings) == 1
    (comment,) = [a for a in report.actions if a.action is ActionKind.COMMENT_ON_INCIDENT]
    assert (comment.status, comment.http_status, comment.error_code) == (
        ActionStatus.FAILED,
        403,
        "AuthorizationFailed",
    )
    outcome = [r for r in audit_log.records() if r.kind == "action.outcome"][-1]
    assert outcome.data["status"] == "failed"


def hostile_report(**changes: Any) -> RunReport:
    subject = '<img src=x onerror="alert(1)">\x07'
    finding = factories.finding(
        evidence=factories.Evidence(emails=(factories.email(subject=subject),))
    )
    values: dict[str, Any] = {
        "run_id": "r-1",
        "playbook": "device-code",
        "mode": Mode.AUTO,
        "trigger": "sentinel:Create",
        "status": "complete",
        "started_at": factories.AT,
        "ended_at": factories.AT,
        "now": factories.AT,
        "window": {"start": factories.AT, "end": factories.AT},
        "users": ("megan.bowen@contoso.com",),
        "source": "test",
        "findings": (finding,),
    }
    values.update(changes)
    return RunReport(**values)


def test_values_from_the_logs_cannot_add_markup_to_the_comment() -> None:
    message = comment_message(hostile_report())
    assert "<img" not in message and "onerror=&quot;alert(1)&quot;" in message
    assert "\x07" not in message


def test_a_comment_for_a_campaign_stays_within_sentinels_limit() -> None:
    many = tuple(
        factories.finding(f"user{i}@contoso.com", user_id=f"aaaaaaaa-0000-4000-8000-{i:012d}")
        for i in range(400)
    )
    message = comment_message(hostile_report(findings=many))
    assert len(message) <= MAX_MESSAGE
    assert "more finding(s): see the run's report" in message
    assert message.endswith("</small></p>")


@pytest.mark.parametrize(
    ("status", "label"),
    [
        (ActionStatus.SUCCEEDED, "tokenward:contained"),
        (ActionStatus.AWAITING_APPROVAL, "tokenward:needs-approval"),
        (ActionStatus.FAILED, "tokenward:action-failed"),
    ],
)
def test_labels_say_what_happened_to_the_containment(status: ActionStatus, label: str) -> None:
    action = {
        "id": "a-1",
        "action": ActionKind.REVOKE_SESSIONS,
        "target": "megan.bowen@contoso.com",
        "targets": (),
        "status": status,
        "gate": "unattended",
        "request": {"service": "graph", "method": "POST", "path": "/users/x/revokeSignInSessions"},
    }
    assert labels_for(hostile_report(actions=(action,)), prefix="tokenward:") == (label,)
