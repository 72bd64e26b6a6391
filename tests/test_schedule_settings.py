"""Specification: [schedule] settings that cannot work are refused, naming the setting;
the hunt's windows and watermark follow the rules the scheduled path relies on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from playbooks.errors import SettingsError
from playbooks.jobs import HUNT, hunt_window
from playbooks.settings import ScheduleSettings, settings_from_dict
from playbooks.store import open_store
from playbooks.watch import prepare_watch
from playbooks.wiring import SourceSpec

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "where", "message"),
    [
        (
            {"reconcile": True, "workspaces": []},
            "schedule.analytic_rules",
            "analytic_rules is empty",
        ),
        (
            {"reconcile": True, "analytic_rules": ["0c7d1e2f-0000-4000-8000-000000000001"]},
            "schedule.workspaces",
            "workspaces is empty",
        ),
        ({"max_window": "5m"}, "schedule.max_window", "must be longer than max_ingestion_delay"),
        ({"mode": "yolo"}, "schedule.mode", "not dry-run, approve or auto"),
        ({"max_ingestion_delay": "soon"}, "schedule.max_ingestion_delay", "not a duration"),
        ({"workspaces": ["law-soc"]}, "schedule.workspaces", "not a workspace resource id"),
        ({"analytic_rules": ["my rule"]}, "schedule.analytic_rules", "neither a rule id"),
        ({"hunt_every_seconds": 0}, "schedule.hunt_every_seconds", "greater than or equal to 0.1"),
    ],
    ids=[
        "rules-missing",
        "workspaces-missing",
        "window-inside-overlap",
        "mode",
        "duration",
        "workspace-id",
        "rule-id",
        "interval",
    ],
)
def test_a_schedule_that_cannot_work_is_refused_naming_the_setting(
    schedule: dict[str, object], where: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=message) as refused:
        settings_from_dict({"schedule": schedule}, environ={})
    assert f"at {where}" in str(refused.value)


def test_watch_with_no_job_turned_on_says_which_settings_to_set(tmp_path: Path) -> None:
    settings = settings_from_dict({"store": {"url": f"sqlite:///{tmp_path / 's.db'}"}}, environ={})
    with pytest.raises(SettingsError, match="schedule.hunt = true or schedule.reconcile = true"):
        prepare_watch(settings, SourceSpec.parse("live"))


def test_each_window_starts_the_maximum_ingestion_delay_before_the_last_one_ended() -> None:
    schedule = ScheduleSettings(max_ingestion_delay="20m", first_window="1h", max_window="6h")
    first = hunt_window(None, NOW, schedule)
    assert (first.start, first.end) == (NOW - timedelta(hours=1), NOW)
    later = hunt_window(NOW, NOW + timedelta(minutes=5), schedule)
    assert (later.start, later.end) == (NOW - timedelta(minutes=20), NOW + timedelta(minutes=5))


def test_after_a_long_outage_a_window_is_capped_and_the_rest_caught_up_by_later_cycles() -> None:
    schedule = ScheduleSettings(max_ingestion_delay="20m", max_window="6h")
    window = hunt_window(NOW, NOW + timedelta(days=2), schedule)
    assert window.start == NOW - timedelta(minutes=20)
    assert window.end == window.start + timedelta(hours=6)


def test_a_clock_set_back_still_overlaps_and_never_moves_the_watermark_back(tmp_path: Path) -> None:
    schedule = ScheduleSettings(max_ingestion_delay="20m")
    window = hunt_window(NOW, NOW - timedelta(hours=1), schedule)
    assert window.start == NOW - timedelta(hours=1, minutes=20)
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    assert store.advance_job(HUNT, watermark="2026-01-15T12:00:00Z", run_id="r-1", detail={"n": 1})
    assert not store.advance_job(
        HUNT, watermark="2026-01-15T11:00:00Z", run_id="r-2", detail={"n": 2}
    )
    state = store.job(HUNT)
    assert state is not None
    assert (state["watermark"], state["run_id"], state["detail"]) == (
        "2026-01-15T12:00:00Z",
        "r-2",
        {"n": 2},
    )
