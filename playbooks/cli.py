"""The ``tokenward`` command: hunt, exercise, audit, and the webhook service.

This is one of the two faces (with the webhook service) that wire concrete
connectors into the engine. Every failure ends with a one-line reason on
stderr and a non-zero exit: 1 for a failed run or bad input, 2 for a usage
error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
import duckdb_kql
from rich.console import Console

from connectors.exports.loader import ExportLoader, LoadSummary
from connectors.exports.local import LocalKqlSource
from playbooks import logs
from playbooks.audit import AuditLog
from playbooks.engine import RunRequest, Runner, new_run_id
from playbooks.errors import InputError, TokenwardError
from playbooks.exercises import bundled_scenarios, check_expected, find_scenario, load_scenario
from playbooks.identities import is_guid, require_upn
from playbooks.models import Mode, RunReport, RunStatus, Window
from playbooks.playbook import Playbook, load_playbook
from playbooks.reports import to_json
from playbooks.reports.markdown import to_markdown
from playbooks.reports.terminal import print_report
from playbooks.settings import Settings, load_settings
from playbooks.store import open_store
from playbooks.times import as_utc, isoformat_z, parse_duration, parse_time, utcnow

logger = logging.getLogger(__name__)

MAX_WINDOW = timedelta(days=90)


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
@click.option("--source", "source_spec", required=True, metavar="files:DIR", help="Where the logs are: files:DIR for a directory of exports.")
@click.option("--start", help="Window start (ISO 8601, e.g. 2026-01-15T00:00:00Z).")
@click.option("--end", help="Window end (ISO 8601); default: --now.")
@click.option("--since", help="Window length back from the end, e.g. 24h or 7d.")
@click.option("--now", "now_text", help="The run's clock (ISO 8601); default: the wall clock.")
@click.option("--user", "users", multiple=True, metavar="UPN|ID", help="Hunt only these users (repeatable).")
@click.option("--mode", type=click.Choice([mode.value for mode in Mode]), default=Mode.DRY_RUN.value, show_default=True, help="dry-run sends nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the summary.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Also write the JSON report to this file.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report as Markdown.")
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
    as_json: bool,
    output: Path | None,
    markdown: Path | None,
) -> None:
    """Hunt a time window for device code phishing and show what would be done."""
    settings = app.settings()
    audit = app.audit(settings)
    run_mode = Mode(mode)
    with _failed_runs_audited(audit, trigger="cli:hunt", mode=run_mode):
        playbook = load_playbook(settings.playbook.path)
        now = _instant(now_text, "--now") if now_text else utcnow()
        window = _window(start, end, since or settings.hunt.default_since, now)
        scope = tuple(_user(value) for value in users)
        _refuse_unavailable(run_mode)
        kind, _, argument = source_spec.partition(":")
        if kind != "files" or not argument:
            raise click.BadParameter("use files:DIR (a directory of exported logs)", param_hint="--source")
        directory = Path(argument)
        con, summary = _load(app, directory)
    source = LocalKqlSource(con, now=now, origin=f"exported files in {directory}")
    request = RunRequest(
        trigger="cli:hunt", mode=run_mode, window=window, now=now, users=scope, warnings=tuple(summary.warnings)
    )
    report = asyncio.run(Runner(playbook, settings, source, audit).run(request))
    _emit(app, report, as_json=as_json, output=output, markdown=markdown)
    _exit_for(report)


# -- exercise ------------------------------------------------------------------


@cli.command()
@click.argument("name", required=False)
@click.option("--list", "list_only", is_flag=True, help="List the bundled scenarios.")
@click.option("--file", "scenario_file", type=click.Path(dir_okay=False, path_type=Path), help="Run a scenario from a YAML file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a playbook key, e.g. scoring.thresholds.high=60.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the summary.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Also write the JSON report to this file.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), help="Where to write the Markdown report (default: reports/NAME.md).")
@pass_app
def exercise(
    app: App,
    name: str | None,
    list_only: bool,
    scenario_file: Path | None,
    overrides: Sequence[str],
    as_json: bool,
    output: Path | None,
    markdown: Path | None,
) -> None:
    """Run a tabletop scenario in dry-run and report what tokenward would do."""
    if list_only:
        for path in bundled_scenarios():
            scenario = load_scenario(path)
            app.out.print(f"[bold]{scenario.name}[/]  {scenario.title}")
        return
    if scenario_file and name:
        raise click.UsageError("give a scenario NAME or --file, not both")
    path = scenario_file or find_scenario(name or "seed-true-positive")
    scenario = load_scenario(path)
    settings = scenario.with_settings(app.settings())
    playbook = _playbook_with(settings, overrides)
    audit = app.audit(settings)

    with tempfile.TemporaryDirectory(prefix="tokenward-exercise-") as folder:
        directory = Path(folder)
        for table, rows in scenario.tables().items():
            if rows:
                with (directory / f"{table}.jsonl").open("w", encoding="utf-8") as handle:
                    handle.writelines(json.dumps(row) + "\n" for row in rows)
        trigger = f"exercise:{scenario.name}"
        with _failed_runs_audited(audit, trigger=trigger, mode=Mode.DRY_RUN):
            con, summary = _load(app, directory)
    clock = scenario.clock
    source = LocalKqlSource(con, now=clock, origin=f"scenario {scenario.name} ({path.name})")
    request = RunRequest(
        trigger=trigger,
        mode=Mode.DRY_RUN,
        window=Window(start=clock - scenario.since, end=clock),
        now=clock,
        warnings=tuple(summary.warnings),
    )
    report = asyncio.run(Runner(playbook, settings, source, audit).run(request))
    problems = check_expected(scenario, report)

    target = markdown or Path("reports") / f"{scenario.name}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(to_markdown(report, title=scenario.title, expected=problems), encoding="utf-8")
    _emit(app, report, as_json=as_json, output=output, markdown=None, expected=problems)
    app.err.print(f"Markdown report: {target}", style="dim")
    _exit_for(report)
    if problems:
        _fail(f"the scenario's expected outcome was not met ({len(problems)} difference(s))")


# -- audit ---------------------------------------------------------------------


@cli.group()
def audit() -> None:
    """Inspect and verify the tamper-evident audit log."""


@audit.command("verify")
@pass_app
def audit_verify(app: App) -> None:
    """Check that no audit record was edited, inserted or deleted."""
    result = app.audit(app.settings()).verify()
    if result.ok:
        app.out.print(f"audit chain intact: {result.checked} record(s) verified")
        return
    for problem in result.problems:
        app.err.print(f"tampered: {problem}", style="red")
    _fail(f"the audit chain is broken ({len(result.problems)} problem(s) in {result.checked} records)")


@audit.command("show")
@click.option("--run", "run_id", help="Only this run's records.")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print records as JSON lines.")
@pass_app
def audit_show(app: App, run_id: str | None, limit: int, as_json: bool) -> None:
    """Show audit records, oldest first."""
    records = app.audit(app.settings()).records(run_id=run_id, limit=limit)
    for record in records:
        if as_json:
            click.echo(json.dumps(record.__dict__, sort_keys=True))
            continue
        summary = json.dumps(record.data, sort_keys=True)
        if len(summary) > 160:
            summary = summary[:157] + "..."
        app.out.print(f"{record.seq:>6} {record.at} {record.run_id} [bold]{record.kind}[/] {summary}", markup=True, highlight=False)


# -- serve and worker ------------------------------------------------------------


@cli.command()
@click.option("--source", "source_spec", metavar="files:DIR", help="Where webhook-triggered runs hunt: files:DIR for exported logs.")
@click.option("--now", "now_text", help="Pin the runs' clock (ISO 8601), for exports of a past day.")
@click.option("--host", help="Listen address (default: server.host).")
@click.option("--port", type=click.IntRange(1, 65535), help="Listen port (default: server.port).")
@click.option("--no-worker", is_flag=True, help="Only accept deliveries; run `tokenward worker` apart.")
@pass_app
def serve(app: App, source_spec: str | None, now_text: str | None, host: str | None, port: int | None, no_worker: bool) -> None:
    """Serve the Sentinel webhook, plan approvals and health checks (uvicorn)."""
    from playbooks.server import SourceSpec, build_parts
    from playbooks.server import serve as run_server

    settings = app.settings()
    if host or port:
        server = settings.server.model_copy(update={k: v for k, v in (("host", host), ("port", port)) if v})
        settings = settings.model_copy(update={"server": type(settings.server).model_validate(server.model_dump())})
    with_worker = settings.inbox.worker and not no_worker
    spec = SourceSpec.parse(source_spec, now=_instant(now_text, "--now") if now_text else None) if source_spec else None
    parts = build_parts(settings, spec=spec, with_worker=with_worker)
    scheme = "https" if settings.server.certfile else "http"
    app.err.print(f"tokenward serving on {scheme}://{settings.server.host}:{settings.server.port}", style="dim")
    run_server(parts)


@cli.command()
@click.option("--source", "source_spec", required=True, metavar="files:DIR", help="Where runs hunt: files:DIR for exported logs.")
@click.option("--now", "now_text", help="Pin the runs' clock (ISO 8601), for exports of a past day.")
@pass_app
def worker(app: App, source_spec: str, now_text: str | None) -> None:
    """Process stored webhook deliveries (for workers apart from tokenward serve)."""
    import signal

    from playbooks.server import SourceSpec, build_worker

    settings = app.settings()
    spec = SourceSpec.parse(source_spec, now=_instant(now_text, "--now") if now_text else None)
    processing = build_worker(settings, spec)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await processing.run_forever(stop)

    app.err.print(f"tokenward worker {processing.owner} processing the inbox", style="dim")
    asyncio.run(run())


# -- helpers -------------------------------------------------------------------


def _load(app: App, directory: Path) -> tuple[Any, LoadSummary]:
    con = duckdb_kql.connect()
    with app.err.status(f"loading exports from {directory}…") as status:

        def progress(name: str, rows: int) -> None:
            status.update(f"loaded {name} ({rows:,} rows)…")

        summary = ExportLoader(con, on_progress=progress).load_directory(directory)
    loaded = ", ".join(f"{table} {rows:,}" for table, rows in sorted(summary.rows.items()))
    app.err.print(f"loaded {len(summary.files)} file(s): {loaded or 'no rows'}", style="dim")
    return con, summary


def _playbook_with(settings: Settings, overrides: Sequence[str]) -> Playbook:
    parsed: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        parsed[key.strip()] = value.strip()
    return load_playbook(settings.playbook.path, overrides=parsed)


def _instant(text: str, option: str) -> datetime:
    try:
        return parse_time(text).value
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a time (use e.g. 2026-01-15T09:00:00Z)", param_hint=option) from None


def _window(start: str | None, end: str | None, since: str, now: datetime) -> Window:
    end_at = _instant(end, "--end") if end else now
    if start:
        start_at = _instant(start, "--start")
    else:
        try:
            start_at = end_at - parse_duration(since)
        except ValueError as failure:
            raise click.BadParameter(str(failure), param_hint="--since") from None
    if start_at >= end_at:
        raise click.BadParameter(
            f"the window starts ({isoformat_z(start_at)}) at or after it ends ({isoformat_z(end_at)})",
            param_hint="--start/--end",
        )
    if end_at - start_at > MAX_WINDOW:
        raise click.BadParameter(f"the window is longer than {MAX_WINDOW.days} days", param_hint="--start/--since")
    return Window(start=as_utc(start_at), end=as_utc(end_at))


def _user(value: str) -> str:
    if is_guid(value):
        return value.lower()
    try:
        return require_upn(value).lower()
    except InputError as failure:
        raise click.BadParameter(str(failure), param_hint="--user") from None


def _refuse_unavailable(mode: Mode) -> None:
    if mode is not Mode.DRY_RUN:
        raise click.BadParameter(f"{mode.value} needs a Graph responder, which this build does not configure", param_hint="--mode")


@contextmanager
def _failed_runs_audited(audit_log: AuditLog, *, trigger: str, mode: Mode) -> Iterator[None]:
    """A run that fails before it starts (a bad export, window or playbook) is
    still audited, with the reason it failed."""
    try:
        yield
    except (TokenwardError, click.ClickException) as failure:
        reason = failure.format_message() if isinstance(failure, click.ClickException) else str(failure)
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
    expected: list[str] | None = None,
) -> None:
    if as_json:
        click.echo(to_json(report))
    else:
        print_report(report, app.out, expected=expected)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(to_json(report) + "\n", encoding="utf-8")
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(to_markdown(report), encoding="utf-8")


def _exit_for(report: RunReport) -> None:
    if report.status is RunStatus.FAILED:
        _fail(report.error or "the run failed")


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

