"""The ``tokenward`` command: hunt, exercise, plans, doctor, audit and serve.

This is one of the two faces (with the webhook service) that wire concrete
connectors into the engine. Every failure ends with a one-line reason on
stderr and a non-zero exit: 1 for a failed run or bad input, 2 for a usage
error.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table

from connectors.clients import Clients
from connectors.credentials import build_credential
from connectors.doctor import Check, run_doctor
from connectors.exports.database import (
    MEMORY_LIMIT,
    LoadedExports,
    load_exports,
    memory_bytes,
)
from connectors.exports.loader import LoadSummary
from connectors.exports.local import LocalKqlSource
from connectors.exports.schemas import columns_used
from connectors.live import LiveMode, live_source
from playbooks import aio, approvals, logs
from playbooks.audit import AuditLog
from playbooks.engine import NoQueries, Runner, RunRequest, new_run_id
from playbooks.errors import InputError, SettingsError, TokenwardError
from playbooks.exercises import (
    bundled_scenarios,
    check_expected,
    find_scenario,
    load_scenario,
)
from playbooks.identities import is_guid, require_upn
from playbooks.models import Containment, Mode, RunReport, RunStatus, Window
from playbooks.playbook import Playbook, load_playbook, parse_set, read_overrides
from playbooks.reports import ReportContext, to_json
from playbooks.reports.markdown import to_markdown
from playbooks.reports.terminal import print_report
from playbooks.settings import Settings, SourceKind, load_settings
from playbooks.store import open_store
from playbooks.times import as_utc, isoformat_z, parse_duration, parse_time, utcnow
from playbooks.whatif import Thresholds, compare_runs
from playbooks.wiring import LIVE_SOURCES, graph_responder, permission_check
from playbooks.wiring import action_kinds as _action_kinds

logger = logging.getLogger(__name__)


def _report_path(
    context: click.Context, parameter: click.Parameter, value: Path | None
) -> Path | None:
    """A report file option, refused before the run if it cannot be written.

    A run in auto mode writes to the tenant; finding out afterwards that its
    report has nowhere to go would leave the operator without the record of
    what was done.
    """
    if value is None:
        return None
    problem = _unwritable(value)
    if problem:
        raise click.BadParameter(f"{value}: {problem}", param=parameter)
    return value


def _unwritable(path: Path) -> str | None:
    """Why *path* cannot take a report, or ``None`` if it can."""
    if path.is_dir():
        return "is a directory"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Writing is the only test that holds for every file system and user.
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tokenward-"):
            pass
    except OSError as failure:
        return f"cannot write there ({failure.strerror or type(failure).__name__})"
    return None


MAX_WINDOW = timedelta(days=90)
T = TypeVar("T")


@dataclass
class App:
    """What every command needs, built once from the global options."""

    config: Path | None
    out: Console
    err: Console

    def settings(self) -> Settings:
        return load_settings(self.config)

    def audit(self, settings: Settings) -> AuditLog:
        key = settings.audit.hmac_key
        return AuditLog(
            open_store(settings.store.url),
            key=key.get_secret_value().encode() if key is not None else None,
        )


pass_app = click.make_pass_decorator(App)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TOKENWARD_CONFIG",
    help="Settings file (default: ./config/tokenward.toml if present).",
)
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.version_option(package_name="tokenward")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, verbose: int) -> None:
    """Hunt, score and contain Entra ID device code phishing."""
    logs.configure(verbose)
    ctx.obj = App(config=config, out=Console(), err=Console(stderr=True))


# -- hunt ----------------------------------------------------------------------


@cli.command()
@click.option(
    "--source",
    "source_spec",
    required=True,
    metavar="files:DIR|loganalytics|defender|live",
    help="Where the logs are: files:DIR (exports), loganalytics (the Sentinel workspace), "
    "defender (advanced hunting, for a workspace onboarded to the Defender portal), "
    "live (each table from [sources], e.g. mail and clicks from Defender).",
)
@click.option("--start", help="Window start (ISO 8601, e.g. 2026-01-15T00:00:00Z).")
@click.option("--end", help="Window end (ISO 8601); default: --now.")
@click.option("--since", help="Window length back from the end, e.g. 24h or 7d.")
@click.option("--now", "now_text", help="The run's clock (ISO 8601); default: the wall clock.")
@click.option(
    "--user", "users", multiple=True, metavar="UPN|ID", help="Hunt only these users (repeatable)."
)
@click.option(
    "--mode",
    type=click.Choice([mode.value for mode in Mode]),
    default=Mode.DRY_RUN.value,
    show_default=True,
    help="dry-run sends nothing; approve stores the plan for an approver; auto runs the unattended tiers.",
)
@click.option(
    "--requested-by",
    "requested_by",
    metavar="NAME",
    help="Who asks for the plan (default: the login name).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the JSON report instead of the summary."
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_report_path,
    help="Also write the JSON report to this file.",
)
@click.option(
    "--markdown",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_report_path,
    help="Also write the report as Markdown.",
)
@click.option(
    "--report",
    "html_report",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_report_path,
    help="Also write the report as one self-contained HTML file.",
)
@click.option(
    "--cache",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE.duckdb",
    help="Keep the loaded tables in this DuckDB file; a later hunt over the same, "
    "unchanged files reuses them instead of parsing the files again.",
)
@click.option(
    "--memory-limit",
    default="1GB",
    show_default=True,
    metavar="SIZE",
    help="What DuckDB may hold in memory. Exports whose tables fit load in memory "
    "(fastest); larger ones load into a compressed temporary file.",
)
@click.option(
    "--skip-bad-records",
    is_flag=True,
    help="Leave out records that cannot be read (and files in no known shape), "
    "count them and say so, instead of stopping.",
)
@pass_app
def hunt(
    app: App,
    source_spec: str,
    start: str | None,
    end: str | None,
    since: str | None,
    now_text: str | None,
    users: Sequence[str],
    mode: str,
    requested_by: str | None,
    as_json: bool,
    output: Path | None,
    markdown: Path | None,
    html_report: Path | None,
    cache: Path | None,
    memory_limit: str,
    skip_bad_records: bool,
) -> None:
    """Hunt a time window for device code phishing; contain it in approve or auto mode."""
    settings = app.settings()
    audit = app.audit(settings)
    run_mode = Mode(mode)
    live = LIVE_SOURCES.get(source_spec)
    with contextlib.ExitStack() as stack:
        with _failed_runs_audited(audit, trigger="cli:hunt", mode=run_mode):
            playbook = load_playbook(settings.playbook.path)
            now = _instant(now_text, "--now") if now_text else utcnow()
            if start and since:
                raise click.BadParameter(
                    "--start and --since both say where the window starts: give one",
                    param_hint="--start/--since",
                )
            window = _window(
                start,
                end,
                since or settings.hunt.default_since,
                now,
                end_is="--end" if end else "--now" if now_text else "the wall clock",
            )
            scope = tuple(_user(value) for value in users)
            local: LocalKqlSource | None = None
            warnings: tuple[str, ...] = ()
            if live is None:
                kind, _, argument = source_spec.partition(":")
                if kind != "files" or not argument:
                    raise click.BadParameter(
                        "use files:DIR (a directory of exported logs), loganalytics, "
                        "defender or live",
                        param_hint="--source",
                    )
                directory = Path(argument)
                loaded = stack.enter_context(
                    _load(
                        app,
                        directory,
                        playbook,
                        cache=cache,
                        skip_bad_records=skip_bad_records,
                        memory_limit=memory_limit,
                    )
                )
                local = LocalKqlSource(loaded.con, now=now, origin=f"exported files in {directory}")
                warnings = tuple(loaded.summary.warnings) + _outside_window(loaded.con, window)
        request = RunRequest(
            trigger="cli:hunt",
            mode=run_mode,
            window=window,
            now=now,
            users=scope,
            warnings=warnings,
        )
        if run_mode is Mode.DRY_RUN:
            _warn_unless_permitted(app, settings, playbook)
        report = aio.run(
            _hunt(
                settings,
                playbook,
                audit,
                request,
                local=local,
                live=live,
                requester=requested_by or _login_name(),
            )
        )
    context = ReportContext(thresholds=_thresholds(playbook), correlation=_correlation(playbook))
    _emit(app, report, as_json=as_json, output=output, markdown=markdown, context=context)
    if html_report is not None:
        _write(html_report, to_html(report, context=context))
        app.err.print(f"HTML report: {html_report}", style="dim")
    if report.plan_id and approvals_pending(audit, report.plan_id):
        app.err.print(
            f"plan stored for approval: {report.plan_id} (tokenward plans show {report.plan_id})"
        )
    _exit_for(report)


# -- plans ---------------------------------------------------------------------


@cli.group()
def plans() -> None:
    """Plans stored for approval: list, show, approve, reject, execute."""


@plans.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@pass_app
def plans_list(app: App, limit: int) -> None:
    """Stored plans, newest first."""
    store = app.audit(app.settings()).store
    rows = store.list_plans(limit=limit)
    if not rows:
        app.out.print("no stored plans")
    for row in rows:
        stored = approvals.load_plan(store, row["id"])
        users = sorted({t.label for a in stored.plan.actions for t in a.targets})
        app.out.print(
            f"{row['id']}  {row['status']:<9} {row['created_at']}  "
            f"{len(stored.plan.actions)} action(s)  {', '.join(users)}  "
            f"sha256 {row['content_hash'][:12]}…",
            highlight=False,
        )


@plans.command("show")
@click.argument("plan_id")
@click.option("--json", "as_json", is_flag=True, help="Print the stored plan as JSON.")
@pass_app
def plans_show(app: App, plan_id: str, as_json: bool) -> None:
    """One plan: every request it would send, its gates, hash and decisions."""
    stored = approvals.load_plan(app.audit(app.settings()).store, plan_id)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "plan": stored.plan.model_dump(mode="json"),
                    "status": stored.status,
                    "requested_by": stored.requested_by,
                    "expires_at": isoformat_z(stored.expires_at),
                    "decisions": list(stored.decisions),
                },
                indent=2,
                sort_keys=True,
            )
        )
        return
    plan = stored.plan
    app.out.print(f"[bold]{plan.id}[/]  {stored.status}  from run {plan.run_id} ({stored.mode})")
    app.out.print(
        f"requested by {stored.requested_by} · created {isoformat_z(plan.created_at)}"
        f" · expires {isoformat_z(stored.expires_at)}",
        highlight=False,
    )
    app.out.print(f"sha256 {stored.stored_hash}", highlight=False)
    for action in plan.actions:
        who = ", ".join(t.label for t in action.targets) or "incident"
        request = action.request
        body = f" {json.dumps(request.body, sort_keys=True)}" if request.body else ""
        app.out.print(f"- {action.action.value} {who} [{action.gate.value}]", highlight=False)
        app.out.print(f"    {request.method} {request.path}{body}", highlight=False, markup=False)
        for decision in action.decisions:
            app.out.print(
                f"    {decision.guardrail}: {decision.detail}", style="dim", highlight=False
            )
        for note in action.notes:
            app.out.print(f"    note: {note}", style="dim", highlight=False)
    for taken in stored.decisions:
        reason = f": {taken['reason']}" if taken["reason"] else ""
        app.out.print(
            f"{taken['decision']} by {taken['by']} at {taken['at']}"
            f" (sha256 {taken['plan_hash'][:12]}…){reason}",
            highlight=False,
        )


@plans.command("approve")
@click.argument("plan_id")
@click.option("--by", "by", required=True, metavar="NAME", help="The approver's name.")
@click.option("--reason", help="Why, for the audit.")
@pass_app
def plans_approve(app: App, plan_id: str, by: str, reason: str | None) -> None:
    """Approve a pending plan (bound to its hash); execute it with plans execute."""
    _decide(app, plan_id, approvals.APPROVED, by, reason)


@plans.command("reject")
@click.argument("plan_id")
@click.option("--by", "by", required=True, metavar="NAME", help="Who rejects it.")
@click.option("--reason", help="Why, for the audit.")
@pass_app
def plans_reject(app: App, plan_id: str, by: str, reason: str | None) -> None:
    """Reject a pending plan: it can never be executed."""
    _decide(app, plan_id, approvals.REJECTED, by, reason)


@plans.command("execute")
@click.argument("plan_id")
@click.option("--by", "by", metavar="NAME", help="Who executes it (default: the login name).")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the JSON report instead of the summary."
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_report_path,
    help="Also write the JSON report to this file.",
)
@pass_app
def plans_execute(
    app: App, plan_id: str, by: str | None, as_json: bool, output: Path | None
) -> None:
    """Execute an approved plan, exactly as approved."""
    settings = app.settings()
    audit = app.audit(settings)
    playbook = load_playbook(settings.playbook.path)
    # Refused before any token is asked for if it may not run.
    stored = approvals.executable(audit.store, plan_id)
    report = _with_graph(
        settings,
        playbook,
        lambda responder: Runner(
            playbook, settings, NoQueries(), audit, responder=responder, directory=responder
        ).execute_plan(plan_id, executed_by=by or _login_name()),
        kinds=[action.action for action in stored.plan.actions],
    )
    _emit(app, report, as_json=as_json, output=output, markdown=None)
    _exit_for(report)


async def _hunt(
    settings: Settings,
    playbook: Playbook,
    audit_log: AuditLog,
    request: RunRequest,
    *,
    local: LocalKqlSource | None,
    live: LiveMode | None,
    requester: str,
) -> RunReport:
    """One hunt; every client it needs lives and dies in this event loop.

    Exports in dry-run need nothing from Microsoft. A live source needs the
    query clients, and approve and auto need the Graph responder (after the
    permission preflight); both share one credential.
    """
    writes = request.mode is not Mode.DRY_RUN
    if local is not None and not writes:
        return await Runner(playbook, settings, local, audit_log).run(request)
    credential = build_credential(settings.azure)
    async with Clients(settings.azure, credential) as clients:
        source = local if local is not None else live_source(settings, clients, mode=live or "live")
        if not writes:
            return await Runner(playbook, settings, source, audit_log).run(request)
        responder = await graph_responder(settings, playbook, credential, clients)
        runner = Runner(
            playbook,
            settings,
            source,
            audit_log,
            responder=responder,
            directory=responder,
            requested_by=requester,
        )
        return await runner.run(request)


# -- doctor --------------------------------------------------------------------


@cli.command()
@pass_app
def doctor(app: App) -> None:
    """Check the sign-in, the workspace, the tables and the Graph permissions."""
    settings = app.settings()
    playbook = load_playbook(settings.playbook.path)
    read = {t for spec in playbook.spec.queries.values() for t in spec.tables}
    tables: dict[SourceKind, list[str]] = {}
    for table in sorted(read):
        tables.setdefault(settings.sources.source_for(table), []).append(table)
    # A misspelt table in [sources.tables] would silently route nothing.
    unread = [
        Check(
            f"sources.tables.{name}",
            False,
            f"the playbook reads no table named {name}",
            f"the tables it reads: {', '.join(sorted(read))}",
        )
        for name in sorted(set(settings.sources.tables) - read)
    ]
    endpoints = settings.azure.endpoints()
    click.echo(
        f"cloud {endpoints.cloud.value}: sign-in {endpoints.authority_host}, Graph "
        f"{endpoints.graph_base_url}, Log Analytics {endpoints.log_analytics_endpoint}"
    )

    async def check() -> list[Check]:
        async with Clients(settings.azure, build_credential(settings.azure)) as clients:
            return await run_doctor(settings, clients, tables=tables)

    checks = unread + aio.run(check())
    # The app roles the configured actions need, from the Graph token itself.
    try:
        permissions = aio.run(_permission_check(settings, playbook))
    except TokenwardError as failure:
        checks.append(
            Check("Graph permissions", False, f"the Graph token could not be read ({failure})", "")
        )
    else:
        for requirement in permissions.needed:
            granted = requirement.met_by(permissions.roles)
            checks.append(
                Check(
                    "Graph permission",
                    granted,
                    f"{'granted' if granted else 'missing'} {requirement.permission} "
                    f"(needed for {requirement.needed_for})",
                    "" if granted else "grant the application permission and admin consent",
                )
            )
    # Plain lines, unwrapped: they are read by people and by scripts alike.
    for item in checks:
        click.echo(f"{'ok  ' if item.ok else 'FAIL'} {item.name}: {item.detail}")
        if item.hint:
            click.echo(f"     → {item.hint}")
    failed = [item for item in checks if not item.ok]
    if failed:
        _fail(f"{len(failed)} of {len(checks)} checks failed")
    click.echo(f"all {len(checks)} checks passed")


# -- exercise ------------------------------------------------------------------


@cli.command()
@click.argument("name", required=False)
@click.option("--list", "list_only", is_flag=True, help="List the bundled scenarios.")
@click.option(
    "--file",
    "scenario_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Run a scenario from a YAML file (format: docs/scenarios.md).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="What-if: override a playbook key, e.g. scoring.thresholds.high=60 (repeatable).",
)
@click.option(
    "--overrides",
    "override_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="What-if: a YAML file of playbook keys to override.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the JSON report instead of the summary."
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_report_path,
    help="Also write the JSON report to this file.",
)
@click.option(
    "--markdown",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_report_path,
    help="Where to write the Markdown report (default: reports/NAME.md).",
)
@click.option(
    "--report",
    "html_report",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_report_path,
    help="Where to write the HTML report (default: reports/NAME.html).",
)
@pass_app
def exercise(
    app: App,
    name: str | None,
    list_only: bool,
    scenario_file: Path | None,
    sets: Sequence[str],
    override_file: Path | None,
    as_json: bool,
    output: Path | None,
    markdown: Path | None,
    html_report: Path | None,
) -> None:
    """Run a tabletop scenario in dry-run and report what tokenward would do.

    With --set or --overrides the scenario runs twice, with the playbook as it
    is and with the changes, and the report shows which findings change tier.
    The scenario's expected outcome is checked against the unchanged playbook;
    the command fails when it is not met.
    """
    if list_only:
        _list_scenarios(app)
        return
    if scenario_file and name:
        raise click.UsageError("give a scenario NAME or --file, not both")
    path = scenario_file or find_scenario(name or "seed-true-positive")
    scenario = load_scenario(path)
    markdown_path = markdown or Path("reports") / f"{scenario.name}.md"
    html_path = html_report or Path("reports") / f"{scenario.name}.html"
    for report_path in {markdown_path, html_path} - {markdown, html_report}:
        problem = _unwritable(report_path)
        if problem:
            raise click.UsageError(f"the report {report_path}: {problem}; give --markdown/--report")
    settings = scenario.with_settings(app.settings())
    playbook = load_playbook(settings.playbook.path)
    overrides = [parse_set(item) for item in sets]
    if override_file is not None:
        overrides += read_overrides(override_file)
    changed = load_playbook(settings.playbook.path, overrides=overrides) if overrides else None
    audit = app.audit(settings)

    # Load the case once, through the same loader as real exports.
    trigger = f"exercise:{scenario.name}"
    with (
        tempfile.TemporaryDirectory(prefix="tokenward-exercise-") as folder,
        contextlib.ExitStack() as stack,
    ):
        directory = Path(folder)
        _write_tables(directory, scenario.tables())
        with _failed_runs_audited(audit, trigger=trigger, mode=Mode.DRY_RUN):
            loaded = stack.enter_context(_load(app, directory, playbook))
        source = LocalKqlSource(
            loaded.con, now=scenario.clock, origin=f"scenario {scenario.name} ({path.name})"
        )
        request = RunRequest(
            trigger=trigger,
            mode=Mode.DRY_RUN,
            window=Window(start=scenario.clock - scenario.since, end=scenario.clock),
            now=scenario.clock,
            warnings=tuple(loaded.summary.warnings),
        )

        # The playbook as it is; then, for a what-if, with the changes.
        baseline = aio.run(Runner(playbook, settings, source, audit).run(request))
        problems = check_expected(scenario, baseline)
        report, what_if = baseline, None
        if changed is not None:
            what_if_request = replace(request, trigger=f"{trigger}:what-if")
            report = aio.run(Runner(changed, settings, source, audit).run(what_if_request))
            what_if = compare_runs(
                baseline,
                report,
                overrides=changed.overrides,
                thresholds_before=_thresholds(playbook),
                thresholds_after=_thresholds(changed),
                expected_before=problems,
                expected_after=check_expected(scenario, report),
            )

    # Hand it round: the terminal, and the documents the team looks at.
    context = ReportContext(
        title=scenario.title,
        description=scenario.description,
        expected=problems,
        thresholds=_thresholds(changed or playbook),
        correlation=_correlation(changed or playbook),
        what_if=what_if,
        scenario=scenario.name,
    )
    _write(markdown_path, to_markdown(report, context=context))
    _write(html_path, to_html(report, context=context))
    _emit(app, report, as_json=as_json, output=output, markdown=None, context=context)
    app.err.print(f"Markdown report: {markdown_path}", style="dim")
    app.err.print(f"HTML report: {html_path}", style="dim")
    _exit_for(report)
    if problems:
        _fail(f"the scenario's expected outcome was not met ({len(problems)} difference(s))")


def _list_scenarios(app: App) -> None:
    table = Table(box=None, show_header=True, header_style="bold", padding=(0, 2, 0, 0))
    table.add_column("scenario", no_wrap=True)
    table.add_column("expected", no_wrap=True)
    table.add_column("what happens")
    for path in bundled_scenarios():
        scenario = load_scenario(path)
        tiers = ", ".join(f"{item.tier}" for item in scenario.expected.findings) or "no finding"
        table.add_row(scenario.name, tiers, scenario.title)
    app.out.print(table)
    app.out.print(
        "Run one with [bold]tokenward exercise NAME[/]; write your own from "
        "docs/scenarios.md and run it with [bold]--file[/].",
        style="dim",
    )


def _write_tables(directory: Path, tables: dict[str, list[dict[str, Any]]]) -> None:
    for table, rows in tables.items():
        if rows:
            with (directory / f"{table}.jsonl").open("w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in rows)


def _correlation(playbook: Playbook) -> tuple[timedelta, timedelta]:
    window = playbook.spec.correlation
    return (window.before, window.after)


def _thresholds(playbook: Playbook) -> Thresholds:
    given = playbook.spec.scoring.thresholds
    return Thresholds(high=given.high, medium=given.medium)


# -- audit ---------------------------------------------------------------------


@cli.group()
def audit() -> None:
    """Inspect and verify the tamper-evident audit log."""


@audit.command("verify")
@pass_app
def audit_verify(app: App) -> None:
    """Check that no audit record was edited, inserted or deleted."""
    settings = app.settings()
    result = app.audit(settings).verify()
    if result.unverifiable is not None:
        _fail(f"the audit cannot be verified: {result.unverifiable}")
    if result.ok and result.checked == 0:
        # Nothing to check is no proof: a mistyped [store] url opens a new, empty database.
        _fail(
            f"the audit in {_shown_url(settings.store.url)} holds no records: nothing was "
            "verified (is [store] url the database tokenward ran with?)"
        )
    if result.ok:
        app.out.print(f"audit chain intact: {result.checked} record(s) verified")
        return
    for problem in result.problems:
        app.err.print(f"tampered: {problem}", style="red")
    _fail(
        f"the audit chain is broken ({len(result.problems)} problem(s) in {result.checked} records)"
    )


@audit.command("show")
@click.option("--run", "run_id", help="Only this run's records.")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print records as JSON lines.")
@pass_app
def audit_show(app: App, run_id: str | None, limit: int, as_json: bool) -> None:
    """Show audit records, oldest first."""
    records = app.audit(app.settings()).records(run_id=run_id, limit=limit)
    if not records:
        if run_id is not None:
            _fail(f"no audit record belongs to run {run_id!r} (tokenward audit show lists them)")
        app.err.print("the audit holds no records yet", style="dim")
    for record in records:
        if as_json:
            click.echo(json.dumps(record.__dict__, sort_keys=True))
            continue
        summary = json.dumps(record.data, sort_keys=True)
        if len(summary) > 160:
            summary = summary[:157] + "..."
        app.out.print(
            f"{record.seq:>6} {record.at} {record.run_id} [bold]{record.kind}[/] {summary}",
            markup=True,
            highlight=False,
        )


# -- serve and worker ------------------------------------------------------------


SERVICE_SOURCE = "files:DIR, loganalytics, defender or live"


@cli.command()
@click.option(
    "--source",
    "source_spec",
    metavar="SOURCE",
    help=f"Where the service's runs hunt: {SERVICE_SOURCE}.",
)
@click.option(
    "--now", "now_text", help="Pin the runs' clock (ISO 8601), for exports of a past day."
)
@click.option("--host", help="Listen address (default: server.host).")
@click.option("--port", type=click.IntRange(1, 65535), help="Listen port (default: server.port).")
@click.option(
    "--no-worker", is_flag=True, help="Only accept deliveries; run `tokenward worker` apart."
)
@pass_app
def serve(
    app: App,
    source_spec: str | None,
    now_text: str | None,
    host: str | None,
    port: int | None,
    no_worker: bool,
) -> None:
    """Serve the Sentinel webhook, plan approvals, health checks and metrics (uvicorn);
    with [schedule], also hunt and reconcile on a schedule."""
    from playbooks.server import build_parts
    from playbooks.server import serve as run_server

    settings = _listening_on(app.settings(), host=host, port=port)
    with_worker = settings.inbox.worker and not no_worker
    spec = _source_spec(source_spec, now_text) if source_spec else None
    from playbooks.server import listen

    parts = build_parts(settings, spec=spec, with_worker=with_worker, store_apart=True)
    sock = listen(settings)
    scheme = "https" if settings.server.certfile else "http"
    app.err.print(
        f"tokenward serving on {scheme}://{settings.server.host}:{settings.server.port}",
        style="dim",
    )
    run_server(parts, sock)


@cli.command()
@click.option(
    "--source",
    "source_spec",
    required=True,
    metavar="SOURCE",
    help=f"Where runs hunt: {SERVICE_SOURCE}.",
)
@click.option(
    "--now", "now_text", help="Pin the runs' clock (ISO 8601), for exports of a past day."
)
@pass_app
def worker(app: App, source_spec: str, now_text: str | None) -> None:
    """Process the inbox: webhook deliveries, scheduled cycles, approved plans
    (for workers apart from tokenward serve)."""
    from playbooks.server import build_worker
    from playbooks.wiring import require_credential, require_source

    settings = app.settings()
    spec = _source_spec(source_spec, now_text)
    require_source(spec)
    require_credential(settings, spec)
    processing = build_worker(settings, spec)
    app.err.print(f"tokenward worker {processing.owner} processing the inbox", style="dim")
    aio.run(_until_signalled(processing.run_forever))


@cli.command()
@click.option(
    "--source",
    "source_spec",
    default="live",
    show_default=True,
    metavar="SOURCE",
    help=f"Where the scheduled hunt looks: {SERVICE_SOURCE}.",
)
@pass_app
def watch(app: App, source_spec: str) -> None:
    """Hunt and reconcile on the schedule in [schedule], with no webhook: one
    process with the worker and a Prometheus listener (metrics.host:port)."""
    from playbooks.watch import prepare_watch
    from playbooks.watch import watch as run_watch

    settings = app.settings()
    worker = prepare_watch(settings, _source_spec(source_spec, None))

    def started() -> None:
        app.err.print("tokenward watching: " + ", ".join(_jobs_line(settings)), style="dim")

    aio.run(_until_signalled(lambda stop: run_watch(settings, worker, stop, on_started=started)))


def _source_spec(text: str, now_text: str | None) -> Any:
    """``--source`` (and ``--now``) for the service's runs; a usage error, as hunt's."""
    from playbooks.wiring import SourceSpec

    now = _instant(now_text, "--now") if now_text else None
    try:
        return SourceSpec.parse(text, now=now)
    except SettingsError as failure:
        raise click.BadParameter(failure.message, param_hint="--source") from None


def _listening_on(settings: Settings, *, host: str | None, port: int | None) -> Settings:
    """*settings* with ``--host``/``--port`` in ``[server]``, checked as the file's are."""
    from pydantic import ValidationError

    from playbooks.yamlsource import describe

    if not (host or port):
        return settings
    given = {k: v for k, v in (("host", host), ("port", port)) if v}
    try:
        server = type(settings.server).model_validate({**settings.server.model_dump(), **given})
    except ValidationError as failure:
        flags = " ".join(f"--{k} {v}" for k, v in given.items())
        raise SettingsError(f"{flags}: {describe(failure.errors()[0])}") from None
    return settings.model_copy(update={"server": server})


def _jobs_line(settings: Settings) -> list[str]:
    from playbooks.schedule import job_intervals

    return [f"{name} every {every:g} s" for name, every in job_intervals(settings.schedule)] or [
        "no job is turned on"
    ]


async def _until_signalled(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run *run* with an event that SIGINT or SIGTERM sets."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await run(stop)


# -- helpers -------------------------------------------------------------------


@contextmanager
def _load(
    app: App,
    directory: Path,
    playbook: Playbook,
    *,
    cache: Path | None = None,
    skip_bad_records: bool = False,
    memory_limit: str = MEMORY_LIMIT,
) -> Iterator[LoadedExports]:
    """The exports loaded with the columns the playbook's queries name."""
    try:
        memory_bytes(memory_limit)
    except ValueError as failure:
        raise click.BadParameter(str(failure), param_hint="--memory-limit") from None
    with contextlib.ExitStack() as stack:
        with app.err.status(f"loading exports from {directory}…") as status:

            def progress(name: str, rows: int) -> None:
                status.update(f"loaded {name} ({rows:,} rows)…")

            loaded = stack.enter_context(
                load_exports(
                    directory,
                    cache=cache,
                    skip_bad_records=skip_bad_records,
                    on_progress=progress,
                    memory_limit=memory_limit,
                    columns=columns_used(playbook.templates.values()),
                )
            )
        _print_load(app, loaded)
        yield loaded


def _print_load(app: App, loaded: LoadedExports) -> None:
    summary: LoadSummary = loaded.summary
    if loaded.reused:
        app.err.print(f"reused the tables cached in {loaded.database}", style="dim")
    for item in summary.files:
        tables = ", ".join(f"{table} {rows:,}" for table, rows in sorted(item.tables.items()))
        line = f"  {Path(item.path).name}: {item.shape} ({item.framing}): {tables or 'no rows'}"
        if item.skipped:
            skipped = ", ".join(f"{name} {count:,}" for name, count in sorted(item.skipped.items()))
            line += f"; skipped, not read by tokenward: {skipped}"
        if item.bad_records:
            line += f"; {item.bad_records:,} bad record(s) left out, first: {item.problem}"
        app.err.print(line, style="dim", markup=False, highlight=False)
    totals = ", ".join(f"{table} {rows:,}" for table, rows in sorted(summary.rows.items()))
    app.err.print(f"loaded {len(summary.files)} file(s): {totals or 'no rows'}", style="dim")


def _instant(text: str, option: str) -> datetime:
    try:
        return parse_time(text).value
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a time (use e.g. 2026-01-15T09:00:00Z)", param_hint=option
        ) from None


def _window(
    start: str | None, end: str | None, since: str, now: datetime, *, end_is: str = "--end"
) -> Window:
    end_at = _instant(end, "--end") if end else now
    if start:
        start_at = _instant(start, "--start")
    else:
        try:
            start_at = end_at - parse_duration(since)
        except ValueError as failure:
            raise click.BadParameter(str(failure), param_hint="--since") from None
    if start_at >= end_at:
        ends = f"{isoformat_z(end_at)}, {end_is}" + (
            "; give --end or --now for a past window" if end_is == "the wall clock" else ""
        )
        raise click.BadParameter(
            f"the window starts ({isoformat_z(start_at)}) at or after it ends ({ends})",
            param_hint="--start" if not end else "--start/--end",
        )
    if end_at - start_at > MAX_WINDOW:
        raise click.BadParameter(
            f"the window is longer than {MAX_WINDOW.days} days", param_hint="--start/--since"
        )
    return Window(start=as_utc(start_at), end=as_utc(end_at))


def _outside_window(con: Any, window: Window) -> tuple[str, ...]:
    """A warning when the exported sign-ins all lie outside the hunt window
    (an old export hunted without --now finds nothing, and should say why)."""
    spans = []
    for table in ("SigninLogs", "AADNonInteractiveUserSignInLogs"):
        try:
            spans.append(
                con.execute(
                    f'SELECT min("TimeGenerated"), max("TimeGenerated"), '
                    f'count(*) FILTER (WHERE "TimeGenerated" >= ? AND "TimeGenerated" < ?) '
                    f'FROM "{table}"',
                    [window.start, window.end],
                ).fetchone()
            )
        except Exception:  # a table the load did not create
            continue
    spans = [span for span in spans if span and span[0] is not None]
    if not spans or any(span[2] for span in spans):
        return ()
    first = as_utc(min(span[0] for span in spans))
    last = as_utc(max(span[1] for span in spans))
    return (
        f"no exported sign-in falls in the window ({isoformat_z(window.start)} to "
        f"{isoformat_z(window.end)}): they run from {isoformat_z(first)} to "
        f"{isoformat_z(last)}; for an old export give --now {isoformat_z(last)} "
        "or --start/--end",
    )


def _user(value: str) -> str:
    if is_guid(value):
        return value.lower()
    try:
        return require_upn(value).lower()
    except InputError as failure:
        raise click.BadParameter(str(failure), param_hint="--user") from None


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


def approvals_pending(audit_log: AuditLog, plan_id: str) -> bool:
    row = audit_log.store.plan(plan_id)
    return row is not None and row["status"] == approvals.PENDING


def _decide(app: App, plan_id: str, decision: str, by: str, reason: str | None) -> None:
    settings = app.settings()
    audit_log = app.audit(settings)
    stored = approvals.decide(
        audit_log.store,
        audit_log,
        plan_id,
        decision=decision,
        by=by,
        reason=reason,
        require_distinct_approver=settings.approvals.require_distinct_approver,
    )
    app.out.print(f"plan {plan_id} {stored.status} by {by} (sha256 {stored.stored_hash[:12]}…)")


async def _permission_check(settings: Settings, playbook: Playbook) -> Any:
    return await permission_check(settings, _action_kinds(playbook))


def _warn_unless_permitted(app: App, settings: Settings, playbook: Playbook) -> None:
    """Dry-run with a credential configured: say what execute modes would lack."""
    if settings.azure.credential.kind is None:
        return
    try:
        check = aio.run(_permission_check(settings, playbook))
    except TokenwardError as failure:
        app.err.print(f"warning: the permission preflight could not run: {failure}", style="yellow")
        return
    if not check.ok:
        app.err.print(
            f"warning: {check.summary()}; approve and auto would refuse to start", style="yellow"
        )


def _with_graph(
    settings: Settings,
    playbook: Playbook,
    use: Callable[[Any], Awaitable[T]],
    *,
    kinds: Sequence[Any] | None = None,
) -> T:
    """Run *use* with a Graph responder, credential and clients in one event loop.

    They are made inside the loop and closed with it (B15: an async client
    outliving its loop fails with "Event loop is closed").
    """

    async def run() -> T:
        credential = build_credential(settings.azure)
        async with Clients(settings.azure, credential) as clients:
            return await use(
                await graph_responder(settings, playbook, credential, clients, kinds=kinds)
            )

    return aio.run(run())


@contextmanager
def _failed_runs_audited(audit_log: AuditLog, *, trigger: str, mode: Mode) -> Iterator[None]:
    """A run that fails before it starts (a bad export, window or playbook) is
    still audited, with the reason it failed."""
    try:
        yield
    except (TokenwardError, click.ClickException) as failure:
        reason = (
            failure.format_message() if isinstance(failure, click.ClickException) else str(failure)
        )
        run_id = new_run_id()
        audit_log.record(run_id, "run.started", {"trigger": trigger, "mode": mode.value})
        audit_log.record(run_id, "run.failed", {"error": f"{type(failure).__name__}: {reason}"})
        raise


def _emit(
    app: App,
    report: RunReport,
    *,
    as_json: bool,
    output: Path | None,
    markdown: Path | None,
    context: ReportContext | None = None,
) -> None:
    if as_json:
        click.echo(to_json(report))
    else:
        print_report(report, app.out, context=context)
    if output is not None:
        _write(output, to_json(report) + "\n")
    if markdown is not None:
        _write(markdown, to_markdown(report, context=context))


def to_html(report: RunReport, *, context: ReportContext) -> str:
    # Imported here: matplotlib takes most of a second to load, and only the
    # commands that write an HTML report need it.
    from playbooks.reports.html import to_html as render

    return render(report, context=context)


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as failure:
        raise TokenwardError(
            f"the run is complete and in the audit, but its report could not be written "
            f"to {path} ({failure.strerror or type(failure).__name__}); "
            "the run's records are in the audit (tokenward audit show)"
        ) from None


def _exit_for(report: RunReport) -> None:
    if report.status is RunStatus.FAILED:
        _fail(report.error or "the run failed")
    if report.containment in (Containment.PARTIALLY_CONTAINED, Containment.NOT_CONTAINED):
        # The run worked, but not everything it sent took effect: a person must look.
        waiting = [u.user for u in report.users_contained if u.escalate]
        click.echo(
            f"tokenward: {report.containment.value}; escalate: {', '.join(waiting) or 'see the report'}",
            err=True,
        )
        sys.exit(3)


def _shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _fail(message: str) -> NoReturn:
    click.echo(f"tokenward: {message}", err=True)
    sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI and turn tokenward errors into one-line exits."""
    try:
        code = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="tokenward",
            standalone_mode=False,
        )
    except click.exceptions.Abort:
        click.echo("tokenward: aborted", err=True)
        sys.exit(130)
    except click.ClickException as failure:
        failure.show()
        sys.exit(failure.exit_code)
    except TokenwardError as failure:
        click.echo(f"tokenward: {type(failure).__name__}: {failure}", err=True)
        sys.exit(1)
    except Exception:
        logger.exception("internal error")
        click.echo("tokenward: internal error (run with -v for details)", err=True)
        sys.exit(70)
    if isinstance(code, int) and code:
        sys.exit(code)
