"""One run of the playbook: scope, hunt, correlate, score, plan, gate, act, report.

The runner is the only code that calls connectors. Everything it decides comes
from pure functions (:mod:`playbooks.scoring`, :mod:`playbooks.planning`), so
dry-run, approve and auto share one path and differ only in the gate. Every
step writes audit records; an action's intent is recorded before it is
attempted and its outcome after.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from playbooks.actions import IncidentRef
from playbooks.audit import AuditLog
from playbooks.incident_report import report_to_incident
from playbooks.correlation import Flow, baseline_for, evidence_for, group_flows, index_by_hit
from playbooks.dryrun import DryRunResponder
from playbooks.errors import QueryError, TokenwardError
from playbooks.models import (
    ActionReport,
    ActionResult,
    ActionStatus,
    Finding,
    Gate,
    Mode,
    Plan,
    PlannedAction,
    QueryRecord,
    RunReport,
    RunStatus,
    Window,
)
from playbooks.planning import Guardrails, plan_actions
from playbooks.playbook import Playbook
from playbooks.ports import (
    ExecutionContext,
    IncidentWriter,
    QueryOutcome,
    QuerySource,
    RenderedQuery,
    Responder,
)
from playbooks.rows import sign_in_from_row
from playbooks.scoring import ScoringContext, SignalInput, matching_sanctioned_use, score
from playbooks.settings import Settings
from playbooks.times import utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRequest:
    """What to hunt and how far to go."""

    trigger: str
    mode: Mode
    window: Window
    # The run's clock: what ``now()`` and ``ago()`` mean to the queries.
    now: datetime
    # Lower-cased UPNs or object ids; empty means every user.
    users: tuple[str, ...] = ()
    incident: IncidentRef | None = None
    low_confidence_users: frozenset[str] = frozenset()
    # Things the caller already knows the report must say (e.g. from loading).
    warnings: tuple[str, ...] = ()
    run_id: str | None = None


@dataclass
class Runner:
    """Runs the playbook with the connectors the face wired in."""

    playbook: Playbook
    settings: Settings
    source: QuerySource
    audit: AuditLog
    responder: Responder = field(default_factory=DryRunResponder)
    # Where a run triggered by an incident reports back; None: it does not.
    writer: IncidentWriter | None = None

    async def run(self, request: RunRequest) -> RunReport:
        run_id = request.run_id or new_run_id()
        started = utcnow()
        self.audit.record(
            run_id,
            "run.started",
            {
                "trigger": request.trigger,
                "mode": request.mode.value,
                "playbook": self.playbook.id,
                "window": request.window.model_dump(mode="json"),
                "now": request.now.isoformat(),
                "users": list(request.users),
                "incident": request.incident.resource_id if request.incident else None,
                "source": self.source.description,
                "responder": self.responder.description,
            },
        )
        report = RunReport(
            run_id=run_id,
            playbook=self.playbook.id,
            mode=request.mode,
            trigger=request.trigger,
            status=RunStatus.COMPLETE,
            started_at=started,
            ended_at=started,
            now=request.now,
            window=request.window,
            users=request.users,
            source=self.source.description,
            warnings=request.warnings,
        )
        try:
            report = await self._run(run_id, request, report)
        except TokenwardError as failure:
            logger.warning("run %s failed: %s", run_id, failure)
            report = report.model_copy(
                update={"status": RunStatus.FAILED, "error": f"{type(failure).__name__}: {failure}"}
            )
            self.audit.record(run_id, "run.failed", {"error": report.error})
        report = await self._write_back(run_id, request, report)
        report = report.model_copy(update={"ended_at": utcnow()})
        self.audit.record(
            run_id,
            "run.finished",
            {
                "status": report.status.value,
                "findings": report.tier_counts(),
                "actions": _status_counts(report.actions),
            },
        )
        return report

    async def _run(self, run_id: str, request: RunRequest, report: RunReport) -> RunReport:
        # An incident names whom to hunt. With nobody resolvable, an empty user
        # filter would hunt the whole tenant: report that back instead.
        if request.incident is not None and not request.users:
            return await self._nobody_to_hunt(run_id, request, report)

        # Hunt and correlate: every query in one batch, the hunt embedded in the rest.
        queries = self._render(request)
        outcomes = await self.source.run_queries(queries)
        records = tuple(self._record_query(run_id, query, outcome) for query, outcome in zip(queries, outcomes, strict=True))
        report = report.model_copy(update={"queries": records})
        failed = [outcome for outcome in outcomes if outcome.status is RunStatus.FAILED]
        if failed:
            names = ", ".join(outcome.name for outcome in failed)
            raise QueryError(
                f"the {names} {'query' if len(failed) == 1 else 'queries'} failed "
                f"({failed[0].error}); nothing was decided or done"
            )
        partial = [outcome.name for outcome in outcomes if outcome.status is RunStatus.PARTIAL]
        results = {outcome.name: outcome for outcome in outcomes}

        # Score: one finding per device code flow.
        findings = self._assess(results)
        for finding in findings:
            self.audit.record(
                run_id,
                "finding.scored",
                {
                    "finding": finding.id,
                    "user": finding.user_principal_name,
                    "score": finding.score,
                    "tier": finding.tier.value,
                    "reasons": [reason.model_dump() for reason in finding.reasons],
                },
            )

        # Plan, with the guardrails; then gate by mode and act.
        plan = plan_actions(
            findings,
            self.playbook,
            self._guardrails(request, evidence_complete=not partial),
            run_id=run_id,
            created_at=utcnow(),
        )
        self.audit.record(
            run_id,
            "plan.created",
            {
                "plan": plan.id,
                "hash": plan.content_hash,
                "actions": [
                    {"id": a.id, "action": a.action.value, "targets": [t.label for t in a.targets], "gate": a.gate.value}
                    for a in plan.actions
                ],
            },
        )
        results_by_action = await self._gate_and_act(run_id, request, plan, findings)

        notes = list(report.notes)
        warnings = list(report.warnings)
        if partial:
            warnings.append(
                f"the {', '.join(partial)} results arrived partial: evidence may be missing, "
                "and no high-tier action runs without approval"
            )
        if any(a.action.value in ("revoke_sessions", "disable_account") for a in plan.actions):
            notes.append(
                "revoking sessions stops refresh tokens; access tokens already issued stay "
                "valid until they expire (about an hour, up to a day for CAE-capable clients)"
            )
        return report.model_copy(
            update={
                "status": RunStatus.PARTIAL if partial else RunStatus.COMPLETE,
                "findings": tuple(findings),
                "plan_id": plan.id,
                "plan_hash": plan.content_hash,
                "actions": tuple(_action_report(a, results_by_action[a.id]) for a in plan.actions),
                "warnings": tuple(warnings),
                "notes": tuple(notes),
            }
        )

    async def _nobody_to_hunt(
        self, run_id: str, request: RunRequest, report: RunReport
    ) -> RunReport:
        self.audit.record(
            run_id,
            "incident.unresolvable_identity",
            {
                "incident": request.incident.resource_id if request.incident else None,
                "reasons": list(request.warnings),
            },
        )
        plan = plan_actions(
            (),
            self.playbook,
            self._guardrails(request, evidence_complete=True),
            run_id=run_id,
            created_at=utcnow(),
        )
        results = await self._gate_and_act(run_id, request, plan, ())
        return report.model_copy(
            update={
                "plan_id": plan.id,
                "plan_hash": plan.content_hash,
                "actions": tuple(
                    _action_report(a, results[a.id]) for a in plan.actions
                ),
                "warnings": (
                    *report.warnings,
                    "no account of the incident could be resolved to an Entra ID user; nothing was hunted",
                ),
            }
        )

    async def _write_back(
        self, run_id: str, request: RunRequest, report: RunReport
    ) -> RunReport:
        """Report: the incident's labels and the run's one comment (after acting)."""
        if request.incident is None or self.writer is None:
            return report
        return await report_to_incident(
            report,
            incident=request.incident,
            writer=self.writer,
            audit=self.audit,
            label_prefix=self.settings.sentinel.label_prefix,
            api_version=self.settings.sentinel.api_version,
        )

    def _render(self, request: RunRequest) -> list[RenderedQuery]:
        spec = self.playbook.spec
        values = {
            "start": request.window.start,
            "end": request.window.end,
            "users": list(request.users),
            "before": spec.correlation.before,
            "after": spec.correlation.after,
            "days": timedelta(days=spec.baseline.days),
        }
        texts = self.playbook.render_all(values)
        widest = Window(
            start=request.window.start - max(spec.correlation.before, timedelta(days=spec.baseline.days)),
            end=request.window.end + spec.correlation.after,
        )
        return [
            RenderedQuery(name=name, tables=spec.queries[name].tables, text=text, window=widest)
            for name, text in texts.items()
        ]

    def _record_query(self, run_id: str, query: RenderedQuery, outcome: QueryOutcome) -> QueryRecord:
        record = QueryRecord(
            name=query.name,
            tables=query.tables,
            text=query.text,
            row_count=len(outcome.rows),
            status=outcome.status,
            duration_ms=outcome.duration_ms,
            error=outcome.error,
        )
        self.audit.record(
            run_id,
            "query.completed",
            {**record.model_dump(mode="json"), "details": outcome.details},
        )
        return record

    def _assess(self, results: dict[str, QueryOutcome]) -> list[Finding]:
        spec = self.playbook.spec
        sign_ins = [s for s in (sign_in_from_row(row) for row in results["hunt"].rows) if s]
        flows = group_flows(sign_ins)
        clicks = index_by_hit(results["url_clicks"].rows)
        emails = index_by_hit(results["emails"].rows)
        baselines = index_by_hit(results["baseline"].rows)
        context = self._scoring_context()
        return [
            _finding(flow, self.playbook, context, clicks=clicks, emails=emails, baselines=baselines, days=spec.baseline.days)
            for flow in flows
        ]

    def _scoring_context(self) -> ScoringContext:
        settings = self.settings
        return ScoringContext(
            threat_networks=settings.threat_networks(),
            allowed_countries=settings.hunt.allowed_countries,
            sanctioned_use=self.playbook.spec.sanctioned_use + settings.guardrails.sanctioned_use,
        )

    def _guardrails(self, request: RunRequest, *, evidence_complete: bool) -> Guardrails:
        rails = self.settings.guardrails
        return Guardrails(
            protected_accounts=frozenset(rails.protected_accounts),
            max_users_per_run=rails.max_users_per_run,
            evidence_complete=evidence_complete,
            low_confidence_users=request.low_confidence_users,
            incident=request.incident,
            comment_api_version=self.settings.sentinel.api_version,
        )

    async def _gate_and_act(
        self, run_id: str, request: RunRequest, plan: Plan, findings: Sequence[Finding]
    ) -> dict[str, ActionResult]:
        context = ExecutionContext(
            run_id=run_id,
            sign_in_times={f.user_principal_name.lower(): f.sign_in_time for f in findings},
        )
        if request.mode is Mode.DRY_RUN or not self.responder.sends_requests:
            results = await DryRunResponder().execute(plan.actions, context)
            for action, result in zip(plan.actions, results, strict=True):
                self.audit.record(
                    run_id,
                    "action.dry_run",
                    {
                        "action": action.id,
                        "kind": action.action.value,
                        "targets": [t.label for t in action.targets],
                        "request": action.request.model_dump(mode="json"),
                        "status": result.status.value,
                    },
                )
            return {result.action_id: result for result in results}
        raise TokenwardError(f"mode {request.mode.value} is not available in this version")


def _finding(
    flow: Flow,
    playbook: Playbook,
    context: ScoringContext,
    *,
    clicks: dict[str, list[dict[str, object]]],
    emails: dict[str, list[dict[str, object]]],
    baselines: dict[str, list[dict[str, object]]],
    days: int,
) -> Finding:
    evidence = evidence_for(flow, clicks=clicks, emails=emails)
    baseline = baseline_for(flow, baselines, days=days)
    given = SignalInput(
        sign_in=flow.primary, flow=flow.sign_ins, evidence=evidence, baseline=baseline, context=context
    )
    thresholds = playbook.spec.scoring.thresholds
    result = score(given, playbook.signals, high=thresholds.high, medium=thresholds.medium)
    primary = flow.primary
    return Finding(
        id=flow.id,
        user_principal_name=primary.user_principal_name,
        user_id=primary.user_id,
        sign_in_time=primary.time,
        score=result.value,
        tier=result.tier,
        reasons=result.reasons,
        evidence=evidence,
        sign_ins=flow.sign_ins,
        baseline=baseline,
        is_guest=primary.is_guest,
        allowlisted=matching_sanctioned_use(primary, context.sanctioned_use) is not None,
    )


def _action_report(action: PlannedAction, result: ActionResult) -> ActionReport:
    label = ", ".join(t.label for t in action.targets) if action.targets else "incident"
    return ActionReport(
        id=action.id,
        action=action.action,
        target=label,
        targets=action.targets,
        status=result.status,
        gate=action.gate,
        request=action.request,
        decisions=action.decisions,
        notes=action.notes,
        detail=result.detail,
        http_status=result.http_status,
        error_code=result.error_code,
        request_id=result.request_id,
        attempts=result.attempts,
        containment_effective=result.containment_effective,
    )


def _status_counts(reports: Sequence[ActionReport]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in reports:
        counts[item.status.value] = counts.get(item.status.value, 0) + 1
    return counts


def new_run_id(now: datetime | None = None) -> str:
    moment = now or utcnow()
    return f"r-{moment.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


__all__ = ["ActionStatus", "Gate", "RunRequest", "Runner", "new_run_id"]
