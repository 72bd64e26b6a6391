"""The audit log is a hash chain: any edit, insertion or deletion is found.

A chain is keyed or not from its first record on, and says which when it is
verified with the wrong key or none. What a key adds, and what neither finds,
is pinned here as the README states it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import delete, func, insert, select, update

from playbooks.audit import GENESIS, REDACTED, AuditLog, _digest, key_fingerprint
from playbooks.errors import AuditError
from playbooks.settings import ENV_AUDIT_KEY
from playbooks.store import audit_head, audit_key, audit_records, open_store


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


KEY = b"k" * 32
OTHER_KEY = b"o" * 32


@pytest.fixture
def keyed(tmp_path: Path) -> AuditLog:
    audit = AuditLog(open_store(f"sqlite:///{tmp_path / 'keyed.db'}"), key=KEY)
    audit.record("r-1", "step", {})
    return audit


def count(audit: AuditLog) -> int:
    with audit.store.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(audit_records)).scalar_one())


def test_verifying_a_keyed_chain_without_the_key_says_the_key_is_missing(keyed: AuditLog) -> None:
    assert keyed.verify().ok
    result = AuditLog(keyed.store).verify()
    assert not result.ok and not result.problems
    assert result.unverifiable == f"this audit is keyed: set {ENV_AUDIT_KEY} to its key"


def test_verifying_a_keyed_chain_with_another_key_says_the_key_does_not_match(
    keyed: AuditLog,
) -> None:
    result = AuditLog(keyed.store, key=OTHER_KEY).verify()
    assert not result.ok and not result.problems
    assert result.unverifiable == f"the key in {ENV_AUDIT_KEY} does not match this audit's key"


@pytest.mark.parametrize("key", [None, OTHER_KEY], ids=["no key", "another key"])
def test_a_keyed_chain_takes_no_record_without_its_key(keyed: AuditLog, key: bytes | None) -> None:
    other = AuditLog(keyed.store, key=key)
    with pytest.raises(AuditError, match=ENV_AUDIT_KEY):
        other.record("r-2", "step", {})
    with pytest.raises(AuditError, match=ENV_AUDIT_KEY):
        other.record_many("r-2", [("step", {}), ("step", {})])
    with pytest.raises(AuditError, match=ENV_AUDIT_KEY):
        other.check_key()
    assert count(keyed) == 1 and keyed.verify().ok


def test_an_unkeyed_chain_takes_no_keyed_record(log: AuditLog) -> None:
    with pytest.raises(AuditError, match=f"this audit is not keyed but {ENV_AUDIT_KEY} is set"):
        AuditLog(log.store, key=KEY).record("r-2", "step", {})
    assert count(log) == 5
    assert AuditLog(log.store, key=KEY).verify().unverifiable is not None
    assert log.verify().ok


def test_the_store_keeps_a_fingerprint_that_reveals_nothing_of_the_key(keyed: AuditLog) -> None:
    with keyed.store.engine.connect() as connection:
        (stored,) = connection.execute(select(audit_key.c.fingerprint)).one()
    assert stored == key_fingerprint(KEY) != key_fingerprint(OTHER_KEY)
    assert KEY.decode() not in stored
    assert stored not in {hashlib.sha256(KEY).hexdigest(), hashlib.sha512(KEY).hexdigest()[:64]}


def test_a_chain_from_before_fingerprints_keeps_the_key_its_newest_record_has(
    keyed: AuditLog,
) -> None:
    with keyed.store.engine.begin() as connection:
        connection.execute(delete(audit_key))
    with pytest.raises(AuditError, match="this audit is keyed"):
        AuditLog(keyed.store).record("r-2", "step", {})
    keyed.record("r-2", "step", {})
    assert count(keyed) == 2 and keyed.verify().ok
    assert AuditLog(keyed.store).verify().unverifiable is not None


def forge(audit: AuditLog, seq: int, data: dict[str, int]) -> None:
    """Edit record *seq* and recompute the plain hashes from there to the head,
    as anyone who can write the database can."""
    with audit.store.engine.begin() as connection:
        rows = connection.execute(select(audit_records).order_by(audit_records.c.seq)).all()
        prev = GENESIS
        for row in rows:
            if row.seq >= seq:
                content = data if row.seq == seq else json.loads(row.data)
                digest = _digest(
                    None, row.seq, row.run_id, row.at, row.kind, row.actor, content, prev
                )
                connection.execute(
                    update(audit_records)
                    .where(audit_records.c.seq == row.seq)
                    .values(data=json.dumps(content), prev_hash=prev, hash=digest)
                )
                prev = digest
            else:
                prev = row.hash
        connection.execute(update(audit_head).values(hash=prev))


def test_without_a_key_a_chain_rewritten_from_an_edit_on_verifies(log: AuditLog) -> None:
    forge(log, 3, {"n": 99})
    assert log.verify().ok


def test_with_a_key_a_chain_rewritten_without_it_does_not_verify(keyed: AuditLog) -> None:
    keyed.record("r-1", "step", {"n": 1})
    forge(keyed, 1, {"n": 99})
    assert keyed.verify().problems == [
        "record 1 (step) was edited: its hash does not match",
        "record 2 (step) was edited: its hash does not match",
    ]


@pytest.mark.parametrize("key", [None, KEY], ids=["no key", "a key"])
def test_deleting_the_newest_records_and_rewinding_the_head_is_not_found(
    tmp_path: Path, key: bytes | None
) -> None:
    """The head lives in the same database as the records: with or without a
    key, a truncated chain with a matching head cannot be told from a shorter one."""
    audit = AuditLog(open_store(f"sqlite:///{tmp_path / 'state.db'}"), key=key)
    records = [audit.record("r-1", "step", {"n": number}) for number in range(5)]
    with audit.store.engine.begin() as connection:
        connection.execute(delete(audit_records).where(audit_records.c.seq >= 4))
        connection.execute(update(audit_head).values(seq=3, hash=records[2].hash))
    result = audit.verify()
    assert result.ok and result.checked == 3


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
