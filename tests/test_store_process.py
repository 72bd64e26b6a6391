"""serve's store process: groups committed in a child, a dead child answered and replaced."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from playbooks.audit import AuditLog
from playbooks.errors import AuditError
from playbooks.server import StoreProcess
from playbooks.settings import settings_from_dict
from playbooks.store import in_memory, open_store
from tests.test_inbox import delivery

pytestmark = pytest.mark.slow


@pytest.fixture
def apart(tmp_path: Path) -> Iterator[tuple[StoreProcess, AuditLog]]:
    url = f"sqlite:///{tmp_path / 'tokenward.db'}"
    audit = AuditLog(open_store(url))
    process = StoreProcess(settings_from_dict({"store": {"url": url}}, environ={}), audit=audit)
    process.start()
    yield process, audit
    process.stop()


def test_a_group_is_committed_by_the_child_before_it_answers(
    apart: tuple[StoreProcess, AuditLog],
) -> None:
    process, audit = apart
    first, again = delivery("inc-1"), delivery("inc-1")

    accepted = process.record([first, again, delivery("inc-2")], [])

    assert [a.duplicate for a in accepted] == [False, True, False]
    assert accepted[1].run_id == first.run_id
    # Read back in this process: the answer came after the commit.
    kinds = [r.kind for r in audit.records()]
    assert kinds.count("delivery.accepted") == 2 and kinds.count("delivery.duplicate") == 1
    assert audit.verify().ok


def test_a_dead_child_fails_its_group_and_the_next_group_starts_another(
    apart: tuple[StoreProcess, AuditLog],
) -> None:
    process, audit = apart
    process.record([delivery("inc-1")], [])
    assert process._process is not None and process._process.pid is not None
    os.kill(process._process.pid, signal.SIGKILL)
    process._process.join(10)

    later = delivery("inc-2")
    accepted = process.record([later], [])

    assert accepted[0].run_id == later.run_id
    kinds = [r.kind for r in audit.records()]
    assert kinds.count("delivery.accepted") == 2
    (restarted,) = [r for r in audit.records() if r.kind == "store_process.restarted"]
    assert restarted.data == {"exit_code": -signal.SIGKILL}
    assert audit.verify().ok


def test_a_store_the_child_cannot_open_stops_serve_from_starting(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no-such-dir' / 'deeper' / 'tokenward.db'}"
    (tmp_path / "no-such-dir").write_text("a file where the folder should be")
    process = StoreProcess(settings_from_dict({"store": {"url": url}}, environ={}))

    with pytest.raises(AuditError, match="store process"):
        process.start()


def test_after_a_failed_start_groups_are_refused_for_a_while_without_another_try(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'no-such-dir' / 'deeper' / 'tokenward.db'}"
    (tmp_path / "no-such-dir").write_text("a file where the folder should be")
    process = StoreProcess(settings_from_dict({"store": {"url": url}}, environ={}))

    with pytest.raises(AuditError, match="store process (exited on start|could not open)"):
        process.record([delivery("inc-1")], [])
    with pytest.raises(AuditError, match=r"failed to start \d+\.\d s ago"):
        process.record([delivery("inc-2")], [])
    with pytest.raises(AuditError, match="failed to start"):
        process.revive()
    assert process._process is None


def test_a_stopped_store_process_refuses_groups_instead_of_starting_again(
    apart: tuple[StoreProcess, AuditLog],
) -> None:
    process, audit = apart
    process.stop()

    with pytest.raises(AuditError, match="stopped"):
        process.record([delivery("inc-1")], [])
    assert audit.records() == []


def test_a_database_in_memory_is_written_in_process() -> None:
    assert in_memory("sqlite://") and in_memory("sqlite:///:memory:")
    assert in_memory("sqlite:///file:state?mode=memory&uri=true")
    assert not in_memory("sqlite:///tokenward.db")
    assert not in_memory("postgresql+psycopg://u@h/db")
