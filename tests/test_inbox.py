"""The inbox: stored once, leased, recovered after a dead worker, set aside when poisonous."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from playbooks.audit import AuditLog
from playbooks.inbox import Delivery, Inbox
from playbooks.store import open_store


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def box(tmp_path: Path, clock: Clock) -> Inbox:
    store = open_store(f"sqlite:///{tmp_path / 'inbox.db'}")
    return Inbox(store, AuditLog(store), clock=clock)


def delivery(incident: str = "inc-1", fingerprint: str = "f1", revision: str = "rev-1") -> Delivery:
    return Delivery(
        id=f"d-{secrets.token_hex(4)}",
        run_id=f"r-{secrets.token_hex(4)}",
        run_key=f"{incident}|{fingerprint}",
        incident_key=incident,
        revision=revision,
        event="Create",
        fingerprint=fingerprint,
        received_at="2026-01-15T09:40:00Z",
        caller="logic-app",
        scheme="bearer",
        body="{}",
        summary={},
    )


def test_deliveries_of_one_run_racing_in_one_group_store_one_row(box: Inbox) -> None:
    first, same, update, other = (
        delivery(),
        delivery(),
        delivery(revision="rev-2"),
        delivery("inc-2"),
    )

    results = box.record([first, same, update, other])

    assert [r.duplicate for r in results] == [False, True, True, False]
    assert {r.run_id for r in results[:3]} == {first.run_id}
    assert "same incident revision" in results[1].reason and "unchanged" in results[2].reason
    assert box.counts() == {"pending": 2}


def test_a_claimed_delivery_is_not_claimed_twice_while_its_lease_holds(
    box: Inbox, clock: Clock
) -> None:
    box.record([delivery()])
    assert box.claim("w1", lease_s=10, max_attempts=3) is not None
    assert box.claim("w2", lease_s=10, max_attempts=3) is None


def test_a_dead_workers_delivery_is_taken_over_when_its_lease_runs_out(
    box: Inbox, clock: Clock
) -> None:
    box.record([delivery()])
    first = box.claim("w1", lease_s=10, max_attempts=3)
    clock.now += 11

    second = box.claim("w2", lease_s=10, max_attempts=3)

    assert second is not None and second.id == first.id and second.attempts == 2  # type: ignore[union-attr]
    assert not box.finish(first.id, "w1", status="done", outcome={})  # type: ignore[union-attr]
    assert box.finish(second.id, "w2", status="done", outcome={})


def test_a_heartbeat_keeps_the_lease(box: Inbox, clock: Clock) -> None:
    box.record([delivery()])
    claimed = box.claim("w1", lease_s=10, max_attempts=3)
    for _ in range(3):
        clock.now += 6
        assert box.renew(claimed.id, "w1", lease_s=10)  # type: ignore[union-attr]
    assert box.claim("w2", lease_s=10, max_attempts=3) is None


def test_runs_of_one_incident_never_overlap(box: Inbox) -> None:
    box.record([delivery(fingerprint="f1"), delivery(fingerprint="f2")])
    assert box.claim("w1", lease_s=10, max_attempts=3) is not None
    assert box.claim("w2", lease_s=10, max_attempts=3) is None


def test_a_delivery_that_kills_its_worker_every_time_is_set_aside(box: Inbox, clock: Clock) -> None:
    box.record([delivery()])
    for _ in range(2):
        assert box.claim("w", lease_s=1, max_attempts=2) is not None
        clock.now += 2

    assert box.claim("w", lease_s=1, max_attempts=2) is None
    assert box.counts() == {"failed": 1}


def test_a_failed_run_is_tried_again_after_its_wait(box: Inbox, clock: Clock) -> None:
    box.record([delivery()])
    claimed = box.claim("w", lease_s=10, max_attempts=3)
    assert box.retry_later(claimed.id, "w", after_s=60, error="Log Analytics 503")  # type: ignore[union-attr]
    assert box.claim("w", lease_s=10, max_attempts=3) is None
    clock.now += 61
    assert box.claim("w", lease_s=10, max_attempts=3) is not None


def test_a_store_waits_out_another_writers_lock_instead_of_failing(
    box: Inbox, tmp_path: Path
) -> None:
    import sqlite3
    import threading
    import time

    held = threading.Event()

    def hold_the_lock() -> None:
        other = sqlite3.connect(tmp_path / "inbox.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(0.3)
        other.execute("COMMIT")
        other.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    held.wait()
    started = time.monotonic()
    (accepted,) = box.record([delivery()])
    waited = time.monotonic() - started
    holder.join()

    assert not accepted.duplicate
    assert 0.25 < waited < 2
