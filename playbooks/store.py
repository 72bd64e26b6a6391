"""The state database: the webhook inbox, runs, plans and the audit log (SQLAlchemy Core).

SQLite by default, one file; a PostgreSQL URL works the same way when several
workers share state. Times are stored as ISO 8601 text in UTC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from playbooks.errors import AuditError, SettingsError
from playbooks.errors import Location as _Location
from playbooks.times import isoformat_z, utcnow

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("started_at", String(40), nullable=False),
    Column("ended_at", String(40)),
    Column("trigger", String(64), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("summary", Text),
)

audit_records = Table(
    "audit_records",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("run_id", String(64), nullable=False, index=True),
    Column("at", String(40), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("data", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# The chain's head, written with every record, so deleting the newest records
# is noticed as well as editing or removing older ones.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

plans = Table(
    "plans",
    metadata,
    Column("id", String(80), primary_key=True),
    Column("run_id", String(64), nullable=False, index=True),
    Column("created_at", String(40), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("status", String(24), nullable=False),
    Column("body", Text, nullable=False),
)


# The webhook inbox: every delivery accepted is stored here before it is
# acknowledged, and a worker leases it to run the playbook (playbooks/inbox.py).
# One row per run: a delivery whose incident and scope are already here is a
# duplicate of that row (``run_key`` is unique). Instants a worker compares
# (``available_at``, ``lease_expires_at``) are Unix milliseconds.
inbox = Table(
    "inbox",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("run_id", String(64), nullable=False, unique=True),
    Column("run_key", String(64), nullable=False, unique=True),
    Column("incident_key", String(512), nullable=False, index=True),
    Column("revision", String(256), nullable=False),
    Column("event", String(32), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("received_at", String(40), nullable=False),
    Column("caller", String(256), nullable=False),
    Column("scheme", String(16), nullable=False),
    Column("body", Text, nullable=False),
    # pending, running, done, failed
    Column("status", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("available_at", BigInteger, nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_expires_at", BigInteger),
    Column("finished_at", String(40)),
    Column("outcome", Text),
)


@dataclass(frozen=True)
class Store:
    engine: Engine

    def start_run(self, *, run_id: str, trigger: str, mode: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                insert(runs).values(
                    id=run_id,
                    started_at=isoformat_z(utcnow()),
                    trigger=trigger,
                    mode=mode,
                    status="running",
                )
            )

    def finish_run(self, *, run_id: str, status: str, summary: dict[str, Any]) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(
                    ended_at=isoformat_z(utcnow()),
                    status=status,
                    summary=json.dumps(summary, sort_keys=True),
                )
            )

    def run(self, run_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
        return dict(row) if row else None

    def save_plan(self, *, plan_id: str, run_id: str, content_hash: str, status: str, body: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                insert(plans).values(
                    id=plan_id,
                    run_id=run_id,
                    created_at=isoformat_z(utcnow()),
                    content_hash=content_hash,
                    status=status,
                    body=body,
                )
            )


def open_store(url: str) -> Store:
    """Open (and create if needed) the database at *url*."""
    try:
        parsed = make_url(url)
    except Exception:
        raise SettingsError(f"not a database URL: {url!r}", source=_Location(key="store.url")) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed)
    if parsed.get_backend_name() == "sqlite":
        _serialise_sqlite_writers(engine)
    try:
        metadata.create_all(engine)
    except SQLAlchemyError as failure:
        raise AuditError(f"cannot open the state database {url!r}: {failure}") from None
    return Store(engine=engine)


def _serialise_sqlite_writers(engine: Engine) -> None:
    """Make every SQLite transaction take the write lock when it begins.

    Appends to the audit chain read the head and write the next record; two
    processes doing that at once must not both read the same head.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
