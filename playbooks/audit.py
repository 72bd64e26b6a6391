"""Hash-chained audit records, and the check that the chain is whole.

Each record carries the hash of the one before it and a hash of its own
content (an HMAC when a key is configured), and the chain's head is kept
apart. Editing a record breaks its hash, inserting one breaks the next
record's link, deleting one leaves a gap in the sequence, and deleting the
newest ones leaves the log shorter than its head.

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
from playbooks.store import Store, audit_head, audit_records
from playbooks.times import isoformat_z, utcnow

GENESIS = "0" * 64
REDACTED = "[redacted]"

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

    @property
    def ok(self) -> bool:
        return not self.problems


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
        seq = (head.seq if head else 0) + 1
        prev = head.hash if head else GENESIS
        digest = self._digest(seq, run_id, at, kind, actor, clean, prev)
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
        seq = head.seq if head else 0
        prev = head.hash if head else GENESIS
        at = isoformat_z(utcnow())
        written: list[AuditRecord] = []
        for run_id, kind, data, actor in entries:
            seq += 1
            clean = redact(data)
            digest = self._digest(seq, run_id, at, kind, actor, clean, prev)
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

    def verify(self) -> Verification:
        """Walk the chain from the first record; report every break."""
        result = Verification()
        expected_seq, prev = 1, GENESIS
        with self._store.engine.connect() as connection:
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
                try:
                    data = json.loads(row.data)
                except ValueError:
                    data = None
                digest = self._digest(
                    row.seq, row.run_id, row.at, row.kind, row.actor, data, row.prev_hash
                )
                if data is None or not hmac.compare_digest(digest, row.hash):
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
        self, seq: int, run_id: str, at: str, kind: str, actor: str, data: Any, prev: str
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
        if self._key:
            return hmac.new(self._key, payload, hashlib.sha256).hexdigest()
        return hashlib.sha256(payload).hexdigest()


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
