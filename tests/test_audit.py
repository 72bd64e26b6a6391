"""The audit log is a hash chain: any edit, insertion or deletion is found."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select, update

from playbooks.audit import REDACTED, AuditLog
from playbooks.store import audit_records, open_store


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    audit = AuditLog(open_store(f"sqlite:///{tmp_path / 'state.db'}"))
    for number in range(5):
        audit.record("r-1", "step", {"n": number})
    return audit


def test_an_untouched_chain_verifies(log: AuditLog) -> None:
    result = log.verify()
    assert result.ok and result.checked == 5


def test_editing_a_record_is_found(log: AuditLog) -> None:
    with log._store.engine.begin() as connection:
        connection.execute(
            update(audit_records).where(audit_records.c.seq == 3).values(data='{"n": 99}')
        )
    problems = log.verify().problems
    assert problems == ["record 3 (step) was edited: its hash does not match"]


def test_deleting_a_record_in_the_middle_is_found(log: AuditLog) -> None:
    with log._store.engine.begin() as connection:
        connection.execute(delete(audit_records).where(audit_records.c.seq == 2))
    problems = log.verify().problems
    assert any("records 2..2 are missing" in problem for problem in problems)
    assert any("record 3 does not link" in problem for problem in problems)


def test_deleting_the_newest_records_is_found(log: AuditLog) -> None:
    with log._store.engine.begin() as connection:
        connection.execute(delete(audit_records).where(audit_records.c.seq >= 4))
    assert log.verify().problems == [
        "the log ends at record 3 but its head says 5: records were deleted from the end "
        "or the head was altered"
    ]


def test_inserting_a_forged_record_is_found(log: AuditLog) -> None:
    with log._store.engine.begin() as connection:
        last = connection.execute(select(audit_records).where(audit_records.c.seq == 5)).first()
        connection.execute(
            insert(audit_records).values(
                seq=6,
                run_id="r-1",
                at=last.at,
                kind="forged",
                actor="x",
                data="{}",
                prev_hash=last.hash,
                hash="0" * 64,
            )
        )
    problems = log.verify().problems
    assert "record 6 (forged) was edited: its hash does not match" in problems


def test_a_chain_under_an_hmac_key_does_not_verify_without_it(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'keyed.db'}")
    keyed = AuditLog(store, key=b"k" * 32)
    keyed.record("r-1", "step", {})
    assert keyed.verify().ok
    assert not AuditLog(store).verify().ok


def test_tokens_and_secrets_never_reach_a_record(log: AuditLog) -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    record = log.record(
        "r-1",
        "call",
        {
            "headers": {"Authorization": f"Bearer {jwt}"},
            "client_secret": "s3cr3t",
            "note": f"got {jwt}",
            "text": "Bearer abc.def",
        },
    )
    stored = log.records(run_id="r-1")[-1]
    assert stored.data == record.data
    assert stored.data["headers"]["Authorization"] == REDACTED
    assert stored.data["client_secret"] == REDACTED
    assert jwt not in str(stored.data) and "s3cr3t" not in str(stored.data)
    assert stored.data["text"] == f"Bearer {REDACTED}"
