"""The webhook inbox: deliveries stored before they are acknowledged, then leased.

A delivery is written, with its audit record, in the same transaction, and
only then does the caller hear ``202``; a crash after that loses nothing. Each
row is one run: a second delivery of an incident whose accounts, addresses
and window are unchanged (the same revision sent again, or an update that
changed only a title or a status) finds that row by its ``run_key`` and is
answered with the same run id, not stored twice. The unique key makes this
hold however many deliveries race, in SQLite or PostgreSQL.

Workers take rows with a lease: a claim sets an owner and an expiry, a
heartbeat moves the expiry on, and a row whose lease ran out (its worker was
killed mid-run) is claimed again by the next worker that looks. A claim counts
an attempt; a delivery that used up its attempts is set aside as ``failed``
and audited, so one poisonous delivery cannot crash workers for ever. Runs of
one incident never overlap: a row waits while another of its incident is
leased.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from playbooks.audit import AuditLog
from playbooks.errors import AuditError, InputError
from playbooks.incidents import IncidentScope, scope_from_incident
from playbooks.payloads import check_delivery, parse_body
from playbooks.store import Store, inbox, plans, runs
from playbooks.times import isoformat_z, utcnow

PENDING = "pending"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
#: A plan's status once a named approver approved it (playbooks.approvals).
APPROVED_PLAN = "approved"
#: The audit's run id for what belongs to no run (refused requests).
SERVICE_RUN = "webhook"
#: The event of a row that executes an approved plan (not an incident delivery).
EXECUTE = "execute"
#: The scheme of deliveries that reconciliation found in the incidents API.
RECONCILED = "reconcile"
#: The scheduled jobs whose cycles are rows of the inbox.
JOBS = ("hunt", "reconcile")


def job_event(job: str) -> str:
    """The event (and incident key) of *job*'s cycles: ``job:hunt``."""
    return f"job:{job}"


def trigger_of(event: str, scheme: str) -> str:
    """The run's trigger as reports and metrics name it."""
    if event.startswith("job:"):
        return f"schedule:{event.removeprefix('job:')}"
    if event == EXECUTE:
        return "plans:execute"
    if scheme == RECONCILED:
        return f"reconcile:{event}"
    return f"sentinel:{event}"


@dataclass(frozen=True)
class Delivery:
    """A delivery that passed every check, ready to be stored."""

    id: str
    run_id: str
    # sha256 over the incident and its scope fingerprint: one run per value.
    run_key: str
    incident_key: str
    revision: str
    event: str
    fingerprint: str
    received_at: str
    caller: str
    scheme: str
    body: str
    # For the audit record: what tokenward made of it.
    summary: dict[str, Any]


@dataclass(frozen=True)
class Accepted:
    delivery_id: str
    run_id: str
    duplicate: bool
    reason: str = ""


@dataclass(frozen=True)
class Refusal:
    """A request answered with a 4xx, kept for the audit (never its body)."""

    status: int
    reason: str
    path: str
    scheme: str = ""
    caller: str = ""
    size: int = 0
    body_sha256: str = ""


@dataclass(frozen=True)
class FollowUp:
    """Another run of the same delivery, later (a re-hunt after ingestion delay)."""

    # e.g. "rehunt-1"; it names the follow-up's run and keeps it unique.
    label: str
    at_ms: int
    why: str


@dataclass(frozen=True)
class Claimed:
    id: str
    run_id: str
    incident_key: str
    body: str
    attempts: int
    received_at: str
    event: str
    scheme: str = ""

    @property
    def job(self) -> str | None:
        """The scheduled job this row is a cycle of, if it is one."""
        return self.event.removeprefix("job:") if self.event.startswith("job:") else None

    @property
    def trigger(self) -> str:
        return trigger_of(self.event, self.scheme)


def delivery_for(
    body: bytes,
    *,
    caller: str,
    scheme: str,
    received: datetime,
    margin_before: timedelta,
    margin_after: timedelta,
    allowed_workspaces: Sequence[str] = (),
    summary: dict[str, Any] | None = None,
) -> tuple[Delivery, IncidentScope]:
    """A checked incident body as a delivery to store, and the scope it names.

    The webhook and reconciliation both build deliveries here, so the same
    incident found either way has the same run key and is one run.
    Raises :class:`~playbooks.payloads.PayloadError` (a body that is not a
    delivery), :class:`~playbooks.errors.InputError` (no incident in it) or
    :class:`WorkspaceRefused`.
    """
    payload = parse_body(body)
    check_delivery(payload)
    scope = scope_from_incident(
        payload, now=received, margin_before=margin_before, margin_after=margin_after
    )
    if allowed_workspaces and scope.workspace_resource_id not in allowed_workspaces:
        raise WorkspaceRefused(
            f"workspace {scope.workspace_resource_id!r} is not in sentinel.allowed_workspaces"
        )
    run_key = hashlib.sha256(f"{scope.incident_key}\n{scope.fingerprint}".encode()).hexdigest()
    delivery = Delivery(
        id=f"d-{secrets.token_hex(8)}",
        run_id=f"r-{received.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}",
        run_key=run_key,
        incident_key=scope.incident_key,
        revision=scope.revision[:256],
        event=scope.event[:32],
        fingerprint=scope.fingerprint,
        received_at=isoformat_z(received),
        caller=caller[:256],
        scheme=scheme,
        body=body.decode("utf-8"),
        summary={
            "incident": scope.incident.resource_id,
            "number": scope.incident.number,
            "event": scope.event,
            "revision": scope.revision[:256],
            "fingerprint": scope.fingerprint,
            "users": list(scope.users),
            "unresolved": len(scope.unresolved),
            "size": len(body),
            **(summary or {}),
        },
    )
    return delivery, scope


class WorkspaceRefused(InputError):
    """The incident's workspace is not one tokenward accepts incidents from."""


class Inbox:
    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        *,
        clock: Callable[[], float] = time.time,
        mode: str = "dry-run",
    ) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock
        # The mode the runs of this inbox are started in, for the runs table.
        self._mode = mode

    # -- the request side ---------------------------------------------------------

    def record(
        self, deliveries: Sequence[Delivery], refusals: Sequence[Refusal] = ()
    ) -> list[Accepted]:
        """Store *deliveries* and audit them and *refusals*, in one transaction.

        Returns one :class:`Accepted` per delivery, in order. Raises
        :class:`~playbooks.errors.AuditError` if nothing could be written; then
        nothing was, and the caller must not acknowledge.
        """
        now_ms = self._now_ms()
        try:
            with _write_transaction(self._store) as connection:
                accepted, entries = self._store_all(connection, deliveries, now_ms)
                entries += [
                    (
                        SERVICE_RUN,
                        "request.refused",
                        {
                            "status": refusal.status,
                            "reason": refusal.reason,
                            "path": refusal.path,
                            "scheme": refusal.scheme,
                            "caller": refusal.caller,
                            "size": refusal.size,
                            "body_sha256": refusal.body_sha256,
                        },
                        refusal.caller or "unauthenticated",
                    )
                    for refusal in refusals
                ]
                self._audit.record_many_in(connection, entries)
        except SQLAlchemyError as failure:
            raise AuditError(f"the inbox could not store the deliveries: {failure}") from None
        return accepted

    def _store_all(
        self, connection: Connection, deliveries: Sequence[Delivery], now_ms: int
    ) -> tuple[list[Accepted], list[tuple[str, str, dict[str, Any], str]]]:
        # Insert every delivery whose run is new; a unique key refuses the rest,
        # however the deliveries race (in this group or another process's).
        rows = [
            {
                "id": item.id,
                "run_id": item.run_id,
                "run_key": item.run_key,
                "incident_key": item.incident_key,
                "revision": item.revision,
                "event": item.event,
                "fingerprint": item.fingerprint,
                "received_at": item.received_at,
                "caller": item.caller,
                "scheme": item.scheme,
                "body": item.body,
                "status": PENDING,
                "attempts": 0,
                "available_at": now_ms,
            }
            for item in deliveries
        ]
        if rows:
            _insert_ignoring_conflicts(connection, rows)

        # Read back who holds each run: this delivery, or an earlier one.
        keys = sorted({item.run_key for item in deliveries})
        holders = (
            {
                row.run_key: row
                for row in connection.execute(
                    select(inbox.c.id, inbox.c.run_id, inbox.c.run_key, inbox.c.revision).where(
                        inbox.c.run_key.in_(keys)
                    )
                )
            }
            if keys
            else {}
        )

        accepted: list[Accepted] = []
        entries: list[tuple[str, str, dict[str, Any], str]] = []
        for item in deliveries:
            record = {
                "delivery": item.id,
                "caller": item.caller,
                "scheme": item.scheme,
                **item.summary,
            }
            first = holders[item.run_key]
            if first.id == item.id:
                entries.append((item.run_id, "delivery.accepted", record, item.caller))
                accepted.append(Accepted(item.id, item.run_id, duplicate=False))
                continue
            if first.revision == item.revision:
                reason = f"the same incident revision was delivered before (delivery {first.id})"
            else:
                reason = (
                    "the incident's accounts, addresses and window are unchanged since "
                    f"delivery {first.id}; nothing to hunt again"
                )
            entries.append(
                (
                    first.run_id,
                    "delivery.duplicate",
                    {**record, "same_as": first.id, "reason": reason},
                    item.caller,
                )
            )
            accepted.append(Accepted(first.id, first.run_id, duplicate=True, reason=reason))
        return accepted, entries

    # -- the worker side ------------------------------------------------------------

    def claim(self, owner: str, *, lease_s: float, max_attempts: int) -> Claimed | None:
        """The oldest delivery due, leased to *owner*; ``None`` if there is none."""
        now_ms = self._now_ms()
        due = or_(
            and_(inbox.c.status == PENDING, inbox.c.available_at <= now_ms),
            and_(inbox.c.status == RUNNING, inbox.c.lease_expires_at < now_ms),
        )
        busy = select(inbox.c.incident_key).where(
            inbox.c.status == RUNNING, inbox.c.lease_expires_at >= now_ms
        )
        with self._store.engine.begin() as connection:
            candidates = connection.execute(
                select(inbox.c.id, inbox.c.run_id, inbox.c.attempts, inbox.c.status)
                .where(due, inbox.c.incident_key.not_in(busy))
                .order_by(inbox.c.available_at, inbox.c.received_at)
                .limit(8)
                .with_for_update(skip_locked=True)
            ).all()
            for candidate in candidates:
                if candidate.attempts >= max_attempts:
                    self._give_up(
                        connection,
                        candidate.id,
                        candidate.run_id,
                        candidate.attempts,
                        candidate.status,
                    )
                    continue
                taken = connection.execute(
                    update(inbox)
                    .where(inbox.c.id == candidate.id, due)
                    .values(
                        status=RUNNING,
                        lease_owner=owner,
                        lease_expires_at=now_ms + int(lease_s * 1000),
                        attempts=inbox.c.attempts + 1,
                    )
                )
                if taken.rowcount != 1:
                    continue
                row = connection.execute(select(inbox).where(inbox.c.id == candidate.id)).one()
                self._start_run(connection, row)
                self._audit.record_in(
                    connection,
                    row.run_id,
                    "delivery.claimed",
                    {
                        "delivery": row.id,
                        "attempt": row.attempts,
                        "worker": owner,
                        "recovered": candidate.status == RUNNING,
                    },
                )
                return Claimed(
                    id=row.id,
                    run_id=row.run_id,
                    incident_key=row.incident_key,
                    body=row.body,
                    attempts=row.attempts,
                    received_at=row.received_at,
                    event=row.event,
                    scheme=row.scheme,
                )
        return None

    def renew(self, delivery_id: str, owner: str, *, lease_s: float) -> bool:
        """Move the lease on; False if *owner* no longer holds it."""
        with self._store.engine.begin() as connection:
            result = connection.execute(
                update(inbox)
                .where(
                    inbox.c.id == delivery_id,
                    inbox.c.lease_owner == owner,
                    inbox.c.status == RUNNING,
                )
                .values(lease_expires_at=self._now_ms() + int(lease_s * 1000))
            )
        return result.rowcount == 1

    def finish(
        self,
        delivery_id: str,
        owner: str,
        *,
        status: str,
        outcome: dict[str, Any],
        follow_up: FollowUp | None = None,
    ) -> bool:
        """Close the delivery as ``done`` or ``failed``; False if the lease was lost.

        With *follow_up*, a re-hunt of the same incident is stored in the same
        transaction: it cannot be lost between closing this run and scheduling it.
        """
        with self._store.engine.begin() as connection:
            result = connection.execute(
                update(inbox)
                .where(
                    inbox.c.id == delivery_id,
                    inbox.c.lease_owner == owner,
                    inbox.c.status == RUNNING,
                )
                .values(
                    status=status,
                    lease_owner=None,
                    lease_expires_at=None,
                    finished_at=isoformat_z(utcnow()),
                    outcome=json.dumps(outcome, sort_keys=True),
                )
            )
            if result.rowcount != 1:
                return False
            row = connection.execute(select(inbox.c.run_id).where(inbox.c.id == delivery_id)).one()
            connection.execute(
                update(runs)
                .where(runs.c.id == row.run_id)
                .values(
                    ended_at=isoformat_z(utcnow()),
                    status=outcome.get("run_status", status),
                    summary=json.dumps(outcome, sort_keys=True),
                )
            )
            self._audit.record_in(
                connection,
                row.run_id,
                f"delivery.{status}",
                {"delivery": delivery_id, **outcome},
            )
            if follow_up is not None:
                self._follow_up(connection, delivery_id, follow_up)
        return True

    def _follow_up(self, connection: Connection, delivery_id: str, follow_up: FollowUp) -> None:
        source = connection.execute(select(inbox).where(inbox.c.id == delivery_id)).one()
        run_key = hashlib.sha256(f"{source.run_key}\n{follow_up.label}".encode()).hexdigest()
        values = {
            "id": f"d-{secrets.token_hex(8)}",
            "run_id": f"{source.run_id.split('+', 1)[0]}+{follow_up.label}"[:64],
            "run_key": run_key,
            "incident_key": source.incident_key,
            "revision": source.revision,
            "event": f"{source.event.split('+', 1)[0]}+{follow_up.label}"[:32],
            "fingerprint": source.fingerprint,
            "received_at": source.received_at,
            "caller": source.caller,
            "scheme": source.scheme,
            "body": source.body,
            "status": PENDING,
            "attempts": 0,
            "available_at": follow_up.at_ms,
        }
        _insert_ignoring_conflicts(connection, [values])
        self._audit.record_in(
            connection,
            source.run_id,
            "delivery.rehunt_scheduled",
            {
                "delivery": values["id"],
                "run": values["run_id"],
                "at_ms": follow_up.at_ms,
                "why": follow_up.why,
            },
        )

    def retry_later(self, delivery_id: str, owner: str, *, after_s: float, error: str) -> bool:
        """Hand the delivery back to be tried again in *after_s* seconds."""
        with self._store.engine.begin() as connection:
            result = connection.execute(
                update(inbox)
                .where(
                    inbox.c.id == delivery_id,
                    inbox.c.lease_owner == owner,
                    inbox.c.status == RUNNING,
                )
                .values(
                    status=PENDING,
                    lease_owner=None,
                    lease_expires_at=None,
                    available_at=self._now_ms() + int(after_s * 1000),
                    outcome=json.dumps({"error": error}),
                )
            )
            if result.rowcount != 1:
                return False
            row = connection.execute(
                select(inbox.c.run_id, inbox.c.attempts).where(inbox.c.id == delivery_id)
            ).one()
            self._audit.record_in(
                connection,
                row.run_id,
                "delivery.retry_scheduled",
                {
                    "delivery": delivery_id,
                    "attempt": row.attempts,
                    "after_s": after_s,
                    "error": error,
                },
            )
        return True

    # -- work that is not a delivery: scheduled cycles, approved plans --------------

    def enqueue_job(self, job: str) -> str | None:
        """A cycle of *job*, unless one already waits; the new cycle's run id.

        One cycle may wait while another runs (it starts when that one ends);
        a tick that finds one waiting adds nothing, so cycles never pile up
        behind a slow one and never run side by side (rows of one key are
        claimed one at a time).
        """
        if job not in JOBS:
            raise ValueError(f"no scheduled job {job!r}")
        key = job_event(job)
        now = utcnow()
        with _write_transaction(self._store) as connection:
            waiting = connection.execute(
                select(inbox.c.run_id).where(inbox.c.incident_key == key, inbox.c.status == PENDING)
            ).first()
            if waiting is not None:
                return None
            run_id = f"r-{now.strftime('%Y%m%dT%H%M%S')}-{job}-{secrets.token_hex(3)}"
            values = {
                "id": f"d-{secrets.token_hex(8)}",
                "run_id": run_id,
                "run_key": hashlib.sha256(f"{key}\n{run_id}".encode()).hexdigest(),
                "incident_key": key,
                "revision": "",
                "event": key,
                "fingerprint": "",
                "received_at": isoformat_z(now),
                "caller": "tokenward scheduler",
                "scheme": "schedule",
                "body": json.dumps({"job": job}),
                "status": PENDING,
                "attempts": 0,
                "available_at": self._now_ms(),
            }
            connection.execute(insert(inbox).values(**values))
            self._audit.record_in(
                connection,
                run_id,
                "schedule.cycle_due",
                {"job": job, "delivery": values["id"]},
                actor="tokenward scheduler",
            )
        return run_id

    def enqueue_approved_plans(self, *, created_after: str) -> list[str]:
        """An execution row for each approved plan of the service's own runs.

        A plan made by a run of this inbox (a delivery, a re-hunt, a scheduled
        hunt) and approved since is executed by a worker, once: the row's key
        is the plan's, so however often this is called it is queued once.
        Plans from ``tokenward hunt --mode approve`` are not the service's:
        ``tokenward plans execute`` runs them. Returns the plans queued now.
        """
        query = (
            select(
                plans.c.id,
                plans.c.run_id,
                inbox.c.incident_key,
                inbox.c.body,
                inbox.c.caller,
            )
            .join(inbox, inbox.c.run_id == plans.c.run_id)
            .where(plans.c.status == APPROVED_PLAN, plans.c.created_at >= created_after)
        )
        queued: list[str] = []
        with _write_transaction(self._store) as connection:
            found = connection.execute(query).all()
            keys = {
                row.id: hashlib.sha256(f"{EXECUTE}\n{row.id}".encode()).hexdigest() for row in found
            }
            taken = (
                {
                    row.run_key
                    for row in connection.execute(
                        select(inbox.c.run_key).where(inbox.c.run_key.in_(list(keys.values())))
                    )
                }
                if keys
                else set()
            )
            now = utcnow()
            for row in found:
                if keys[row.id] in taken:
                    continue
                values = {
                    "id": f"d-{secrets.token_hex(8)}",
                    "run_id": f"{row.run_id}+execute"[:64],
                    "run_key": keys[row.id],
                    "incident_key": row.incident_key,
                    "revision": "",
                    "event": EXECUTE,
                    "fingerprint": "",
                    "received_at": isoformat_z(now),
                    "caller": "tokenward approvals",
                    "scheme": "approval",
                    "body": json.dumps({"plan_id": row.id, "source": json.loads(row.body)}),
                    "status": PENDING,
                    "attempts": 0,
                    "available_at": self._now_ms(),
                }
                _insert_ignoring_conflicts(connection, [values])
                self._audit.record_in(
                    connection,
                    row.run_id,
                    "plan.execution_queued",
                    {"plan": row.id, "run": values["run_id"], "delivery": values["id"]},
                )
                queued.append(row.id)
        return queued

    # -- what operators and tests read ----------------------------------------------

    def get(self, delivery_id: str) -> dict[str, Any] | None:
        with self._store.engine.connect() as connection:
            row = (
                connection.execute(select(inbox).where(inbox.c.id == delivery_id))
                .mappings()
                .first()
            )
        return dict(row) if row else None

    def knows_incident(self, incident_key: str) -> bool:
        """Whether any delivery of this incident was stored (by any path)."""
        with self._store.engine.connect() as connection:
            row = connection.execute(
                select(inbox.c.id).where(inbox.c.incident_key == incident_key).limit(1)
            ).first()
        return row is not None

    def counts(self) -> dict[str, int]:
        with self._store.engine.connect() as connection:
            rows = connection.execute(
                select(inbox.c.status, func.count()).group_by(inbox.c.status)
            ).all()
        return {status: count for status, count in rows}

    def ping(self) -> None:
        """Raise unless the store answers a read."""
        with self._store.engine.connect() as connection:
            connection.execute(select(func.count()).select_from(inbox).where(inbox.c.id == ""))

    def _give_up(
        self,
        connection: Connection,
        delivery_id: str,
        run_id: str,
        attempts: int,
        status: str,
    ) -> None:
        reason = (
            f"{attempts} attempts used up: the worker holding it stopped before finishing"
            if status == RUNNING
            else f"{attempts} attempts used up"
        )
        connection.execute(
            update(inbox)
            .where(inbox.c.id == delivery_id)
            .values(
                status=FAILED,
                lease_owner=None,
                lease_expires_at=None,
                finished_at=isoformat_z(utcnow()),
                outcome=json.dumps({"error": reason}),
            )
        )
        connection.execute(
            update(runs)
            .where(runs.c.id == run_id)
            .values(status=FAILED, ended_at=isoformat_z(utcnow()))
        )
        self._audit.record_in(
            connection,
            run_id,
            "delivery.failed",
            {"delivery": delivery_id, "error": reason},
        )

    def _start_run(self, connection: Connection, row: Any) -> None:
        known = connection.execute(select(runs.c.id).where(runs.c.id == row.run_id)).first()
        if known:
            connection.execute(
                update(runs).where(runs.c.id == row.run_id).values(status=RUNNING, ended_at=None)
            )
            return
        connection.execute(
            insert(runs).values(
                id=row.run_id,
                started_at=isoformat_z(utcnow()),
                trigger=trigger_of(row.event, row.scheme)[:64],
                mode=self._mode,
                status=RUNNING,
            )
        )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


@contextmanager
def _write_transaction(store: Store, *, within_s: float = 10.0) -> Iterator[Connection]:
    """A write transaction that waits for SQLite's lock by polling, not backing off.

    SQLite's own busy handler sleeps 10, 25, then 50 ms between tries, so a
    writer that keeps meeting a worker's short transactions can wait 100 ms
    for a lock free most of the time. Acknowledgements wait on this
    transaction; it asks again every half millisecond instead. Other
    databases take the plain path.
    """
    engine = store.engine
    if engine.dialect.name != "sqlite":
        with engine.begin() as connection:
            yield connection
        return
    deadline = time.monotonic() + within_s
    while True:
        with engine.connect() as connection:
            raw = connection.connection.dbapi_connection
            assert raw is not None
            raw.execute("PRAGMA busy_timeout = 0")
            try:
                try:
                    transaction = connection.begin()
                except OperationalError as failure:
                    if "locked" not in str(failure) or time.monotonic() > deadline:
                        raise
                    transaction = None
                if transaction is not None:
                    with transaction:
                        yield connection
                    return
            finally:
                raw.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        time.sleep(0.0005)


_BUSY_TIMEOUT_MS = 10_000


def _insert_ignoring_conflicts(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert *rows*, skipping each whose unique keys are taken."""
    dialect = connection.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        connection.execute(sqlite.insert(inbox).on_conflict_do_nothing(), rows)
        return
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        connection.execute(postgresql.insert(inbox).on_conflict_do_nothing(), rows)
        return
    # Other databases: one savepoint per row around a plain insert.
    for row in rows:
        try:
            with connection.begin_nested():
                connection.execute(insert(inbox), row)
        except IntegrityError:
            continue


__all__ = ["Accepted", "Claimed", "Delivery", "FollowUp", "Inbox", "Refusal"]
