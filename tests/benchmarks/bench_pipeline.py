"""Benchmark: tokenward's load, hunt and correlation against hand-written DuckDB.

    .venv/bin/python tests/benchmarks/bench_pipeline.py --sign-ins 1000000 [--runs 3]

Generates N sign-ins (two fifths interactive, the rest non-interactive), N/2
mails and N/5 Safe Links clicks as Log Analytics JSON lines (see
``synthetic.py``), then runs, each in a process of its own and ``--runs`` times
in turn:

* ``baseline``: DuckDB's own ``read_json`` of the columns the queries use, and
  hand-written SQL that returns what the playbook's hunt, url_clicks, emails
  and baseline queries return;
* ``tokenward``: the real loader (``load_exports``) and the real rendered
  playbook queries through ``LocalKqlSource``, as ``tokenward hunt`` runs them;
* ``tokenward --cache`` twice: building the cache, then reusing it.

It prints the medians, tokenward's total as a ratio of the baseline's, the
cached second run as a ratio of the first (the run that built the cache) and of
a run without a cache, the peak resident memory of each process,
the row counts of both sides (they must agree), and the machine's size.
This is a measurement, not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

from synthetic import END, START, GeneratedExport, generate  # noqa: E402

TABLE_FILES = (
    "SigninLogs",
    "AADNonInteractiveUserSignInLogs",
    "EmailEvents",
    "UrlClickEvents",
)
QUERIES = ("hunt", "url_clicks", "emails", "baseline")
BEFORE = timedelta(minutes=60)
AFTER = timedelta(minutes=5)
DAYS = timedelta(days=30)


# -- the workers: one per process ---------------------------------------------------


class Clock:
    """Wall and CPU time (all threads) of each phase of one worker."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._started = (time.perf_counter(), _cpu())

    def lap(self, phase: str) -> None:
        wall, cpu = time.perf_counter(), _cpu()
        self.wall[phase] = wall - self._started[0]
        self.cpu[phase] = cpu - self._started[1]
        self._started = (wall, cpu)

    def split(self, first: str, rest: str, first_wall: float) -> None:
        """Lap one phase in two: ``first`` took ``first_wall`` of it.

        CPU time is shared between the two in the same proportion.
        """
        wall, cpu = time.perf_counter(), _cpu()
        lap_wall, lap_cpu = wall - self._started[0], cpu - self._started[1]
        share = min(first_wall / lap_wall, 1.0) if lap_wall else 0.0
        self.wall[first], self.wall[rest] = lap_wall * share, lap_wall * (1 - share)
        self.cpu[first], self.cpu[rest] = lap_cpu * share, lap_cpu * (1 - share)
        self._started = (wall, cpu)

    def restart(self) -> None:
        self._started = (time.perf_counter(), _cpu())


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_bytes() -> int:
    # VmHWM starts afresh at exec; ru_maxrss would carry the parent's peak over.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_tokenward(data: Path, cache: Path | None, memory_limit: str) -> dict[str, Any]:
    """The real loader and the rendered playbook queries, as ``tokenward hunt``."""
    from connectors.exports.database import load_exports
    from connectors.exports.local import LocalKqlSource
    from connectors.exports.schemas import columns_used
    from playbooks import aio
    from playbooks.audit import AuditLog
    from playbooks.engine import Runner
    from playbooks.models import Window
    from playbooks.playbook import load_playbook
    from playbooks.ports import RenderedQuery
    from playbooks.settings import Settings
    from playbooks.store import open_store

    playbook = load_playbook()
    texts = playbook.render_all(
        {
            "start": START,
            "end": END,
            "users": [],
            "before": BEFORE,
            "after": AFTER,
            "days": DAYS,
            "lookback": DAYS,
        }
    )
    window = Window(start=START - DAYS, end=END + AFTER)
    # The hunt and the correlation the baseline writes by hand, nothing more.
    queries = [
        RenderedQuery(
            name=name,
            tables=playbook.spec.queries[name].tables,
            text=texts[name],
            window=window,
        )
        for name in QUERIES
    ]
    clock = Clock()
    # As ``tokenward hunt`` loads: the columns the playbook's queries name.
    columns = columns_used(playbook.templates.values())
    with load_exports(data, cache=cache, memory_limit=memory_limit, columns=columns) as loaded:
        clock.lap("load")
        source = LocalKqlSource(loaded.con, now=END, origin="benchmark")

        # One batch, as the engine sends it (the correlation reads the hunt's
        # rows rather than hunting again); the hunt's share of the batch is
        # its own measured duration, the correlation's the rest.
        outcomes = aio.run(source.run_queries(queries))
        clock.split("hunt", "correlation", outcomes[0].duration_ms / 1000)
        failed = [outcome.error for outcome in outcomes if outcome.error]
        if failed:
            raise RuntimeError(f"a query failed: {failed[0]}")
        by_name = {outcome.name: outcome for outcome in outcomes}

        # Rows to findings: parsing, flows, evidence, scoring (not in the ratio).
        runner = Runner(playbook, Settings(), source, AuditLog(open_store("sqlite://")))
        findings = runner._assess(by_name)
        clock.lap("assess")
        reused = loaded.reused
    return {
        "timings": clock.wall,
        "cpu": clock.cpu,
        "rows": {name: len(by_name[name].rows) for name in QUERIES},
        "findings": len(findings),
        "reused": reused,
        "peak_rss": _peak_rss_bytes(),
    }


def _read(path: Path, columns: dict[str, str]) -> str:
    listed = ", ".join(f"'{name}': '{kind}'" for name, kind in columns.items())
    return f"SELECT * FROM read_json('{path}', format='newline_delimited', columns={{{listed}}})"


_SIGN_IN_TEXT = (
    "Id UserPrincipalName UserId UserDisplayName UserType HomeTenantId "
    "ResourceTenantId AppId AppDisplayName ResourceDisplayName AuthenticationProtocol "
    "OriginalTransferMethod ResultType ResultSignature ResultDescription IPAddress "
    "RiskLevelDuringSignIn RiskLevelAggregated RiskState RiskEventTypes "
    "RiskEventTypes_V2 UserAgent ClientAppUsed CorrelationId SessionId "
    "UniqueTokenIdentifier ConditionalAccessStatus"
).split()
_MAIL_TEXT = (
    "NetworkMessageId RecipientEmailAddress RecipientObjectId SenderFromAddress "
    "SenderFromDomain SenderDisplayName Subject EmailDirection DeliveryAction "
    "DeliveryLocation ThreatTypes DetectionMethods"
).split()
_CLICK_TEXT = "AccountUpn Url UrlChain ActionType ReportId Workload NetworkMessageId IPAddress ThreatTypes".split()


def _hunt_select(table: str, dynamic: bool) -> str:
    def detail(column: str, key: str) -> str:
        value = f"{column}->>'$.{key}'" if dynamic else f"json_extract_string({column}, '$.{key}')"
        return f"coalesce({value}, '')"

    return f"""
        SELECT TimeGenerated, '{table}' AS SourceTable, Id, UserPrincipalName, UserId,
            UserDisplayName, UserType, HomeTenantId, ResourceTenantId, AppId,
            AppDisplayName, ResourceDisplayName, AuthenticationProtocol,
            coalesce(OriginalTransferMethod, '') AS OriginalTransferMethod, IsInteractive,
            ResultType, ResultSignature, ResultDescription, IPAddress,
            {detail("LocationDetails", "countryOrRegion")} AS Country,
            {detail("LocationDetails", "city")} AS City,
            {detail("DeviceDetail", "operatingSystem")} AS OS,
            {detail("DeviceDetail", "browser")} AS Browser,
            {detail("DeviceDetail", "deviceId")} AS DeviceId,
            {detail("DeviceDetail", "isCompliant")} AS IsCompliant,
            {detail("DeviceDetail", "isManaged")} AS IsManagedDevice,
            {detail("DeviceDetail", "trustType")} AS TrustType,
            RiskLevelDuringSignIn, RiskLevelAggregated, RiskState, RiskEventTypes,
            RiskEventTypes_V2, UserAgent, ClientAppUsed, CorrelationId, SessionId,
            UniqueTokenIdentifier, ConditionalAccessStatus
        FROM {table}
        WHERE TimeGenerated BETWEEN $start AND $end
          AND (lower(AuthenticationProtocol) = 'devicecode'
               OR lower(OriginalTransferMethod) IN ('devicecodeflow', 'device code flow'))
    """


def run_baseline(data: Path) -> dict[str, Any]:
    """DuckDB's own read_json, then SQL written by hand for the same answers."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    sign_in = {
        "TimeGenerated": "TIMESTAMPTZ",
        "IsInteractive": "BOOLEAN",
        **dict.fromkeys(_SIGN_IN_TEXT, "VARCHAR"),
    }
    clock = Clock()
    con.execute(
        "CREATE TABLE SigninLogs AS "
        + _read(
            data / "SigninLogs.jsonl",
            {**sign_in, "LocationDetails": "JSON", "DeviceDetail": "JSON"},
        )
    )
    con.execute(
        "CREATE TABLE AADNonInteractiveUserSignInLogs AS "
        + _read(
            data / "AADNonInteractiveUserSignInLogs.jsonl",
            {**sign_in, "LocationDetails": "VARCHAR", "DeviceDetail": "VARCHAR"},
        )
    )
    con.execute(
        "CREATE TABLE EmailEvents AS "
        + _read(
            data / "EmailEvents.jsonl",
            {
                "Timestamp": "TIMESTAMPTZ",
                "UrlCount": "INTEGER",
                **dict.fromkeys(_MAIL_TEXT, "VARCHAR"),
            },
        )
    )
    con.execute(
        "CREATE TABLE UrlClickEvents AS "
        + _read(
            data / "UrlClickEvents.jsonl",
            {
                "Timestamp": "TIMESTAMPTZ",
                "IsClickedThrough": "BOOLEAN",
                **dict.fromkeys(_CLICK_TEXT, "VARCHAR"),
            },
        )
    )
    clock.lap("load")
    params = {
        "start": START,
        "end": END,
        "before": BEFORE,
        "after": AFTER,
        "days": DAYS,
    }

    con.execute(
        "CREATE TEMP TABLE hunt AS "
        + _hunt_select("SigninLogs", True)
        + " UNION ALL "
        + _hunt_select("AADNonInteractiveUserSignInLogs", False),
        {"start": START, "end": END},
    )
    hunt = con.execute("SELECT * FROM hunt ORDER BY TimeGenerated DESC").fetchall()
    clock.lap("hunt")

    con.execute(
        "CREATE TEMP TABLE hits AS SELECT Id AS HitId, lower(UserPrincipalName) AS HitUserKey, "
        "lower(UserId) AS HitUserId, TimeGenerated AS HitTime FROM hunt"
    )
    clicks = con.execute(
        """
        SELECT h.HitId, h.HitTime, c.Timestamp, c.AccountUpn, c.Url, c.UrlChain, c.ActionType,
               CAST(c.IsClickedThrough AS VARCHAR), c.ReportId, c.Workload,
               c.NetworkMessageId, c.IPAddress, c.ThreatTypes
        FROM UrlClickEvents c JOIN hits h ON lower(c.AccountUpn) = h.HitUserKey
        WHERE c.Timestamp BETWEEN $start - $before AND $end + $after
          AND c.Timestamp BETWEEN h.HitTime - $before AND h.HitTime + $after
        """,
        {key: params[key] for key in ("start", "end", "before", "after")},
    ).fetchall()
    emails = con.execute(
        """
        WITH mail AS (
            SELECT * FROM EmailEvents WHERE Timestamp BETWEEN $start - $before AND $end + $after
        ),
        by_address AS (
            SELECT m.*, h.HitId, h.HitTime, 'upn' AS JoinedBy
            FROM mail m JOIN hits h ON lower(m.RecipientEmailAddress) = h.HitUserKey
        ),
        by_object_id AS (
            SELECT m.*, h.HitId, h.HitTime, 'object_id' AS JoinedBy
            FROM mail m JOIN hits h ON lower(m.RecipientObjectId) = h.HitUserId
            WHERE m.RecipientObjectId <> ''
        ),
        clicked AS (
            SELECT DISTINCT h.HitId, h.HitTime, c.NetworkMessageId
            FROM UrlClickEvents c JOIN hits h ON lower(c.AccountUpn) = h.HitUserKey
            WHERE c.Timestamp BETWEEN $start - $before AND $end + $after
              AND c.NetworkMessageId <> ''
        ),
        by_click AS (
            SELECT m.*, k.HitId, k.HitTime, 'network_message_id' AS JoinedBy
            FROM mail m JOIN clicked k ON m.NetworkMessageId = k.NetworkMessageId
        ),
        joined AS (
            SELECT * FROM by_address UNION ALL BY NAME SELECT * FROM by_object_id
            UNION ALL BY NAME SELECT * FROM by_click
        )
        SELECT HitId, HitTime, Timestamp, NetworkMessageId, RecipientEmailAddress,
               RecipientObjectId, SenderFromAddress, SenderFromDomain, SenderDisplayName,
               Subject, EmailDirection, DeliveryAction, DeliveryLocation, ThreatTypes,
               DetectionMethods, UrlCount, JoinedBy
        FROM joined WHERE Timestamp BETWEEN HitTime - $before AND HitTime + $after
        """,
        {key: params[key] for key in ("start", "end", "before", "after")},
    ).fetchall()
    baseline = con.execute(
        """
        SELECT h.HitId, count(*) AS SignIns,
               list_distinct(list(coalesce(s.LocationDetails->>'$.countryOrRegion', ''))) AS Countries,
               list_distinct(list(s.AppId)) AS AppIds,
               list_distinct(list(s.IPAddress)) AS IPAddresses,
               count(*) FILTER (WHERE lower(s.AuthenticationProtocol) = 'devicecode')
                   AS DeviceCodeSignIns
        FROM SigninLogs s JOIN hits h ON lower(s.UserPrincipalName) = h.HitUserKey
        WHERE s.TimeGenerated BETWEEN $start - $days AND $end
          AND s.TimeGenerated >= h.HitTime - $days AND s.TimeGenerated < h.HitTime
        GROUP BY h.HitId
        """,
        {key: params[key] for key in ("start", "end", "days")},
    ).fetchall()
    clock.lap("correlation")
    return {
        "timings": clock.wall,
        "cpu": clock.cpu,
        "rows": {
            "hunt": len(hunt),
            "url_clicks": len(clicks),
            "emails": len(emails),
            "baseline": len(baseline),
        },
        "peak_rss": _peak_rss_bytes(),
    }


# -- the conductor -----------------------------------------------------------------------


def _worker(arguments: list[str]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {arguments[0]} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (
        f"{os.cpu_count()} cores, {memory / 2**30:.1f} GiB memory, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, DuckDB {version('duckdb')}, "
        f"duckdb-kql {version('duckdb-kql')}"
    )


def _data(sign_ins: int, root: Path) -> tuple[Path, GeneratedExport]:
    folder = root / f"sign-ins-{sign_ins}"
    manifest = root / f"sign-ins-{sign_ins}.json"
    if manifest.exists() and folder.is_dir():
        return folder, GeneratedExport.read_manifest(manifest)
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    made = generate(folder, sign_ins=sign_ins)
    made.write_manifest(manifest)
    print(f"generated in {time.perf_counter() - started:.1f} s", flush=True)
    return folder, made


def _median(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(result["timings"].get(key, 0.0) for result in results)


def _total(result: dict[str, Any], key: str = "timings") -> float:
    timings = result[key]
    return float(timings["load"] + timings["hunt"] + timings["correlation"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sign-ins", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(tempfile.gettempdir()) / "tokenward-bench",
        help="where generated exports are kept between invocations",
    )
    parser.add_argument(
        "--memory-limit", default="1GB", help="tokenward's --memory-limit (its default)"
    )
    parser.add_argument(
        "--roomy-memory-limit",
        default="4GB",
        help="a second tokenward run with this limit, to show the in-memory trade-off",
    )
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args()

    if options.worker:
        mode, data, *rest = options.worker
        runners: dict[str, Callable[[], dict[str, Any]]] = {
            "baseline": lambda: run_baseline(Path(data)),
            "tokenward": lambda: run_tokenward(
                Path(data), Path(rest[1]) if len(rest) > 1 else None, rest[0]
            ),
        }
        print(json.dumps(runners[mode]()))
        return

    options.data.mkdir(parents=True, exist_ok=True)
    data, made = _data(options.sign_ins, options.data)
    size = sum(path.stat().st_size for path in data.iterdir())
    print(f"machine: {_machine()}")
    print(
        f"data: {made.sign_ins:,} sign-ins ({made.interactive:,} interactive, "
        f"{made.non_interactive:,} non-interactive; {made.device_code_rows:,} device code "
        f"rows in {made.flows:,} flows), {made.emails:,} mails, {made.clicks:,} clicks; "
        f"{size / 1e9:.2f} GB of JSON lines in {data}"
    )
    print(
        f"runs: {options.runs}, interleaved, each side in a process of its own; "
        f"tokenward --memory-limit {options.memory_limit}",
        flush=True,
    )

    roomy = options.roomy_memory_limit
    kinds = (
        "baseline",
        "tokenward",
        f"tokenward, {roomy} memory",
        "tokenward, cache built",
        "tokenward, cache reused",
    )
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for run in range(options.runs):
        with tempfile.TemporaryDirectory(prefix="tokenward-bench-cache-") as folder:
            cache = str(Path(folder) / "exports.duckdb")
            limit = options.memory_limit
            for kind, arguments in (
                ("baseline", ["baseline", str(data)]),
                ("tokenward", ["tokenward", str(data), limit]),
                (f"tokenward, {roomy} memory", ["tokenward", str(data), roomy]),
                ("tokenward, cache built", ["tokenward", str(data), limit, cache]),
                ("tokenward, cache reused", ["tokenward", str(data), limit, cache]),
            ):
                result = _worker(arguments)
                results[kind].append(result)
                print(f"  run {run + 1}: {kind:24} {_total(result):6.2f} s", flush=True)
        if results["tokenward, cache reused"][-1]["reused"] is not True:
            raise SystemExit("the second cached run did not reuse the cache")

    print()
    print(
        f"{'median of ' + str(options.runs):26}{'load':>9}{'hunt':>9}{'correl.':>9}"
        f"{'total':>9}{'assess*':>9}{'peak RSS':>11}{'CPU total':>11}"
    )
    for kind in kinds:
        runs = results[kind]
        totals = statistics.median(_total(result) for result in runs)
        assess = _median(runs, "assess")
        peak = max(result["peak_rss"] for result in runs)
        cpu = statistics.median(_total(result, "cpu") for result in runs)
        print(
            f"{kind:26}{_median(runs, 'load'):8.2f}s{_median(runs, 'hunt'):8.2f}s"
            f"{_median(runs, 'correlation'):8.2f}s{totals:8.2f}s"
            f"{(f'{assess:8.2f}s' if assess else '        -')}{peak / 1e9:9.2f} GB"
            f"{cpu:10.2f}s"
        )
    print("* rows to scored findings in Python; not part of the totals or the ratios")
    print("  CPU total: user and system time of all threads for load, hunt and correlation")

    baseline = statistics.median(_total(result) for result in results["baseline"])
    first = statistics.median(_total(result) for result in results["tokenward"])
    built = statistics.median(_total(result) for result in results["tokenward, cache built"])
    reused = statistics.median(_total(result) for result in results["tokenward, cache reused"])
    peak = max(
        result["peak_rss"] for kind in kinds[1:] if kind != kinds[2] for result in results[kind]
    )
    roomy_total = statistics.median(_total(result) for result in results[kinds[2]])
    roomy_peak = max(result["peak_rss"] for result in results[kinds[2]])
    print()
    cpu_ratio = statistics.median(
        _total(r, "cpu") for r in results["tokenward"]
    ) / statistics.median(_total(r, "cpu") for r in results["baseline"])
    print(f"tokenward / baseline:             {first / baseline:5.2f}  (target <= 1.5)")
    print(f"  in CPU time:                    {cpu_ratio:5.2f}")
    print(f"tokenward building its cache / baseline: {built / baseline:5.2f}")
    # The target pairs the two runs of ``tokenward hunt --cache``: the first,
    # which loads the exports and keeps them, and the second, which reuses them.
    pairs = [
        _total(second) / _total(first_run)
        for first_run, second in zip(
            results["tokenward, cache built"], results["tokenward, cache reused"], strict=True
        )
    ]
    print(
        f"cached second run / cache build:  {reused / built:5.2f}  (target < 0.25; "
        f"per run {', '.join(f'{pair:.2f}' for pair in pairs)})"
    )
    print(f"cached second run / first run without a cache: {reused / first:5.2f}")
    print(f"tokenward peak RSS:               {peak / 1e9:5.2f} GB  (target < 1.5 GB)")
    print(
        f"with --memory-limit {roomy}:        {roomy_total / baseline:5.2f} x baseline, "
        f"peak RSS {roomy_peak / 1e9:.2f} GB"
    )

    ours = results["tokenward"][0]["rows"]
    theirs = results["baseline"][0]["rows"]
    print(
        f"rows, tokenward = baseline:       {', '.join(f'{q} {ours[q]:,} = {theirs[q]:,}' for q in QUERIES)}"
    )
    print(f"findings (device code flows):     {results['tokenward'][0]['findings']:,}")
    if ours != theirs:
        raise SystemExit("tokenward and the baseline disagree: the comparison is void")


if __name__ == "__main__":
    main()
