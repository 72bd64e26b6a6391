"""The ``tokenward`` command as a user runs it: hunts over exported files."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb_kql
import jsonschema
import pytest

from connectors.exports.loader import ExportLoader
from connectors.exports.local import LocalKqlSource
from playbooks.audit import AuditLog
from playbooks.engine import Runner, RunRequest
from playbooks.exercises import find_scenario, load_scenario
from playbooks.models import Mode, RunReport, Window
from playbooks.playbook import load_playbook
from playbooks.reports import SCHEMA_PATH, report_schema
from playbooks.settings import ENV_AUDIT_KEY, Settings
from playbooks.store import open_store
from playbooks.times import parse_time
from tests.cli_helpers import run_tokenward
from tests.conftest import write_table

TOKENWARD = str(Path(sys.executable).with_name("tokenward"))


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOKENWARD, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    """The seed scenario written out as a folder of Log Analytics exports."""
    folder = tmp_path / "exports"
    for table, rows in load_scenario(find_scenario("seed-true-positive")).tables().items():
        if rows:
            write_table(folder, table, rows, lines=table != "SigninLogs")
    return folder


def hunt(tmp_path: Path, exports: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(
        tmp_path,
        "hunt",
        "--source",
        f"files:{exports}",
        "--start",
        "2026-01-15T00:00:00Z",
        "--end",
        "2026-01-15T12:00:00Z",
        *extra,
    )


def test_a_hunt_over_exported_files_finds_the_sign_in_and_writes_a_valid_json_report(
    tmp_path: Path, exports: Path
) -> None:
    done = hunt(tmp_path, exports, "--now", "2026-01-15T12:00:00Z", "--output", "out/report.json")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
    (finding,) = report["findings"]
    # Without the scenario's Tor range the threat-intelligence signal is absent.
    assert finding["tier"] == "high"
    assert "threat_intel_ip" not in {r["signal"] for r in finding["reasons"]}
    assert {"action", "target", "status", "request"} <= set(report["actions"][0])
    assert "loaded 3 file(s)" in done.stderr


def test_json_output_goes_to_stdout_alone(tmp_path: Path, exports: Path) -> None:
    done = hunt(tmp_path, exports, "--json")
    assert done.returncode == 0, done.stderr
    assert (
        json.loads(done.stdout)["findings"][0]["user_principal_name"] == "target.user@contoso.com"
    )


def test_a_hunt_scoped_to_other_users_finds_nothing(tmp_path: Path, exports: Path) -> None:
    done = hunt(tmp_path, exports, "--user", "someone.else@contoso.com", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["findings"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--start", "2026-01-16T00:00:00Z", "--end", "2026-01-15T00:00:00Z"],
            "starts (2026-01-16T00:00:00Z) at or after it ends",
        ),
        (["--since", "soon"], "not a duration"),
        (["--start", "yesterday"], "'yesterday' is not a time"),
        (["--since", "120d"], "longer than 90 days"),
        (["--since", "3000000d"], "longer than 3660 days"),
        (["--since", "99999999999999999999d"], "longer than 3660 days"),
        (["--user", 'x" or 1==1 or "'], "is not a UPN or mail address"),
    ],
)
def test_a_bad_window_or_scope_is_refused_with_a_reason(
    tmp_path: Path, exports: Path, args: list[str], message: str
) -> None:
    done = run(tmp_path, "hunt", "--source", f"files:{exports}", *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_a_malformed_export_fails_naming_the_file_and_the_failed_run_is_audited(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "SigninLogs.jsonl").write_text(
        '{"TimeGenerated": "2026-01-15T09:00:00Z"}\n{"TimeGenerated": \n'
    )
    done = run(tmp_path, "hunt", "--source", f"files:{folder}", "--since", "24h")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("tokenward: ExportError: ")
    assert "SigninLogs.jsonl:2" in done.stderr
    with sqlite3.connect(tmp_path / "tokenward.db") as db:
        kinds = [kind for (kind,) in db.execute("SELECT kind FROM audit_records ORDER BY seq")]
    assert kinds == ["run.started", "run.failed"]


def test_an_export_without_device_code_fields_warns_that_the_hunt_is_blind(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    write_table(
        folder,
        "SigninLogs",
        [{"TimeGenerated": "2026-01-15T09:00:00Z", "UserPrincipalName": "a@contoso.com"}],
    )
    done = run(
        tmp_path,
        "hunt",
        "--source",
        f"files:{folder}",
        "--start",
        "2026-01-15T00:00:00Z",
        "--end",
        "2026-01-16T00:00:00Z",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert any("cannot find device code sign-ins" in w for w in json.loads(done.stdout)["warnings"])


def test_audit_verify_passes_then_fails_once_a_record_is_edited(
    tmp_path: Path, exports: Path
) -> None:
    assert hunt(tmp_path, exports).returncode == 0
    verified = run(tmp_path, "audit", "verify")
    assert verified.returncode == 0 and "audit chain intact" in verified.stdout
    with sqlite3.connect(tmp_path / "tokenward.db") as db:
        db.execute("UPDATE audit_records SET data = '{}' WHERE seq = 2")
    broken = run(tmp_path, "audit", "verify")
    assert broken.returncode == 1
    assert "record 2" in broken.stderr and "was edited" in broken.stderr


def test_a_run_without_the_audit_key_is_refused_and_the_keyed_audit_stays_intact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENV_AUDIT_KEY, "k" * 32)
    assert run_tokenward(["exercise", "seed-true-positive"], tmp_path, capsys).code == 0
    monkeypatch.delenv(ENV_AUDIT_KEY)
    refused = run_tokenward(["exercise", "seed-true-positive"], tmp_path, capsys)
    assert refused.code == 1
    assert f"this audit is keyed: set {ENV_AUDIT_KEY} to its key; nothing was recorded" in (
        refused.err
    )
    unverified = run_tokenward(["audit", "verify"], tmp_path, capsys)
    assert unverified.code == 1 and "was edited" not in unverified.err
    assert f"the audit cannot be verified: this audit is keyed: set {ENV_AUDIT_KEY}" in (
        unverified.err
    )
    monkeypatch.setenv(ENV_AUDIT_KEY, "w" * 32)
    wrong = run_tokenward(["audit", "verify"], tmp_path, capsys)
    assert wrong.code == 1 and "does not match this audit's key" in wrong.err
    monkeypatch.setenv(ENV_AUDIT_KEY, "k" * 32)
    verified = run_tokenward(["audit", "verify"], tmp_path, capsys)
    assert verified.code == 0 and "audit chain intact" in verified.out


def test_audit_show_lists_the_run_records(tmp_path: Path, exports: Path) -> None:
    assert hunt(tmp_path, exports).returncode == 0
    shown = run(tmp_path, "audit", "show", "--json")
    kinds = [json.loads(line)["kind"] for line in shown.stdout.splitlines()]
    assert kinds[0] == "run.started" and kinds[-1] == "run.finished"
    # Hunt, three correlations and threat intelligence; then, for the high
    # finding, the token's Graph activity and the session's later sign-ins.
    assert kinds.count("query.completed") == 7
    assert "action.dry_run" in kinds


def test_the_committed_report_schema_is_the_generated_one() -> None:
    assert json.loads(SCHEMA_PATH.read_text()) == report_schema(), (
        "regenerate playbooks/reports/report.schema.json from the models"
    )


def test_an_invalid_settings_file_stops_before_anything_runs(tmp_path: Path, exports: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[guardrails]\nmax_users_per_run = 0\n")
    done = run(tmp_path, "--config", str(config), "hunt", "--source", f"files:{exports}")
    assert done.returncode == 1
    assert "guardrails.max_users_per_run" in done.stderr


async def _dry_run_over(exports: Path) -> RunReport:
    con = duckdb_kql.connect()
    ExportLoader(con).load_directory(exports)
    now = parse_time("2026-01-15T12:00:00Z").value
    runner = Runner(
        load_playbook(),
        Settings(),
        LocalKqlSource(con, now=now, origin="t"),
        AuditLog(open_store("sqlite://")),
    )
    window = Window(start=parse_time("2026-01-15T00:00:00Z").value, end=now)
    return await runner.run(RunRequest(trigger="test", mode=Mode.DRY_RUN, window=window, now=now))


def test_a_dry_run_opens_no_connection_at_all(
    exports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise AssertionError("a dry-run tried to connect")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    report = asyncio.run(_dry_run_over(exports))
    assert attempts == []
    assert {action.status.value for action in report.actions} == {"would_send"}


def test_a_bad_window_is_refused_and_the_refused_run_is_audited(
    tmp_path: Path, exports: Path
) -> None:
    done = run(
        tmp_path,
        "hunt",
        "--source",
        f"files:{exports}",
        "--start",
        "2026-01-16T00:00:00Z",
        "--end",
        "2026-01-15T00:00:00Z",
    )
    assert done.returncode == 2
    with sqlite3.connect(tmp_path / "tokenward.db") as db:
        rows = list(db.execute("SELECT kind, data FROM audit_records ORDER BY seq"))
    assert [kind for kind, _ in rows] == ["run.started", "run.failed"]
    assert "at or after it ends" in rows[1][1]


@pytest.mark.parametrize("option", ["--output", "--markdown", "--report"])
def test_a_report_path_that_cannot_be_written_is_refused_before_the_run(
    tmp_path: Path, exports: Path, option: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    done = hunt(tmp_path, exports, option, str(blocker / "report.out"))

    assert done.returncode == 2
    assert f"Invalid value for '{option}'" in done.stderr
    assert "cannot write there" in done.stderr
    assert "Traceback" not in done.stderr
    # Refused as the command was read: no run started, nothing was audited.
    assert not (tmp_path / "tokenward.db").exists()


def test_an_exercise_whose_default_report_folder_is_unwritable_is_refused_before_it_runs(
    tmp_path: Path,
) -> None:
    (tmp_path / "reports").write_text("a file where the reports folder would be")

    done = run(tmp_path, "exercise", "seed-true-positive")

    assert done.returncode == 2
    assert "reports/seed-true-positive" in done.stderr
    assert "give --markdown/--report" in done.stderr
    assert not (tmp_path / "tokenward.db").exists()


def test_an_empty_export_file_is_no_records_and_the_missing_evidence_is_warned_of(
    tmp_path: Path, exports: Path
) -> None:
    (exports / "UrlClickEvents.jsonl").unlink()
    (exports / "EmailEvents.jsonl").write_text("")

    done = hunt(tmp_path, exports, "--json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["findings"], "the sign-in is still found"
    assert (
        "EmailEvents.jsonl: the file is empty: no records were read from it" in report["warnings"]
    )
    assert (
        "the export holds no EmailEvents records: no sign-in can be linked to the mail "
        "that came before it"
    ) in report["warnings"]
    assert (
        "the export holds no UrlClickEvents records: no sign-in can be linked to a click "
        "on the lure"
    ) in report["warnings"]


def test_an_old_export_hunted_on_the_wall_clock_says_which_now_to_give(
    tmp_path: Path, exports: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    done = run_tokenward(["hunt", "--source", f"files:{exports}", "--json"], tmp_path, capsys)
    assert done.code == 0
    report = done.json()
    assert report["findings"] == []
    (warning,) = [w for w in report["warnings"] if w.startswith("no exported sign-in")]
    assert warning.endswith("for an old export give --now 2026-01-15T09:24:58Z or --start/--end")

    pinned = run_tokenward(
        ["hunt", "--source", f"files:{exports}", "--now", "2026-01-15T09:24:58Z", "--json"],
        tmp_path,
        capsys,
    )
    assert not [w for w in pinned.json()["warnings"] if w.startswith("no exported sign-in")]


def test_start_and_since_together_are_refused_rather_than_one_ignored(
    tmp_path: Path, exports: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["hunt", "--source", f"files:{exports}", "--start", "2026-01-15T00:00:00Z"]
    done = run_tokenward([*args, "--since", "1h"], tmp_path, capsys)
    assert done.code == 2
    assert "--start and --since both say where the window starts: give one" in done.err


def test_a_start_after_the_wall_clock_says_the_end_was_the_wall_clock(
    tmp_path: Path, exports: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["hunt", "--source", f"files:{exports}", "--start", "2099-01-01T00:00:00Z"]
    done = run_tokenward(args, tmp_path, capsys)
    assert done.code == 2
    assert "the wall clock; give --end or --now for a past window" in " ".join(done.err.split())


def test_audit_show_for_a_run_it_does_not_know_says_so_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    done = run_tokenward(["audit", "show", "--run", "r-nosuch"], tmp_path, capsys)
    assert done.code == 1
    assert "no audit record belongs to run 'r-nosuch'" in done.err


def test_a_dry_run_plan_id_shown_to_plans_show_says_dry_runs_store_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    done = run_tokenward(["plans", "show", "plan-r-20260115T092458-00000000"], tmp_path, capsys)
    assert done.code == 1
    assert "only approve and auto runs store their plans" in done.err


def test_audit_verify_of_a_database_with_no_records_fails_rather_than_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    done = run_tokenward(["audit", "verify"], tmp_path, capsys)
    assert done.code == 1
    assert "holds no records: nothing was verified (is [store] url the database" in done.err


def test_too_small_a_memory_limit_is_named_as_the_cause_not_the_export(
    tmp_path: Path, exports: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["hunt", "--source", f"files:{exports}", "--memory-limit", "1MB"]
    done = run_tokenward(args, tmp_path, capsys)
    assert done.code == 1
    assert "DuckDB ran out of memory under its limit; give more with --memory-limit" in (
        " ".join(done.err.split())
    )
