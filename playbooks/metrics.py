"""Metrics a SOC can watch, for Prometheus: read from the store at each scrape.

Everything is counted from what the store holds, not from counters in one
process, so ``/metrics`` on any ``tokenward serve`` (or ``tokenward watch``'s
port) shows what every worker did, and a restart loses nothing:

* ``tokenward_runs_total{path, status}``: runs by how they started (webhook,
  schedule, reconcile, approval, cli) and how they ended;
* ``tokenward_sign_in_to_detection_seconds``,
  ``tokenward_detection_to_containment_seconds`` and
  ``tokenward_sign_in_to_containment_seconds`` (histograms, by the path that
  first detected the finding): once per finding, from the findings table
  that the engine fills when a flow is first found worth acting on and when
  containing it first took effect (each also an audit record,
  ``finding.detected`` and ``finding.contained``);
* ``tokenward_findings_uncontained``: findings detected but not contained;
* ``tokenward_recovered_incidents_total``: incidents reconciliation found
  that the webhook never received;
* ``tokenward_throttled_calls_total{service}``: calls answered 429;
* ``tokenward_job_watermark_timestamp_seconds{job}`` and
  ``tokenward_job_last_completed_timestamp_seconds{job}``: how far each
  scheduled job has got, and when its last cycle completed;
* ``tokenward_inbox_rows{status}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import func, select

from playbooks.jobs import HUNT, RECONCILE
from playbooks.store import Store, audit_records, findings, inbox, runs
from playbooks.times import as_utc

#: Upper bounds (seconds) of the time histograms: a minute to a day.
BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 86400.0)

#: The path a run took to tokenward, by its trigger's first word.
PATHS = {
    "sentinel": "webhook",
    "schedule": "schedule",
    "reconcile": "reconcile",
    "plans": "approval",
}


def path_of(trigger: str) -> str:
    return PATHS.get(trigger.partition(":")[0], "cli")


class StoreCollector:
    """A Prometheus collector over one store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        yield from self._runs()
        yield from self._times()
        yield from self._jobs()
        yield from self._throttled()
        yield from self._inbox()

    def _runs(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "tokenward_runs",
            "Runs by how they started and how they ended",
            labels=["path", "status"],
        )
        counts: dict[tuple[str, str], int] = {}
        with self._store.engine.connect() as connection:
            rows = connection.execute(
                select(runs.c.trigger, runs.c.status, func.count()).group_by(
                    runs.c.trigger, runs.c.status
                )
            ).all()
        for trigger, status, count in rows:
            key = (path_of(str(trigger)), str(status))
            counts[key] = counts.get(key, 0) + int(count)
        for (path, status), count in sorted(counts.items()):
            family.add_metric([path, status], count)
        yield family

    def _times(self) -> Iterator[Metric]:
        with self._store.engine.connect() as connection:
            rows = connection.execute(
                select(
                    findings.c.trigger,
                    findings.c.sign_in_at,
                    findings.c.detected_at,
                    findings.c.contained_at,
                )
            ).all()
        samples: dict[str, dict[str, list[float]]] = {
            "sign_in_to_detection": {},
            "detection_to_containment": {},
            "sign_in_to_containment": {},
        }
        uncontained: dict[str, int] = {}
        for trigger, sign_in_at, detected_at, contained_at in rows:
            path = path_of(str(trigger))
            sign_in, detected = as_utc(sign_in_at), as_utc(detected_at)
            samples["sign_in_to_detection"].setdefault(path, []).append(
                (detected - sign_in).total_seconds()
            )
            if contained_at is None:
                uncontained[path] = uncontained.get(path, 0) + 1
                continue
            contained = as_utc(contained_at)
            samples["detection_to_containment"].setdefault(path, []).append(
                (contained - detected).total_seconds()
            )
            samples["sign_in_to_containment"].setdefault(path, []).append(
                (contained - sign_in).total_seconds()
            )
        helps = {
            "sign_in_to_detection": "From a device code sign-in to the run that first "
            "found it worth acting on, per finding",
            "detection_to_containment": "From detection to the first containment that "
            "took effect, per finding",
            "sign_in_to_containment": "From a device code sign-in to the first "
            "containment that took effect, per finding",
        }
        for name, by_path in samples.items():
            family = HistogramMetricFamily(
                f"tokenward_{name}_seconds", helps[name], labels=["path"]
            )
            for path, values in sorted(by_path.items()):
                family.add_metric([path], _buckets(values), sum_value=sum(values))
            yield family
        waiting = GaugeMetricFamily(
            "tokenward_findings_uncontained",
            "Findings detected and not (yet) contained",
            labels=["path"],
        )
        for path, count in sorted(uncontained.items()):
            waiting.add_metric([path], count)
        yield waiting

    def _jobs(self) -> Iterator[Metric]:
        state = {name: self._store.job(name) for name in (HUNT, RECONCILE)}
        recovered = CounterMetricFamily(
            "tokenward_recovered_incidents",
            "Incidents reconciliation found that the webhook never received",
        )
        recovered.add_metric([], recovered_total(state[RECONCILE]))
        yield recovered
        watermark = GaugeMetricFamily(
            "tokenward_job_watermark_timestamp_seconds",
            "How far each scheduled job has got: the end of the last hunt window "
            "completed, the creation time of the newest incident reconciled",
            labels=["job"],
        )
        completed = GaugeMetricFamily(
            "tokenward_job_last_completed_timestamp_seconds",
            "When each scheduled job last completed a cycle",
            labels=["job"],
        )
        for name, row in state.items():
            if row is None:
                continue
            if row["watermark"]:
                watermark.add_metric([name], as_utc(row["watermark"]).timestamp())
            if row["run_id"]:
                completed.add_metric([name], as_utc(row["updated_at"]).timestamp())
        yield watermark
        yield completed

    def _throttled(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "tokenward_throttled_calls",
            "Calls to Microsoft services answered 429 (each attempt)",
            labels=["service"],
        )
        with self._store.engine.connect() as connection:
            rows = connection.execute(
                select(audit_records.c.data).where(
                    audit_records.c.kind == "call.attempt",
                    audit_records.c.data.contains('"status":429'),
                )
            ).all()
        counts: dict[str, int] = {}
        for (data,) in rows:
            service = _service(data)
            counts[service] = counts.get(service, 0) + 1
        for service, count in sorted(counts.items()):
            family.add_metric([service], count)
        yield family

    def _inbox(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "tokenward_inbox_rows", "Rows of the inbox by status", labels=["status"]
        )
        with self._store.engine.connect() as connection:
            rows = connection.execute(
                select(inbox.c.status, func.count()).group_by(inbox.c.status)
            ).all()
        for status, count in sorted(rows):
            family.add_metric([str(status)], int(count))
        yield family


def metrics_response(store: Store) -> tuple[bytes, str]:
    """The Prometheus text exposition of *store*'s metrics, and its content type."""
    return generate_latest(registry_for(store)), CONTENT_TYPE_LATEST


def registry_for(store: Store) -> CollectorRegistry:
    """A registry of *store*'s metrics, for a metrics listener of its own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return registry


def recovered_total(row: dict[str, Any] | None) -> int:
    """Incidents reconciliation recovered, over every pass."""
    return int(((row or {}).get("detail") or {}).get("recovered_total", 0))


def service_state(store: Store) -> dict[str, Any]:
    """What ``/readyz`` adds to its checks: the jobs' progress, recovered incidents."""
    jobs: dict[str, dict[str, Any]] = {}
    for name in (HUNT, RECONCILE):
        row = store.job(name)
        if row is not None:
            jobs[name] = {
                "watermark": row["watermark"],
                "last_completed": row["updated_at"] if row["run_id"] else None,
                "last_run": row["run_id"],
            }
    return {"recovered_incidents": recovered_total(store.job(RECONCILE)), "jobs": jobs}


def _buckets(values: list[float]) -> list[tuple[str, float]]:
    buckets = [(str(bound), float(sum(1 for v in values if v <= bound))) for bound in BUCKETS]
    return [*buckets, ("+Inf", float(len(values)))]


def _service(data: str) -> str:
    try:
        return str(json.loads(data).get("service", "unknown"))[:32]
    except ValueError:
        return "unknown"


__all__ = [
    "StoreCollector",
    "metrics_response",
    "path_of",
    "recovered_total",
    "registry_for",
    "service_state",
]
