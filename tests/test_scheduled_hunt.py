"""Specification: tokenward hunts on a schedule, so a phish nobody told it about is contained.

``tokenward watch`` runs here as it does in production (APScheduler queues
cycles in the inbox, the worker runs them with the real Log Analytics and
Graph SDKs) against the emulator, whose workspace can hold a sign-in back
as a real one arrives minutes late.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from playbooks.jobs import HUNT
from playbooks.times import as_utc, parse_duration
from tests.scheduled import (
    TARGET,
    job,
    minutes_ago,
    phish_tables,
    records,
    revokes,
    scheduled_settings,
    tenant,
    wait_for,
    watching,
)


def _completed(settings: Any) -> list[Any]:
    return records(settings, "schedule.window_completed")


def _found(record: Any) -> int:
    return sum(record.data["findings"].values())


def test_a_sign_in_that_arrives_late_is_found_by_a_later_cycle_and_contained_once(
    emu: Any, tmp_path: Path
) -> None:
    tenant(emu)
    others, phish = phish_tables(minutes_ago(2))
    emu.log_analytics.workspace.load(others)
    # The sign-in happened two minutes ago but reaches the workspace only now + 2 s.
    emu.log_analytics.workspace.add_later({"SigninLogs": [phish]}, after_seconds=2.0)
    settings = scheduled_settings(emu, tmp_path)

    with watching(settings) as failures:
        wait_for(lambda: revokes(emu) or failures, timeout=40, what="a revocation")
        # Let more cycles hunt windows that still hold the same sign-in.
        seen = len(_completed(settings))
        wait_for(
            lambda: len(_completed(settings)) >= seen + 3 or failures,
            timeout=30,
            what="three more cycles",
        )
    assert not failures, failures

    completed = _completed(settings)
    finding_cycles = [r for r in completed if _found(r)]
    empty_before = [r for r in completed if r.seq < finding_cycles[0].seq]
    assert empty_before, (
        "the first cycles ran while the sign-in was still held back, and found nothing"
    )
    assert all(not _found(r) for r in empty_before)
    assert len(finding_cycles) >= 2, "later overlapping windows saw the same sign-in again"
    assert len(revokes(emu)) == 1, "a sign-in seen by several cycles is contained once"
    (contained,) = records(settings, "finding.contained")
    assert contained.data["user"] == TARGET
    assert contained.data["trigger"] == "schedule:hunt"
    assert 0 < contained.data["sign_in_to_containment_seconds"] < 600


def test_each_window_overlaps_the_last_completed_one_by_the_maximum_ingestion_delay(
    emu: Any, tmp_path: Path
) -> None:
    tenant(emu)
    settings = scheduled_settings(emu, tmp_path)
    with watching(settings) as failures:
        wait_for(
            lambda: len(_completed(settings)) >= 3 or failures, timeout=30, what="three cycles"
        )
    assert not failures, failures
    windows = [[as_utc(t) for t in r.data["window"]] for r in _completed(settings)]
    overlap = parse_duration(settings.schedule.max_ingestion_delay)
    first_start, first_end = windows[0]
    # The first reaches first_window back from when its cycle was queued.
    first = parse_duration(settings.schedule.first_window)
    assert first <= first_end - first_start < first + timedelta(seconds=10)
    for (_, previous_end), (start, end) in zip(windows, windows[1:], strict=False):
        assert start == previous_end - overlap
        assert end > previous_end
    assert as_utc(job(settings, HUNT)["watermark"]) == windows[-1][1]


def test_a_cycle_the_workspace_fails_leaves_its_window_to_the_next_and_nothing_is_lost(
    emu: Any, tmp_path: Path
) -> None:
    tenant(emu)
    others, phish = phish_tables(minutes_ago(3))
    emu.log_analytics.workspace.load({**others, "SigninLogs": [*others["SigninLogs"], phish]})
    # The workspace answers 503 to every query for the first cycles.
    emu.fault(path=r"^/v1/\$batch$", status=503, body="<html>Service Unavailable</html>", times=12)
    settings = scheduled_settings(
        emu, tmp_path, retry={"max_attempts": 2}, inbox={"max_attempts": 10}
    )

    with watching(settings) as failures:
        wait_for(lambda: revokes(emu) or failures, timeout=60, what="a revocation after the outage")
    assert not failures, failures

    not_completed = records(settings, "schedule.window_not_completed")
    assert not_completed, "the cycles during the outage did not complete"
    (first_completed, *_) = _completed(settings)
    assert first_completed.seq > not_completed[0].seq
    # The window that finally completed starts where the failed one did: the first.
    assert as_utc(first_completed.data["window"][0]) == as_utc(not_completed[0].data["window"][0])
    assert len(revokes(emu)) == 1


def test_a_dry_run_schedule_makes_no_graph_responder_and_writes_nothing(
    emu: Any, tmp_path: Path
) -> None:
    tenant(emu)
    others, phish = phish_tables(minutes_ago(2))
    emu.log_analytics.workspace.load({**others, "SigninLogs": [*others["SigninLogs"], phish]})
    settings = scheduled_settings(emu, tmp_path, schedule={"mode": "dry-run"})
    with watching(settings) as failures:
        wait_for(
            lambda: [r for r in _completed(settings) if _found(r)] or failures,
            timeout=30,
            what="a finding",
        )
    assert not failures, failures
    assert revokes(emu) == []
    assert [call for call in emu.requests(r"^/v1\.0/")] == [], (
        "dry-run reads nothing from Graph either"
    )
