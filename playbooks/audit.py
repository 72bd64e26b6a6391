"""Hash-chained audit records, and the check that the chain is whole.

Each record carries the hash of the one before it and a hash of its own
content (an HMAC when a key is configured), and the chain's head is kept
apart. Editing a record breaks its hash, inserting one breaks the next
record's link, deleting one leaves a gap in the sequence, and deleting the
newest ones leaves the log shorter than its head.

A chain is keyed or not from its first record on: the store keeps a
fingerprint of the key (an HMAC of a fixed label under it), and a log with no
key, or another key, is refused before it appends anything and told so when it
verifies, so one chain never mixes records hashed in different ways.

The audit is data, not logging: an intent is recorded before every side
effect and its outcome after. Nothing is stored that could let someone act
as tokenward: keys that name secrets and strings that look like tokens are
redacted before a record is written.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from playbooks.errors import AuditError
from playbooks.settings import ENV_AUDIT_KEY
from playbooks.store import Store, audit_head, audit_key, audit_records
from playbooks.times import isoformat_z, utcnow

GENESIS = "0" * 64
REDACTED = "[redacted]"
# What a key's fingerprint is the HMAC of: it tells which key keyed a chain
# and nothing about the key itself.
_FINGERPRINT_LABEL = b"tokenward audit key fingerprint"
# The fingerprint of a chain from before fingerprints were kept whose newest
# record matches neither no key nor the key at hand.
_UNKNOWN_KEY = "unknown"

_SECRET_KEY = re.compile(
    r"(authorization|password|secret|access_?token|refresh_?token|id_?token|"
    r"client_?assertion|api_?key|cookie|^token$)",
    re.IGNORECASE,
)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    run_id: str
    at: str
    kind: str
    actor: str
    data: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass
class Verification:
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    # Why the records could not be checked at all (the key is missing or wrong).
    unverifiable: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and self.unverifiable is None


def key_fingerprint(key: bytes | None) -> str | None:
    """What the store keeps of *key*: an HMAC of a fixed label under it; None without a key."""
    return hmac.new(key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest() if key else None


def redact(value: Any) -> Any:
    """*value* with secret-named keys and token-looking strings replaced."""
    if isinstance(value, dict):
        return {
            key: REDACTED if _SECRET_KEY.search(str(key)) else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return _BEARER.sub("Bearer " + REDACTED, _JWT.sub(REDACTED, value))
    return value


class AuditLog:
    """Appends records to the chain and verifies it."""

    def __init__(self, store: Store, *, key: bytes | None = None) -> None:
        self._store = store
        self._key = key
        self._fingerprint = key_fingerprint(key)
        # Set once the store's fingerprint is seen to be this log's: it is
        # written once and never changed, so appends need not read it again.
        self._claimed = False

    def record(
        self, run_id: str, kind: str, data: dict[str, Any], *, actor: str = "tokenward"
    ) -> AuditRecord:
        """Append one record; raises :class:`AuditError` if it cannot be written."""
        try:
            with self._store.engine.begin() as connection:
                return self.record_in(connection, run_id, kind, data, actor=actor)
        except SQLAlchemyError as failure:
            raise AuditError(f"the audit record {kind!r} could not be written: {failure}") from None

    def record_in(
        self,
        connection: Connection,
        run_id: str,
        kind: str,
        data: dict[str, Any],
        *,
        actor: str = "tokenward",
    ) -> AuditRecord:
        """Append one record inside the caller's transaction.

        For a change and its record that must land together or not at all
        (a webhook delivery stored and its acceptance audited).
        """
        clean = redact(data)
        at = isoformat_z(utcnow())
        head = connection.execute(select(audit_head).where(audit_head.c.id == 1)).first()
        self._claim(connection, head)
        seq = (head.seq if head else 0) + 1
        prev = head.hash if head else GENESIS
        digest = _digest(self._key, seq, run_id, at, kind, actor, clean, prev)
        connection.execute(
            insert(audit_records).values(
                seq=seq,
                run_id=run_id,
                at=at,
                kind=kind,
                actor=actor,
                data=_canonical(clean),
                prev_hash=prev,
                hash=digest,
            )
        )
        if head:
            connection.execute(
                update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=digest)
            )
        else:
            connection.execute(insert(audit_head).values(id=1, seq=seq, hash=digest))
        return AuditRecord(seq, run_id, at, kind, actor, clean, prev, digest)

    @property
    def store(self) -> Store:
        return self._store

    def record_many(
        self, run_id: str, items: list[tuple[str, dict[str, Any]]], *, actor: str = "tokenward"
    ) -> None:
        """Append several records in one transaction (a batch's intents or outcomes)."""
        if not items:
            return
        try:
            with self._store.engine.begin() as connection:
                self.record_many_in(
                    connection, [(run_id, kind, data, actor) for kind, data in items]
                )
        except SQLAlchemyError as failure:
            raise AuditError(
                f"{len(items)} audit records could not be written: {failure}"
            ) from None

    def record_many_in(
        self,
        connection: Connection,
        entries: list[tuple[str, str, dict[str, Any], str]],
    ) -> list[AuditRecord]:
        """Append ``(run_id, kind, data, actor)`` entries inside the caller's transaction.

        One read of the head, one insert of every record and one head update,
        however many entries: the webhook stores a burst of deliveries this way.
        """
        if not entries:
            return []
        head = connection.execute(select(audit_head).where(audit_head.c.id == 1)).first()
        self._claim(connection, head)
        seq = head.seq if head else 0
        prev = head.hash if head else GENESIS
        at = isoformat_z(utcnow())
        written: list[AuditRecord] = []
        for run_id, kind, data, actor in entries:
            seq += 1
            clean = redact(data)
            digest = _digest(self._key, seq, run_id, at, kind, actor, clean, prev)
            written.append(AuditRecord(seq, run_id, at, kind, actor, clean, prev, digest))
            prev = digest
        connection.execute(
            insert(audit_records),
            [
                {
                    "seq": r.seq,
                    "run_id": r.run_id,
                    "at": r.at,
                    "kind": r.kind,
                    "actor": r.actor,
                    "data": _canonical(r.data),
                    "prev_hash": r.prev_hash,
                    "hash": r.hash,
                }
                for r in written
            ],
        )
        last = written[-1]
        if head:
            connection.execute(
                update(audit_head).where(audit_head.c.id == 1).values(seq=last.seq, hash=last.hash)
            )
        else:
            connection.execute(insert(audit_head).values(id=1, seq=last.seq, hash=last.hash))
        return written

    def records(self, *, run_id: str | None = None, limit: int | None = None) -> list[AuditRecord]:
        query = select(audit_records).order_by(audit_records.c.seq)
        if run_id is not None:
            query = query.where(audit_records.c.run_id == run_id)
        if limit is not None:
            query = query.limit(limit)
        with self._store.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [_record(row) for row in rows]

    def check_key(self) -> None:
        """Raise :class:`AuditError` now unless this log's key (or none) is the chain's."""
        with self._store.engine.connect() as connection:
            head = connection.execute(select(audit_head).where(audit_head.c.id == 1)).first()
            self._chain_fingerprint(connection, head)

    def _claim(self, connection: Connection, head: Any) -> None:
        """Refuse to append unless this log's key is the chain's; the first record fixes it."""
        if self._claimed:
            return
        recorded, stored = self._chain_fingerprint(connection, head)
        if not stored:
            connection.execute(insert(audit_key).values(id=1, fingerprint=recorded))
        # Only a marker already committed is settled: a new one is the
        # transaction's until it commits.
        self._claimed = stored

    def _chain_fingerprint(self, connection: Connection, head: Any) -> tuple[str | None, bool]:
        """The chain's key fingerprint and whether the store holds it yet;
        :class:`AuditError` if it is not this log's."""
        marker = connection.execute(select(audit_key).where(audit_key.c.id == 1)).first()
        if marker is not None:
            recorded = marker.fingerprint
        elif head is None:
            recorded = self._fingerprint
        else:
            recorded = self._inferred_fingerprint(connection, head.seq)
        problem = self._mismatch(recorded)
        if problem is not None:
            raise AuditError(f"{problem}; nothing was recorded")
        return recorded, marker is not None

    def _inferred_fingerprint(self, connection: Connection, seq: int) -> str | None:
        """A chain from before fingerprints were kept: how its newest record was hashed."""
        row = connection.execute(select(audit_records).where(audit_records.c.seq == seq)).first()
        for key in (None, self._key):
            if row is not None and _row_digest(key, row) == row.hash:
                return key_fingerprint(key)
        return _UNKNOWN_KEY

    def _mismatch(self, recorded: str | None) -> str | None:
        """Why this log's key is not the one the chain was written with, or None."""
        if recorded == self._fingerprint:
            return None
        if self._fingerprint is None:
            return f"this audit is keyed: set {ENV_AUDIT_KEY} to its key"
        if recorded is None:
            return (
                f"this audit is not keyed but {ENV_AUDIT_KEY} is set: unset it for this "
                "database, or give keyed runs a new one"
            )
        return f"the key in {ENV_AUDIT_KEY} does not match this audit's key"

    def verify(self) -> Verification:
        """Walk the chain from the first record; report every break."""
        result = Verification()
        expected_seq, prev = 1, GENESIS
        with self._store.engine.connect() as connection:
            marker = connection.execute(select(audit_key).where(audit_key.c.id == 1)).first()
            if marker is not None:
                result.unverifiable = self._mismatch(marker.fingerprint)
                if result.unverifiable is not None:
                    return result
            head = connection.execute(select(audit_head).where(audit_head.c.id == 1)).first()
            total = connection.execute(select(func.count()).select_from(audit_records)).scalar_one()
            rows = connection.execute(select(audit_records).order_by(audit_records.c.seq))
            for row in rows:
                result.checked += 1
                if row.seq != expected_seq:
                    if row.seq > expected_seq:
                        result.problems.append(
                            f"records {expected_seq}..{row.seq - 1} are missing "
                            f"(the sequence jumps from {expected_seq - 1} to {row.seq})"
                        )
                    else:
                        result.problems.append(f"record {row.seq} is out of sequence")
                if row.prev_hash != prev:
                    result.problems.append(
                        f"record {row.seq} does not link to the record before it "
                        "(a record was inserted, deleted or edited there)"
                    )
                digest = _row_digest(self._key, row)
                if digest is None or not hmac.compare_digest(digest, row.hash):
                    result.problems.append(
                        f"record {row.seq} ({row.kind}) was edited: its hash does not match"
                    )
                expected_seq, prev = row.seq + 1, row.hash

        if head is None and total:
            result.problems.append("the chain's head is missing")
        elif head is not None:
            if head.seq != expected_seq - 1 or head.hash != prev:
                result.problems.append(
                    f"the log ends at record {expected_seq - 1} but its head says {head.seq}: "
                    "records were deleted from the end or the head was altered"
                )
        return result


def _digest(
    key: bytes | None, seq: int, run_id: str, at: str, kind: str, actor: str, data: Any, prev: str
) -> str:
    payload = _canonical(
        {
            "seq": seq,
            "run_id": run_id,
            "at": at,
            "kind": kind,
            "actor": actor,
            "data": data,
            "prev": prev,
        }
    ).encode()
    if key:
        return hmac.new(key, payload, hashlib.sha256).hexdigest()
    return hashlib.sha256(payload).hexdigest()


def _row_digest(key: bytes | None, row: Any) -> str | None:
    """The hash a stored record should have under *key*; None if its data is not JSON."""
    try:
        data = json.loads(row.data)
    except ValueError:
        return None
    return _digest(key, row.seq, row.run_id, row.at, row.kind, row.actor, data, row.prev_hash)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _record(row: Any) -> AuditRecord:
    return AuditRecord(
        seq=row.seq,
        run_id=row.run_id,
        at=row.at,
        kind=row.kind,
        actor=row.actor,
        data=json.loads(row.data),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )
