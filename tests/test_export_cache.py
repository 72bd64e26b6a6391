"""Loaded exports kept in a DuckDB file, reused only while the files are unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from connectors.exports import database
from connectors.exports.database import load_exports
from connectors.exports.schemas import columns_used
from playbooks.cli import cli
from playbooks.errors import ExportError
from playbooks.playbook import load_playbook
from tests import export_shapes as shapes

DEVICE_CODE = {
    "TimeGenerated": "2026-01-15T09:24:58.1234567Z",
    "Id": "si-1",
    "UserPrincipalName": "megan.bowen@contoso.com",
    "AuthenticationProtocol": "deviceCode",
    "ResultType": "0",
    "SessionId": "s-1",
}


@pytest.fixture
def export(tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    shapes.diagnostic_records(folder, "SigninLogs", [DEVICE_CODE, {**DEVICE_CODE, "Id": "si-2"}])
    return folder


def rows(con: object) -> int:
    return int(con.execute("SELECT count(*) FROM SigninLogs").fetchone()[0])  # type: ignore[attr-defined]


def test_a_second_load_of_unchanged_files_reuses_the_cache(tmp_path: Path, export: Path) -> None:
    cache = tmp_path / "cache.duckdb"
    with load_exports(export, cache=cache) as first:
        assert (first.reused, rows(first.con)) == (False, 2)
    with load_exports(export, cache=cache) as second:
        assert (second.reused, rows(second.con)) == (True, 2)
        assert second.summary.files[0].shape == "entra-diagnostic-records"
        assert second.summary.rows == {"SigninLogs": 2}


def test_a_cache_kept_among_the_exports_is_not_read_as_one(export: Path) -> None:
    cache = export / "exports.duckdb"
    with load_exports(export, cache=cache) as first:
        assert [Path(item.path).name for item in first.summary.files] == ["eventhub.log"]
    with load_exports(export, cache=cache) as second:
        assert second.reused is True


def test_a_changed_file_is_parsed_again(tmp_path: Path, export: Path) -> None:
    cache = tmp_path / "cache.duckdb"
    with load_exports(export, cache=cache):
        pass
    (log,) = export.iterdir()
    log.write_text(log.read_text() + log.read_text().splitlines()[0] + "\n")
    os.utime(log, ns=(1, 1))
    with load_exports(export, cache=cache) as again:
        assert (again.reused, rows(again.con)) == (False, 3)


def test_a_new_file_in_the_directory_is_parsed_again(tmp_path: Path, export: Path) -> None:
    cache = tmp_path / "cache.duckdb"
    with load_exports(export, cache=cache):
        pass
    shapes.log_analytics_json(
        export,
        "EmailEvents",
        [
            {
                "Timestamp": "2026-01-15T09:00:00Z",
                "RecipientEmailAddress": "a@contoso.com",
            }
        ],
    )
    with load_exports(export, cache=cache) as again:
        assert again.reused is False
        assert again.summary.rows == {"SigninLogs": 2, "EmailEvents": 1}


def test_skipping_bad_records_is_part_of_what_the_cache_holds(tmp_path: Path, export: Path) -> None:
    cache = tmp_path / "cache.duckdb"
    with load_exports(export, cache=cache):
        pass
    with load_exports(export, cache=cache, skip_bad_records=True) as skipping:
        assert skipping.reused is False


def test_a_failed_load_leaves_no_cache_behind(tmp_path: Path, export: Path) -> None:
    cache = tmp_path / "cache.duckdb"
    (export / "broken.jsonl").write_text(
        '{"TimeGenerated": "2026-01-15T09:00:00Z", "UserPrincipalName": "a@contoso.com", "Type": "SigninLogs", "IsInteractive": "maybe"}\n'
    )
    with (
        pytest.raises(ExportError, match="IsInteractive holds maybe"),
        load_exports(export, cache=cache),
    ):
        pass
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]


def test_a_database_that_is_not_a_cache_is_never_overwritten(tmp_path: Path, export: Path) -> None:
    precious = tmp_path / "analysis.duckdb"
    with duckdb.connect(str(precious)) as con:
        con.execute("CREATE TABLE notes AS SELECT 'keep me' AS note")
    with (
        pytest.raises(
            ExportError,
            match="analysis.duckdb: a DuckDB database that is not a tokenward cache",
        ),
        load_exports(export, cache=precious),
    ):
        pass
    with duckdb.connect(str(precious)) as con:
        assert con.execute("SELECT note FROM notes").fetchone() == ("keep me",)


@pytest.mark.parametrize("in_memory", [True, False])
def test_without_a_cache_the_load_leaves_nothing_behind(
    export: Path, in_memory: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "fits_in_memory", lambda files, limit, columns: in_memory)
    with load_exports(export) as loaded:
        where = loaded.con.execute(
            "SELECT path FROM duckdb_databases() WHERE NOT internal"
        ).fetchone()
        assert (where == (None,)) is in_memory
        assert rows(loaded.con) == 2
        folder = loaded.database if in_memory else loaded.database.parent
    assert not folder.exists()


def test_tables_load_in_memory_only_when_they_fit_the_limit(export: Path) -> None:
    files = list(export.iterdir())
    size = sum(path.stat().st_size for path in files)
    assert database.fits_in_memory(files, f"{size}B")
    assert not database.fits_in_memory(files, f"{size // 10}B")
    assert database.memory_bytes("1.5GiB") == int(1.5 * 2**30)


def test_a_memory_limit_that_is_no_size_is_refused(export: Path) -> None:
    with (
        pytest.raises(ValueError, match="not a memory size"),
        load_exports(export, memory_limit="lots"),
    ):
        pass


HUNT = [
    "hunt",
    "--start",
    "2026-01-15T00:00:00Z",
    "--end",
    "2026-01-16T00:00:00Z",
    "--now",
    "2026-01-16T00:00:00Z",
    "--json",
]


def test_the_hunt_command_reuses_its_cache_and_finds_the_same(
    tmp_path: Path, export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "hunt.duckdb"
    runner = CliRunner()
    first = runner.invoke(cli, [*HUNT, "--source", f"files:{export}", "--cache", str(cache)])
    second = runner.invoke(cli, [*HUNT, "--source", f"files:{export}", "--cache", str(cache)])
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert "eventhub.log: entra-diagnostic-records (json-lines): SigninLogs 2" in first.stderr
    assert "reused the tables cached in" in second.stderr
    found = [json.loads(result.stdout)["findings"] for result in (first, second)]
    assert (
        len(found[0]) == 1
        and found[0][0]["user_principal_name"] == found[1][0]["user_principal_name"]
    )


def test_the_hunt_command_skips_bad_records_when_told_and_says_so(
    tmp_path: Path, export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (export / "notes.txt").write_text("not an export\n")
    runner = CliRunner()
    refused = runner.invoke(cli, [*HUNT, "--source", f"files:{export}"])
    assert refused.exit_code != 0
    assert "notes.txt:1: not an export tokenward can read" in str(refused.exception)
    skipped = runner.invoke(cli, [*HUNT, "--source", f"files:{export}", "--skip-bad-records"])
    assert skipped.exit_code == 0, skipped.output
    assert any("left out" in warning for warning in json.loads(skipped.stdout)["warnings"])


def test_a_load_for_a_playbook_keeps_only_the_columns_its_queries_name(export: Path) -> None:
    columns = columns_used(load_playbook().templates.values())
    with load_exports(export, columns=columns) as loaded:
        stored = {
            name
            for (name,) in loaded.con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = 'SigninLogs'"
            ).fetchall()
        }
    assert stored == set(columns["SigninLogs"])
    assert {
        "TimeGenerated",
        "UserPrincipalName",
        "AuthenticationProtocol",
        "DeviceDetail",
    } <= stored
    # Never named by a query, so never parsed, stored or held in memory.
    assert "AuthenticationDetails" not in stored


def test_a_cache_built_for_other_columns_is_not_reused(export: Path, tmp_path: Path) -> None:
    cache = tmp_path / "exports.duckdb"
    columns = columns_used(load_playbook().templates.values())
    with load_exports(export, cache=cache, columns=columns) as loaded:
        assert not loaded.reused
    with load_exports(export, cache=cache) as loaded:
        assert not loaded.reused
    with load_exports(export, cache=cache) as loaded:
        assert loaded.reused
