"""One run of the playbook: scope, hunt, correlate, score, plan, gate, act, report.

The runner is the only code that calls connectors. Everything it decides comes
from pure functions (:mod:`playbooks.scoring`, :mod:`playbooks.planning`), so
dry-run, approve and auto share one path and differ only in the gate. Every
step writes audit records; an action's intent is recorded before it is
attempted and its outcome after.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from playbooks.actions import IncidentRef
from playbooks.approvals import claim_for_execution, store_plan
from playbooks.audit import AuditLog
from playbooks.containment import CONTAINING, WRITES, holds_privileged_role, summarise
from playbooks.correlation import (
    Flow,
    baseline_for,
    evidence_for,
    group_flows,
    index_by_hit,
)
from playbooks.dryrun import DryRunResponder
from playbooks.errors import QueryError, TokenwardError
from playbooks.execution import Executor, execution_policy, target_key
from playbooks.followon import follow_on_for
from playbooks.incident_report import rehearse_report, report_to_incident
from playbooks.kql import HitsTable, ParamType, TrustedQuery
from playbooks.models import (
    ActionKind,
    ActionReport,
    ActionResult,
    ActionStatus,
    DirectoryUser,
    Finding,
    Gate,
    Mode,
    Plan,
    PlannedAction,
    RunReport,
    RunStatus,
    Target,
    Window,
)
from playbooks.phases import Planned, Ran, StepRunner
from playbooks.planning import Guardrails, plan_actions
from playbooks.playbook import Playbook
from playbooks.ports import (
    DirectoryReader,
    ExecutionContext,
    IncidentWriter,
    QuerySource,
    RenderedQuery,
    Responder,
    listening_for_attempts,
)
from playbooks.rows import sign_in_from_row, text
from playbooks.scoring import (
    ScoringContext,
    SignalInput,
    matching_sanctioned_use,
    score,
)
from playbooks.settings import Settings
from playbooks.times import as_utc, isoformat_z, utcnow

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
    # What it must say only if the run completes without a finding (e.g. that
    # the incident is hunted again later).
    if_nothing_found: tuple[str, ...] = ()
    run_id: str | None = None


@dataclass
class Runner:
    """Runs the playbook with the connectors the face wired in."""

    playbook: Playbook
    settings: Settings
    source: QuerySource
    audit: AuditLog
    responder: Responder = field(default_factory=DryRunResponder)
    # Reads users before and after acting; the Graph responder is both.
    directory: DirectoryReader | None = None
    # Who asks for the plans this runner stores (an analyst's name, or the service).
    requested_by: str = "tokenward"
    # Where a run triggered by an incident reports back; None: it does not.
    writer: IncidentWriter | None = None
    _acting: Executor | None = field(default=None, init=False, repr=False)
    _started: datetime = field(default_factory=utcnow, init=False, repr=False)

    async def run(self, request: RunRequest) -> RunReport:
        run_id = request.run_id or new_run_id()
        started = utcnow()
        self._started = started
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
        steps = StepRunner(
            self.source, self.audit, run_id, split_depth=self.settings.hunt.split_depth
        )
        try:
            # Every attempt at an outside call lands in this run's audit, written
            # with the outcome it led to.
            with listening_for_attempts(self._executor().hear):
                report = await self._run(run_id, request, report, steps)
        except TokenwardError as failure:
            logger.warning("run %s failed: %s", run_id, failure)
            # The report still lists every query sent, the failed one included.
            report = report.model_copy(
                update={
                    "status": RunStatus.FAILED,
                    "error": f"{type(failure).__name__}: {failure}",
                    "queries": tuple(steps.records),
                }
            )
            self.audit.record(run_id, "run.failed", {"error": report.error})
        report = await self._write_back(run_id, request, report)
        report = report.model_copy(update={"ended_at": utcnow()})
        self.audit.record(
            run_id,
            "run.finished",
            {
                "trigger": report.trigger,
                "status": report.status.value,
                "findings": report.tier_counts(),
                "actions": _status_counts(report.actions),
                "containment": report.containment.value,
            },
        )
        return report

    async def _run(
        self, run_id: str, request: RunRequest, report: RunReport, steps: StepRunner
    ) -> RunReport:
        # An incident names whom to hunt. With nobody resolvable, an empty user
        # filter would hunt the whole tenant: report that back instead.
        if request.incident is not None and not request.users:
            return await self._nobody_to_hunt(run_id, request, report)

        # Hunt and correlate: one call per source. Queries that run where the
        # hunt runs embed it; the others get its rows in a second step.
        results = await self._hunt_and_correlate(steps, request)
        self._executor().flush(run_id)
        report = report.model_copy(update={"queries": tuple(steps.records)})
        failed = [ran.outcome for ran in results.values() if ran.outcome.status is RunStatus.FAILED]
        if failed:
            names = ", ".join(outcome.name for outcome in failed)
            raise QueryError(
                f"the {names} {'query' if len(failed) == 1 else 'queries'} failed "
                f"({failed[0].error}){self._template_hint(failed[0].name)}; "
                "nothing was decided or done"
            )
        partial = [
            ran.outcome.name for ran in results.values() if ran.outcome.status is RunStatus.PARTIAL
        ]

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

        # Detected: the first time a flow scores at a tier that acts.
        self._detected(run_id, request, findings)

        # Follow the token of high findings: what it touched after the sign-in.
        findings, follow_warnings = await self._follow_on(
            steps, request, findings, results["hunt"].rows
        )
        self._executor().flush(run_id)
        report = report.model_copy(update={"queries": tuple(steps.records)})

        # Look the users up before planning, in the modes that write: object
        # ids, guests, accounts synced from on-premises, directory roles.
        directory = await self._read_directory(run_id, request, findings)
        findings = [_as_read(finding, directory) for finding in findings]

        # Plan, with the guardrails; then gate by mode and act.
        plan = plan_actions(
            findings,
            self.playbook,
            self._guardrails(request, evidence_complete=not partial, directory=directory),
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
                    {
                        "id": a.id,
                        "action": a.action.value,
                        "targets": [t.label for t in a.targets],
                        "gate": a.gate.value,
                    }
                    for a in plan.actions
                ],
            },
        )
        results_by_action = await self._gate_and_act(run_id, request, plan, findings, directory)
        self._contained(run_id, plan.actions, results_by_action, at=self._clock(request))
        containment, users_contained = summarise(plan.actions, results_by_action)
        self._executor().flush(run_id)

        notes = list(report.notes)
        warnings = list(report.warnings) + follow_warnings
        if not findings:
            warnings += request.if_nothing_found
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
                "containment": containment,
                "users_contained": users_contained,
            }
        )

    def _clock(self, request: RunRequest) -> datetime:
        """The run's clock now: its ``now`` moved on by the time the run has taken."""
        return request.now + (utcnow() - self._started)

    def _detected(self, run_id: str, request: RunRequest, findings: Sequence[Finding]) -> None:
        """Record (once per flow, ever) when a flow was first found worth acting on."""
        if request.trigger.startswith("exercise:"):
            return
        acting = [
            finding
            for finding in findings
            if any(kind in WRITES for kind in self.playbook.tier(finding.tier).actions)
        ]
        at = self._clock(request)
        new = self.audit.store.first_detections(
            [
                {
                    "id": finding.id,
                    "user_principal_name": finding.user_principal_name,
                    "tier": finding.tier.value,
                    "sign_in_at": isoformat_z(finding.sign_in_time),
                    "detected_at": isoformat_z(at),
                    "detected_by": run_id,
                    "trigger": request.trigger[:64],
                }
                for finding in acting
            ]
        )
        by_id = {finding.id: finding for finding in acting}
        self.audit.record_many(
            run_id,
            [
                (
                    "finding.detected",
                    {
                        "finding": row["id"],
                        "user": row["user_principal_name"],
                        "tier": row["tier"],
                        "trigger": request.trigger,
                        "sign_in_at": row["sign_in_at"],
                        "detected_at": row["detected_at"],
                        "seconds": _seconds(by_id[row["id"]].sign_in_time, at),
                    },
                )
                for row in new
            ],
        )

    def _contained(
        self,
        run_id: str,
        actions: Sequence[PlannedAction],
        results: Mapping[str, ActionResult],
        *,
        at: datetime,
    ) -> None:
        """Record (once per flow, ever) when containing it first took effect."""
        effective = sorted(
            {
                finding_id
                for action in actions
                if action.action in CONTAINING
                and results.get(action.id) is not None
                and results[action.id].containment_effective
                for finding_id in action.finding_ids
            }
        )
        new = self.audit.store.first_containments(effective, at=isoformat_z(at), run_id=run_id)
        records = []
        for row in new:
            sign_in = as_utc(row["sign_in_at"])
            detected = as_utc(row["detected_at"])
            records.append(
                (
                    "finding.contained",
                    {
                        "finding": row["id"],
                        "user": row["user_principal_name"],
                        "trigger": row["trigger"],
                        "sign_in_at": row["sign_in_at"],
                        "detected_at": row["detected_at"],
                        "contained_at": isoformat_z(at),
                        "detection_to_containment_seconds": _seconds(detected, at),
                        "sign_in_to_containment_seconds": _seconds(sign_in, at),
                    },
                )
            )
        self.audit.record_many(run_id, records)

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
        results = await self._gate_and_act(run_id, request, plan, (), {})
        return report.model_copy(
            update={
                "plan_id": plan.id,
                "plan_hash": plan.content_hash,
                "actions": tuple(_action_report(a, results[a.id]) for a in plan.actions),
                "warnings": (
                    *report.warnings,
                    "no account of the incident could be resolved to an Entra ID user; nothing was hunted",
                ),
            }
        )

    async def _write_back(self, run_id: str, request: RunRequest, report: RunReport) -> RunReport:
        """Report: the incident's labels and the run's one comment (after acting).

        A dry-run writes neither, whatever writer it was given; it records them.
        """
        if request.incident is None:
            return report
        if request.mode is Mode.DRY_RUN:
            if not self.settings.sentinel.write_back:
                return report
            return rehearse_report(
                report,
                incident=request.incident,
                audit=self.audit,
                label_prefix=self.settings.sentinel.label_prefix,
                api_version=self.settings.sentinel.api_version,
            )
        if self.writer is None:
            return report
        return await report_to_incident(
            report,
            incident=request.incident,
            writer=self.writer,
            audit=self.audit,
            label_prefix=self.settings.sentinel.label_prefix,
            api_version=self.settings.sentinel.api_version,
        )

    # -- queries ---------------------------------------------------------------

    def _values(self, request: RunRequest) -> dict[str, Any]:
        spec = self.playbook.spec
        return {
            "start": request.window.start,
            "end": request.window.end,
            "users": list(request.users),
            "before": spec.correlation.before,
            "after": spec.correlation.after,
            "days": timedelta(days=spec.baseline.days),
            "lookback": spec.threat_intel.lookback,
        }

    def _planned(self, name: str, base: dict[str, Any], hits: HitsTable | None) -> Planned:
        """Query *name* over any window; given the hunt's text, or its rows."""
        spec = self.playbook.spec.queries[name]

        def render(start: datetime, end: datetime) -> RenderedQuery:
            values = {**base, "start": start, "end": end}
            if name == "hunt":
                text = self.playbook.render("hunt", values)
            else:
                given = (
                    hits if hits is not None else TrustedQuery(self.playbook.render("hunt", values))
                )
                text = self.playbook.render_with_hits(name, values, given)
            return RenderedQuery(
                name=name, tables=spec.tables, text=text, window=_reads(spec.parameters, values)
            )

        return Planned(name=name, render=render)

    async def _hunt_and_correlate(self, steps: StepRunner, request: RunRequest) -> dict[str, Ran]:
        base = self._values(request)
        start, end = request.window.start, request.window.end
        hunt_tables = self.playbook.spec.queries["hunt"].tables
        embedded: list[str] = []
        apart: list[str] = []
        for name in self.playbook.correlation_queries:
            tables = self.playbook.spec.queries[name].tables
            (embedded if colocated(self.source, hunt_tables, tables) else apart).append(name)

        first = [self._planned(name, base, None) for name in ("hunt", *embedded)]
        results = await steps.run("hunt", first, start, end)
        if not apart:
            return results

        hunt = results["hunt"]
        if hunt.outcome.status is RunStatus.FAILED:
            return results
        if not hunt.rows:
            for name in apart:
                query = self._planned(name, base, HitsTable([])).render(start, end)
                results[name] = steps.skipped("correlate", query, "the hunt found no sign-ins")
            return results
        hits = HitsTable(hunt.rows)
        later = [self._planned(name, base, hits) for name in apart]
        results.update(await steps.run("correlate", later, start, end))
        return results

    async def _follow_on(
        self,
        steps: StepRunner,
        request: RunRequest,
        findings: list[Finding],
        hunt_rows: list[dict[str, Any]],
    ) -> tuple[list[Finding], list[str]]:
        """Findings of the follow-on tiers with what their token did next."""
        spec = self.playbook.spec.follow_on
        chosen = [f for f in findings if f.tier in spec.tiers]
        if not chosen or not spec.queries:
            return findings, []
        ids = {sign_in.id for f in chosen for sign_in in f.sign_ins}
        hits = HitsTable([row for row in hunt_rows if text(row.get("Id")) in ids])
        since = min(f.sign_in_time for f in chosen)
        until = max(request.now, request.window.end)
        base = self._values(request)
        planned = [self._planned(name, base, hits) for name in spec.queries]
        ran = await steps.run("follow_on", planned, since, until)

        incomplete = [r.outcome for r in ran.values() if r.outcome.status is not RunStatus.COMPLETE]
        warnings = [
            f"the follow-on {o.name} query was {o.status.value} ({o.error}): what the token "
            "did next may be missing from the report"
            for o in incomplete
        ]
        by_hit = {name: index_by_hit(r.rows) for name, r in ran.items()}
        chosen_ids = {f.id for f in chosen}
        updated = []
        for finding in findings:
            if finding.id not in chosen_ids:
                updated.append(finding)
                continue
            activity = follow_on_for(
                (sign_in.id for sign_in in finding.sign_ins),
                graph_rows=by_hit.get("graph_activity", {}),
                session_rows=by_hit.get("session_sign_ins", {}),
                since=finding.sign_in_time,
                until=until,
                complete=not incomplete,
            )
            self.audit.record(
                steps.run_id,
                "finding.follow_on",
                {
                    "finding": finding.id,
                    "touched": list(activity.touched),
                    "graph_requests": sum(a.requests for a in activity.graph_activity),
                    "session_sign_ins": activity.session.sign_ins if activity.session else 0,
                    "complete": activity.complete,
                },
            )
            updated.append(finding.model_copy(update={"follow_on": activity}))
        return updated, warnings

    def _template_hint(self, name: str) -> str:
        spec = self.playbook.spec.queries.get(name)
        if spec is None:
            return ""
        path = Path(self.playbook.path).parent / spec.file
        return f"; the query is rendered from {path}"

    def _assess(self, results: dict[str, Ran]) -> list[Finding]:
        spec = self.playbook.spec
        sign_ins = [s for s in (sign_in_from_row(row) for row in results["hunt"].rows) if s]
        flows = group_flows(sign_ins)
        clicks = index_by_hit(results["url_clicks"].rows)
        emails = index_by_hit(results["emails"].rows)
        baselines = index_by_hit(results["baseline"].rows)
        intel = results.get("threat_intel")
        context = self._scoring_context(intel.rows if intel else [])
        return [
            _finding(
                flow,
                self.playbook,
                context,
                clicks=clicks,
                emails=emails,
                baselines=baselines,
                days=spec.baseline.days,
            )
            for flow in flows
        ]

    def _scoring_context(self, intel_rows: list[dict[str, Any]]) -> ScoringContext:
        settings = self.settings
        return ScoringContext(
            threat_networks=settings.threat_networks(),
            threat_ips=threat_ips(intel_rows),
            allowed_countries=settings.hunt.allowed_countries,
            sanctioned_use=self.playbook.spec.sanctioned_use + settings.guardrails.sanctioned_use,
        )

    def _guardrails(
        self,
        request: RunRequest,
        *,
        evidence_complete: bool,
        directory: dict[str, DirectoryUser] | None = None,
    ) -> Guardrails:
        rails = self.settings.guardrails
        policy = execution_policy(self.settings)
        readings = list((directory or {}).values())
        return Guardrails(
            protected_accounts=frozenset(rails.protected_accounts),
            max_users_per_run=rails.max_users_per_run,
            evidence_complete=evidence_complete,
            low_confidence_users=request.low_confidence_users,
            incident=request.incident,
            privileged_users=frozenset(
                name.lower()
                for user in readings
                if user.roles_known and holds_privileged_role(user, policy.privileged_roles)
                for name in (user.key, user.id, user.user_principal_name)
                if name
            ),
            unread_users=frozenset(
                name.lower()
                for user in readings
                if not user.roles_known
                for name in (user.key, user.id, user.user_principal_name)
                if name
            ),
            synced_users=frozenset(
                name.lower()
                for user in readings
                if user.on_premises_sync_enabled
                for name in (user.key, user.id, user.user_principal_name)
                if name
            ),
            comment_api_version=self.settings.sentinel.api_version,
        )

    def _executor(self) -> Executor:
        if self._acting is None:
            # No reader, no writes: without one the executor is never asked to act.
            reader = self.directory if self.directory is not None else _NoDirectory()
            self._acting = Executor(self.settings, self.audit, self.responder, reader)
        return self._acting

    async def _read_directory(
        self, run_id: str, request: RunRequest, findings: Sequence[Finding]
    ) -> dict[str, DirectoryUser] | None:
        if (
            request.mode is Mode.DRY_RUN
            or self.directory is None
            or not self.responder.sends_requests
        ):
            return None
        targets = [
            _target(finding)
            for finding in findings
            if any(kind in WRITES for kind in self.playbook.tier(finding.tier).actions)
        ]
        if not targets:
            return {}
        return await self._executor().read(run_id, targets, why="before planning")

    async def _gate_and_act(
        self,
        run_id: str,
        request: RunRequest,
        plan: Plan,
        findings: Sequence[Finding],
        directory: dict[str, DirectoryUser] | None = None,
    ) -> dict[str, ActionResult]:
        sign_in_times = _sign_in_times(findings)
        context = ExecutionContext(run_id=run_id, sign_in_times=sign_in_times)
        if request.mode is Mode.DRY_RUN or not self.responder.sends_requests:
            rehearsed = await DryRunResponder().execute(plan.actions, context)
            for action, result in zip(plan.actions, rehearsed, strict=True):
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
            return {result.action_id: result for result in rehearsed}
        if self.directory is None:
            raise TokenwardError(f"mode {request.mode.value} needs a directory reader")

        # Approve: the plan is stored with its hash; nothing is written until a
        # named approver approves it and someone executes it.
        results: dict[str, ActionResult] = {}
        if request.mode is Mode.APPROVE:
            waiting = [a for a in plan.actions if a.gate is not Gate.BLOCKED and a.action in WRITES]
            results = {a.id: _waiting(a) for a in waiting}

        # Auto: what the playbook lets run unattended runs now, through the
        # execution-time guardrails and the ledger.
        if request.mode is Mode.AUTO:
            unattended = [
                a for a in plan.actions if a.gate is Gate.UNATTENDED and a.action in WRITES
            ]
            results = await self._executor().act(
                run_id,
                unattended,
                approved=False,
                plan_id=plan.id,
                sign_in_times=sign_in_times,
                users=directory,
            )
            held = [a for a in plan.actions if a.gate is Gate.APPROVAL and a.action in WRITES]
            results |= {a.id: _waiting(a) for a in held}

        # The rest: blocked actions stay blocked; the incident comment is the
        # write-back step's (not this runner's).
        for action in plan.actions:
            if action.id not in results:
                results[action.id] = _left_alone(action)

        # Whatever waits for a person is stored for approval, bound to the plan's hash.
        if any(result.status is ActionStatus.AWAITING_APPROVAL for result in results.values()):
            store_plan(
                self.audit.store,
                self.audit,
                plan,
                requested_by=self.requested_by,
                mode=request.mode.value,
                expire_after=timedelta(hours=self.settings.approvals.expire_after_hours),
                sign_in_times=sign_in_times,
            )
        return results

    async def execute_plan(
        self,
        plan_id: str,
        *,
        executed_by: str,
        run_id: str | None = None,
        resume: bool = False,
        incident: IncidentRef | None = None,
    ) -> RunReport:
        """Execute an approved plan exactly as approved; refused otherwise.

        *resume* takes over an execution that stopped midway (the same
        *run_id*, retried); *incident* is where the outcome is reported.
        """
        stored = claim_for_execution(self.audit.store, plan_id, resume=resume)
        plan = stored.plan
        run_id = run_id or new_run_id()
        started = utcnow()
        self.audit.record(
            run_id,
            "run.started",
            {
                "trigger": "plans:execute",
                "mode": Mode.APPROVE.value,
                "plan": plan.id,
                "hash": stored.stored_hash,
                "approved_by": stored.approval["by"] if stored.approval else None,
                "executed_by": executed_by,
                "responder": self.responder.description,
            },
            actor=executed_by,
        )
        writes = [a for a in plan.actions if a.gate is not Gate.BLOCKED and a.action in WRITES]
        with listening_for_attempts(self._executor().hear):
            results = await self._executor().act(
                run_id, writes, approved=True, plan_id=plan.id, sign_in_times=stored.sign_in_times
            )
        for action in plan.actions:
            if action.id not in results:
                results[action.id] = _left_alone(action)
        self._contained(run_id, plan.actions, results, at=utcnow())
        self.audit.store.set_plan_status(plan.id, "executed")
        containment, users_contained = summarise(plan.actions, results)
        report = RunReport(
            run_id=run_id,
            playbook=self.playbook.id,
            mode=Mode.APPROVE,
            trigger=f"plans:execute {plan.id}",
            status=RunStatus.COMPLETE,
            started_at=started,
            ended_at=utcnow(),
            now=started,
            window=Window(start=plan.created_at, end=plan.created_at),
            source=f"approved plan {plan.id} (run {plan.run_id})",
            plan_id=plan.id,
            plan_hash=stored.stored_hash,
            actions=tuple(_action_report(a, results[a.id]) for a in plan.actions),
            containment=containment,
            users_contained=users_contained,
        )
        if incident is not None and self.writer is not None:
            report = await report_to_incident(
                report,
                incident=incident,
                writer=self.writer,
                audit=self.audit,
                label_prefix=self.settings.sentinel.label_prefix,
                api_version=self.settings.sentinel.api_version,
            )
        self.audit.record(
            run_id,
            "run.finished",
            {
                "trigger": report.trigger,
                "status": report.status.value,
                "containment": containment.value,
                "actions": _status_counts(report.actions),
            },
        )
        return report


class NoQueries:
    """The query source of a run that executes a stored plan: it runs none."""

    description = "none: an approved plan is executed as stored"

    async def run_queries(self, queries: Sequence[RenderedQuery]) -> list[Any]:
        raise TokenwardError("executing a stored plan runs no queries")


def colocated(source: QuerySource, first: Sequence[str], second: Sequence[str]) -> bool:
    """Whether *source* runs both table lists in one place (a plain source always does)."""
    check = getattr(source, "colocated", None)
    return True if check is None else bool(check(first, second))


def threat_ips(rows: Sequence[dict[str, Any]]) -> frozenset[str]:
    """The addresses the threat-intelligence query matched, in canonical form."""
    found = set()
    for row in rows:
        try:
            found.add(str(ipaddress.ip_address(text(row.get("IPAddress")).strip())))
        except ValueError:
            continue
    return frozenset(found)


def _reads(parameters: Mapping[str, ParamType], values: Mapping[str, Any]) -> Window:
    """The widest time a query reads, from the parameters its template declares."""
    start, end = values["start"], values["end"]
    if "before" in parameters:
        start = start - values["before"]
    if "days" in parameters:
        start = start - values["days"]
    if "after" in parameters:
        end = end + values["after"]
    if "lookback" in parameters:
        start = min(start, end - values["lookback"])
    return Window(start=start, end=end)


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
        sign_in=flow.primary,
        flow=flow.sign_ins,
        evidence=evidence,
        baseline=baseline,
        context=context,
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


class _NoDirectory:
    async def read_users(self, targets: Sequence[Target]) -> list[DirectoryUser]:
        raise TokenwardError("this runner has no directory reader")


def _target(finding: Finding) -> Target:
    return Target(user_principal_name=finding.user_principal_name, user_id=finding.user_id)


def _as_read(finding: Finding, directory: dict[str, DirectoryUser] | None) -> Finding:
    """The finding with the directory's object id and user type, when it was read."""
    user = (directory or {}).get(target_key(_target(finding)))
    if user is None or not user.found:
        return finding
    return finding.model_copy(
        update={"user_id": user.id, "is_guest": finding.is_guest or user.is_guest}
    )


def _sign_in_times(findings: Sequence[Finding]) -> dict[str, datetime]:
    times: dict[str, datetime] = {}
    for finding in findings:
        key = finding.user_principal_name.lower()
        times[key] = min(times.get(key, finding.sign_in_time), finding.sign_in_time)
    return times


def _waiting(action: PlannedAction) -> ActionResult:
    return ActionResult(
        action_id=action.id, status=ActionStatus.AWAITING_APPROVAL, detail="waits for an approver"
    )


def _left_alone(action: PlannedAction) -> ActionResult:
    if action.gate is Gate.BLOCKED:
        reasons = "; ".join(d.detail for d in action.decisions if d.gate is Gate.BLOCKED)
        return ActionResult(
            action_id=action.id, status=ActionStatus.BLOCKED, detail=f"never sent: {reasons}"
        )
    if action.action is ActionKind.COMMENT_ON_INCIDENT:
        # Incident write-back is a report step of its own (not this runner's).
        return ActionResult(
            action_id=action.id,
            status=ActionStatus.SKIPPED,
            detail="left to the incident write-back step",
        )
    return ActionResult(
        action_id=action.id, status=ActionStatus.AWAITING_APPROVAL, detail="waits for an approver"
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
        problem=result.problem,
        escalate=result.escalate,
        verified=result.verified,
    )


def _status_counts(reports: Sequence[ActionReport]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in reports:
        counts[item.status.value] = counts.get(item.status.value, 0) + 1
    return counts


def _seconds(start: datetime, end: datetime) -> float:
    return round((end - start).total_seconds(), 3)


def new_run_id(now: datetime | None = None) -> str:
    moment = now or utcnow()
    return f"r-{moment.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


__all__ = ["ActionStatus", "Gate", "NoQueries", "RunRequest", "Runner", "new_run_id"]
