"""A stored plan is stored once: a run repeated after a crash stores it again harmlessly."""

from __future__ import annotations

from pathlib import Path

import pytest

from playbooks.errors import AuditError
from playbooks.store import open_store


def test_the_same_plan_stored_again_keeps_its_status_and_decisions(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    plan = {"plan_id": "plan-r-1", "run_id": "r-1", "content_hash": "a" * 64, "status": "pending"}
    assert store.save_plan(**plan, body="{}") == "stored"
    assert store.set_plan_status("plan-r-1", "approved", expected="pending")

    assert store.save_plan(**plan, body='{"again": true}') == "unchanged"
    row = store.plan("plan-r-1")
    assert row is not None and (row["status"], row["body"]) == ("approved", "{}")


def test_a_pending_plan_whose_actions_changed_is_replaced_not_duplicated(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    plan = {"plan_id": "plan-r-1", "run_id": "r-1", "status": "pending"}
    store.save_plan(**plan, content_hash="a" * 64, body="{}")
    assert store.save_plan(**plan, content_hash="b" * 64, body='{"new": 1}') == "replaced"
    (row,) = store.list_plans()
    assert (row["content_hash"], row["body"]) == ("b" * 64, '{"new": 1}')


def test_a_decided_plan_is_never_swapped_for_other_actions(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    plan = {"plan_id": "plan-r-1", "run_id": "r-1", "status": "pending"}
    store.save_plan(**plan, content_hash="a" * 64, body="{}")
    store.set_plan_status("plan-r-1", "approved", expected="pending")
    with pytest.raises(AuditError, match="plan plan-r-1 is already approved with other actions"):
        store.save_plan(**plan, content_hash="b" * 64, body="{}")
    row = store.plan("plan-r-1")
    assert row is not None and row["content_hash"] == "a" * 64
