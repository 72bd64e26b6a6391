"""The report step of a run triggered by an incident: labels, then one comment.

The engine calls :func:`report_to_incident` after acting. It executes the
plan's ``comment_on_incident`` action itself (no containment responder ever
does), records intent and outcome in the audit, and returns the report with
the comment's real outcome in place of its planned state.

Labels go first so the comment can say which were set. Both writes are
idempotent (labels are set, not added; the comment id is fixed per run), so a
run repeated after a crash repeats them without adding anything. A failed
write is recorded and reported; it never changes what the run decided or did.

A dry-run writes nothing: :func:`rehearse_report` takes no writer, and
records the labels and the comment it would have written (``incident.dry_run``)
for the report and the audit, as dry-run Graph actions are.
"""

from __future__ import annotations

import logging

from playbooks import actions
from playbooks.actions import IncidentRef
from playbooks.audit import AuditLog
from playbooks.errors import ConnectorError
from playbooks.models import (
    ActionKind,
    ActionReport,
    ActionResult,
    ActionStatus,
    Gate,
    RunReport,
)
from playbooks.ports import CallAttempt, IncidentWriter, listening_for_attempts
from playbooks.writeback import comment_message, labels_for

logger = logging.getLogger(__name__)


async def report_to_incident(
    report: RunReport,
    *,
    incident: IncidentRef,
    writer: IncidentWriter,
    audit: AuditLog,
    label_prefix: str,
    api_version: str,
) -> RunReport:
    run_id = report.run_id

    def audited(attempt: CallAttempt) -> None:
        audit.record(run_id, "call.attempt", attempt.as_record())

    with listening_for_attempts(audited):
        labels_outcome = await _label(report, incident, writer, audit, label_prefix)

        # The comment: the plan's action when it planned, else one built here
        # (a run that failed before planning is reported all the same).
        action = _planned_comment(report) or _comment_action(incident, run_id, api_version)
        comment_id = actions.comment_id(run_id)
        message = comment_message(report, labels=labels_outcome)
        audit.record(
            run_id,
            "action.intent",
            {
                "action": action.id,
                "kind": action.action.value,
                "path": action.request.path,
                "comment_id": comment_id,
                "characters": len(message),
            },
        )
        try:
            written = await writer.comment(
                incident_id=incident.resource_id, comment_id=comment_id, message=message
            )
            result = ActionResult(
                action_id=action.id,
                status=ActionStatus.SUCCEEDED,
                detail=written.detail,
                http_status=written.http_status,
                request_id=written.request_id,
                attempts=written.attempts,
            )
        except ConnectorError as failure:
            logger.warning(
                "run %s could not comment on incident %s: %s",
                run_id,
                incident.resource_id,
                failure,
            )
            result = ActionResult(
                action_id=action.id,
                status=ActionStatus.FAILED,
                detail=str(failure),
                http_status=failure.status,
                error_code=failure.code,
                request_id=failure.request_id,
            )
        audit.record(
            run_id,
            "action.outcome",
            {
                "action": action.id,
                **result.model_dump(mode="json", exclude={"action_id"}),
            },
        )

    done = action.model_copy(
        update={
            "status": result.status,
            "detail": result.detail,
            "http_status": result.http_status,
            "error_code": result.error_code,
            "request_id": result.request_id,
            "attempts": result.attempts,
        }
    )
    others = tuple(a for a in report.actions if a.id != action.id)
    return report.model_copy(update={"actions": (*others, done)})


def rehearse_report(
    report: RunReport,
    *,
    incident: IncidentRef,
    audit: AuditLog,
    label_prefix: str,
    api_version: str,
) -> RunReport:
    """The report step of a dry-run: what would be written, recorded and sent nowhere."""
    run_id = report.run_id
    labels = labels_for(report, prefix=label_prefix)
    action = _planned_comment(report) or _comment_action(incident, run_id, api_version)
    noted = f"labels not set (dry-run): {', '.join(labels)}" if labels else ""
    message = comment_message(report, labels=noted)
    request = action.request.model_copy(update={"body": {"properties": {"message": message}}})
    audit.record(
        run_id,
        "incident.dry_run",
        {
            "action": action.id,
            "incident": incident.resource_id,
            "labels": list(labels),
            "request": request.model_dump(mode="json"),
            "status": ActionStatus.WOULD_SEND.value,
        },
    )
    done = action.model_copy(
        update={
            "status": ActionStatus.WOULD_SEND,
            "detail": "dry-run: not written to the incident; the comment is in the request",
            "request": request,
        }
    )
    others = tuple(a for a in report.actions if a.id != action.id)
    return report.model_copy(update={"actions": (*others, done)})


def _planned_comment(report: RunReport) -> ActionReport | None:
    return next((a for a in report.actions if a.action is ActionKind.COMMENT_ON_INCIDENT), None)


async def _label(
    report: RunReport,
    incident: IncidentRef,
    writer: IncidentWriter,
    audit: AuditLog,
    prefix: str,
) -> str:
    labels = labels_for(report, prefix=prefix)
    audit.record(
        report.run_id,
        "incident.labels.intent",
        {"incident": incident.resource_id, "labels": list(labels)},
    )
    try:
        labelled = await writer.label(incident_id=incident.resource_id, labels=labels)
    except ConnectorError as failure:
        logger.warning(
            "run %s could not label incident %s: %s",
            report.run_id,
            incident.resource_id,
            failure,
        )
        audit.record(
            report.run_id,
            "incident.labels.outcome",
            {"status": "failed", "error": str(failure), "http_status": failure.status},
        )
        return f"labels not set: {failure}"
    audit.record(
        report.run_id,
        "incident.labels.outcome",
        {
            "status": "succeeded",
            "detail": labelled.detail,
            "http_status": labelled.http_status,
        },
    )
    return labelled.detail


def _comment_action(incident: IncidentRef, run_id: str, api_version: str) -> ActionReport:
    request = actions.incident_comment(incident, run_id=run_id, api_version=api_version)
    return ActionReport(
        id=f"a-comment-{actions.comment_id(run_id)[:8]}",
        action=ActionKind.COMMENT_ON_INCIDENT,
        target="incident",
        targets=(),
        status=ActionStatus.WOULD_SEND,
        gate=Gate.UNATTENDED,
        request=request,
    )
