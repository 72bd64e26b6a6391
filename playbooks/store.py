"""The state database: the webhook inbox, runs, plans, approvals, the action
ledger and the audit log (SQLAlchemy Core).

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
    and_,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from playbooks.errors import AuditError, SettingsError
from playbooks.errors import Location as _Location
from playbooks.times import as_utc, isoformat_z, utcnow

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

# Whether the chain is keyed, fixed when its first record is written: a
# fingerprint of the key (an HMAC of a fixed label under it, which tells
# nothing about the key) or NULL for a chain hashed without one. Every append
# checks it, so one chain never mixes keys.
audit_key = Table(
    "audit_key",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("fingerprint", String(64)),
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

# A named person's decision on a stored plan, bound to the hash they saw.
approvals = Table(
    "approvals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("plan_id", String(80), nullable=False, index=True),
    Column("decision", String(16), nullable=False),
    Column("by", String(256), nullable=False),
    Column("reason", Text),
    Column("at", String(40), nullable=False),
    Column("plan_hash", String(64), nullable=False),
)

# Every write tokenward means to make, before it is sent (intent), and what
# came of it (outcome). One row per action and user: a re-run reads it to skip
# what is done, to stop revoke loops (cooldown) and to resume after a crash.
action_ledger = Table(
    "action_ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("action_id", String(64), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    # The user's object id when known, else the lower-cased UPN.
    Column("user_key", String(256), nullable=False, index=True),
    Column("user_principal_name", String(256), nullable=False),
    # The findings (device code flows) the action answers, JSON.
    Column("finding_ids", Text, nullable=False),
    Column("sign_in_at", String(40)),
    Column("run_id", String(64), nullable=False),
    Column("plan_id", String(80)),
    # "intent" until the outcome is known; then an ActionStatus value.
    Column("status", String(24), nullable=False),
    Column("intent_at", String(40), nullable=False),
    Column("outcome_at", String(40)),
    Column("detail", Text),
)

INTENT = "intent"


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    action_id: str
    kind: str
    user_key: str
    user_principal_name: str
    finding_ids: tuple[str, ...]
    sign_in_at: str | None
    run_id: str
    plan_id: str | None
    status: str
    intent_at: str
    outcome_at: str | None
    detail: str | None

    @property
    def open(self) -> bool:
        """An intent without an outcome: the run stopped after deciding to act."""
        return self.status == INTENT


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


# Where each scheduled job has got to: the end of the last hunt window
# completed, or the creation time of the newest incident reconciled. A cycle
# that fails leaves it alone, so the next window starts where the gap began.
job_state = Table(
    "job_state",
    metadata,
    Column("job", String(32), primary_key=True),
    Column("watermark", String(40)),
    Column("run_id", String(64)),
    Column("updated_at", String(40), nullable=False),
    # JSON: what the last cycle did (counts), for /readyz and the metrics.
    Column("detail", Text),
)

# Each device code flow the first time a run found it worth acting on, and the
# first time its containment took effect: the SOC's detection and containment
# times, measured once per finding whichever path (webhook, re-hunt,
# scheduled hunt, reconciliation, approval) got there first.
findings = Table(
    "findings",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("user_principal_name", String(256), nullable=False),
    Column("tier", String(16), nullable=False),
    Column("sign_in_at", String(40), nullable=False),
    Column("detected_at", String(40), nullable=False),
    Column("detected_by", String(64), nullable=False),
    Column("trigger", String(64), nullable=False),
    Column("contained_at", String(40)),
    Column("contained_by", String(64)),
)


@dataclass(frozen=True)
class Store:
    engine: Engine

    def checkpoint(self) -> None:
        """Fold SQLite's write-ahead log into the database file, so a copy of
        the file alone holds every record (run when a service stops)."""
        if self.engine.dialect.name != "sqlite":
            return
        with self.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

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

    def save_plan(
        self, *, plan_id: str, run_id: str, content_hash: str, status: str, body: str
    ) -> str:
        """Store a plan; idempotent for a run repeated after a crash.

        Returns ``"stored"``, ``"unchanged"`` (the same plan was stored before,
        and keeps its status and decisions) or ``"replaced"`` (a pending plan
        of the same id with other actions: no approval bound to it yet). A plan
        already decided with other actions is refused (:class:`AuditError`).
        """
        with self.engine.begin() as connection:
            stored = connection.execute(
                select(plans.c.content_hash, plans.c.status).where(plans.c.id == plan_id)
            ).first()
            if stored is None:
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
                return "stored"
            if stored.content_hash == content_hash:
                return "unchanged"
            if stored.status != status:
                raise AuditError(
                    f"plan {plan_id} is already {stored.status} with other actions; "
                    "the repeated run's plan was not stored"
                )
            connection.execute(
                update(plans)
                .where(plans.c.id == plan_id)
                .values(content_hash=content_hash, body=body, created_at=isoformat_z(utcnow()))
            )
            return "replaced"

    # -- plans and approvals ------------------------------------------------------

    def plan(self, plan_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(plans).where(plans.c.id == plan_id)).mappings().first()
        return dict(row) if row else None

    def list_plans(self, *, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
        query = select(plans).order_by(plans.c.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(plans.c.status == status)
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def set_plan_status(self, plan_id: str, status: str, *, expected: str | None = None) -> bool:
        """Move a plan to *status*; with *expected*, only from that status (False if not)."""
        condition = plans.c.id == plan_id
        if expected is not None:
            condition = and_(condition, plans.c.status == expected)
        with self.engine.begin() as connection:
            changed = connection.execute(update(plans).where(condition).values(status=status))
        return bool(changed.rowcount)

    def add_decision(
        self, *, plan_id: str, decision: str, by: str, reason: str | None, plan_hash: str
    ) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                insert(approvals).values(
                    plan_id=plan_id,
                    decision=decision,
                    by=by,
                    reason=reason,
                    at=isoformat_z(utcnow()),
                    plan_hash=plan_hash,
                )
            )

    def decisions(self, plan_id: str) -> list[dict[str, Any]]:
        query = select(approvals).where(approvals.c.plan_id == plan_id).order_by(approvals.c.id)
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    # -- the action ledger --------------------------------------------------------

    def record_intents(self, rows: list[dict[str, Any]]) -> list[int]:
        """One intent row per (action, user), in one transaction; their ids."""
        ids: list[int] = []
        at = isoformat_z(utcnow())
        with self.engine.begin() as connection:
            for row in rows:
                values = {**row, "status": INTENT, "intent_at": at}
                values["finding_ids"] = json.dumps(list(row["finding_ids"]))
                result = connection.execute(insert(action_ledger).values(**values))
                key = result.inserted_primary_key
                if key is None:
                    raise RuntimeError("the action ledger returned no id for a new row")
                ids.append(int(key[0]))
        return ids

    def record_outcomes(self, outcomes: list[tuple[int, str, str]]) -> None:
        """``(ledger id, status, detail)`` for each settled intent, in one transaction."""
        at = isoformat_z(utcnow())
        with self.engine.begin() as connection:
            for entry_id, status, detail in outcomes:
                connection.execute(
                    update(action_ledger)
                    .where(action_ledger.c.id == entry_id)
                    .values(status=status, outcome_at=at, detail=detail)
                )

    def ledger_for(self, user_keys: list[str]) -> list[LedgerEntry]:
        """Every ledger row about these users, oldest first."""
        if not user_keys:
            return []
        query = (
            select(action_ledger)
            .where(action_ledger.c.user_key.in_(user_keys))
            .order_by(action_ledger.c.id)
        )
        with self.engine.connect() as connection:
            return [_entry(row) for row in connection.execute(query).mappings()]

    def users_acted_on_since(self, since: str) -> set[str]:
        """Users with any write intended since *since* (ISO 8601 Z), for the hourly cap."""
        query = select(func.distinct(action_ledger.c.user_key)).where(
            action_ledger.c.intent_at >= since
        )
        with self.engine.connect() as connection:
            return {str(row[0]) for row in connection.execute(query)}

    # -- scheduled jobs --------------------------------------------------------------

    def job(self, name: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = (
                connection.execute(select(job_state).where(job_state.c.job == name))
                .mappings()
                .first()
            )
        if row is None:
            return None
        found = dict(row)
        found["detail"] = json.loads(found["detail"]) if found["detail"] else {}
        return found

    def job_origin(self, name: str, first_start: str) -> str:
        """Where *name*'s first window starts: *first_start*, unless an earlier
        cycle already fixed it (a failed first cycle's retry, or the next
        cycle that ran before it) and nothing has completed since."""
        with self.engine.begin() as connection:
            row = connection.execute(
                select(job_state.c.detail).where(job_state.c.job == name)
            ).first()
            if row is None:
                connection.execute(
                    insert(job_state).values(
                        job=name,
                        watermark=None,
                        run_id=None,
                        updated_at=isoformat_z(utcnow()),
                        detail=json.dumps({"first_start": first_start}),
                    )
                )
                return first_start
        detail = json.loads(row.detail) if row.detail else {}
        return str(detail.get("first_start") or first_start)

    def advance_job(
        self, name: str, *, watermark: str, run_id: str, detail: dict[str, Any]
    ) -> bool:
        """Record a completed cycle of *name*: its run and detail always, its
        watermark only forward (a later cycle of an earlier window, or a clock
        set back, never moves it back). True if the watermark moved."""
        with self.engine.begin() as connection:
            current = connection.execute(
                select(job_state.c.watermark).where(job_state.c.job == name)
            ).first()
            moved = (
                current is None
                or current.watermark is None
                or as_utc(watermark) > as_utc(current.watermark)
            )
            values = {
                "watermark": watermark if moved or current is None else current.watermark,
                "run_id": run_id,
                "updated_at": isoformat_z(utcnow()),
                "detail": json.dumps(detail, sort_keys=True),
            }
            if current is None:
                connection.execute(insert(job_state).values(job=name, **values))
            else:
                connection.execute(
                    update(job_state).where(job_state.c.job == name).values(**values)
                )
        return moved

    # -- findings: first detection, first containment ---------------------------------

    def first_detections(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Record the findings not seen before; the rows that were new."""
        if not rows:
            return []
        with self.engine.begin() as connection:
            known = {
                row.id
                for row in connection.execute(
                    select(findings.c.id).where(findings.c.id.in_([item["id"] for item in rows]))
                )
            }
            new = [item for item in rows if item["id"] not in known]
            if new:
                connection.execute(insert(findings), new)
        return new

    def first_containments(
        self, finding_ids: list[str], *, at: str, run_id: str
    ) -> list[dict[str, Any]]:
        """Mark the findings contained unless they were; the rows newly contained."""
        if not finding_ids:
            return []
        with self.engine.begin() as connection:
            open_ = [
                dict(row)
                for row in connection.execute(
                    select(findings).where(
                        findings.c.id.in_(finding_ids), findings.c.contained_at.is_(None)
                    )
                ).mappings()
            ]
            if open_:
                connection.execute(
                    update(findings)
                    .where(
                        findings.c.id.in_([row["id"] for row in open_]),
                        findings.c.contained_at.is_(None),
                    )
                    .values(contained_at=at, contained_by=run_id)
                )
        return open_


def _entry(row: Any) -> LedgerEntry:
    return LedgerEntry(
        id=int(row["id"]),
        action_id=row["action_id"],
        kind=row["kind"],
        user_key=row["user_key"],
        user_principal_name=row["user_principal_name"],
        finding_ids=tuple(json.loads(row["finding_ids"])),
        sign_in_at=row["sign_in_at"],
        run_id=row["run_id"],
        plan_id=row["plan_id"],
        status=row["status"],
        intent_at=row["intent_at"],
        outcome_at=row["outcome_at"],
        detail=row["detail"],
    )


def in_memory(url: str | URL) -> bool:
    """Whether *url* is a SQLite database in memory, which no other process can open."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return False
    database = parsed.database or ""
    return database in ("", ":memory:") or ":memory:" in database or "mode=memory" in str(parsed)


def open_store(url: str) -> Store:
    """Open (and create if needed) the database at *url*."""
    try:
        parsed = make_url(url)
    except Exception:
        raise SettingsError(
            "not a database URL (dialect+driver://..., e.g. sqlite:///tokenward.db)",
            source=_Location(key="store.url"),
        ) from None
    if parsed.get_backend_name() == "sqlite" and not in_memory(parsed):
        Path(parsed.database or "").parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(parsed)
    except ImportError as missing:
        raise SettingsError(
            f"the database driver for {parsed.drivername!r} is not installed "
            f"({missing.name or missing}): use sqlite:///PATH, or install the driver "
            "the URL names beside tokenward",
            source=_Location(key="store.url"),
        ) from None
    except (ArgumentError, ValueError) as failure:
        raise SettingsError(
            f"not a database URL tokenward can open: {failure}", source=_Location(key="store.url")
        ) from None
    if parsed.get_backend_name() == "sqlite":
        _serialise_sqlite_writers(engine)
    try:
        metadata.create_all(engine)
    except SQLAlchemyError as failure:
        shown = parsed.render_as_string(hide_password=True)
        raise AuditError(f"cannot open the state database {shown!r}: {failure}") from None
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
