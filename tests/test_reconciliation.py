"""Specification: an incident Sentinel never delivered is found in the incidents API and run, once.

Reconciliation lists the workspace's incidents through the real azure-core
pipeline against the emulator's incidents API (``$filter`` on creation time,
pages by ``nextLink``), and puts what the webhook never received in the inbox,
where a worker runs it like a delivery.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from sqlalchemy import select

from playbooks.audit import AuditLog
from playbooks.inbox import RECONCILED, Inbox, delivery_for
from playbooks.jobs import RECONCILE
from playbooks.metrics import metrics_response
from playbooks.store import inbox, open_store
from playbooks.times import parse_duration
from tests.scheduled import (
    minutes_ago,
    phish_tables,
    recent,
    records,
    revokes,
    scheduled_settings,
    tenant,
    wait_for,
    watching,
)
from tests.service import incident, running_service, service_settings

RULE = "0c7d1e2f-0000-4000-8000-000000000001"
WORKSPACE = (
    "/subscriptions/5f2c3b7e-0000-4000-8000-000000000001/resourceGroups/rg-soc"
    "/providers/Microsoft.OperationalInsights/workspaces/law-soc"
)
OTHER_RULE = (
    WORKSPACE
    + "/providers/Microsoft.SecurityInsights/alertRules/99999999-0000-4000-8000-000000000009"
)


def reconcile_settings(emu: Any, directory: Path) -> Any:
    return scheduled_settings(
        emu,
        directory,
        schedule={
            "hunt": False,
            "reconcile": True,
            "reconcile_every_seconds": 0.5,
            "analytic_rules": [RULE],
            "workspaces": [WORKSPACE],
            "page_size": 1,
        },
        webhook={"mode": "auto"},
    )


def test_an_incident_never_posted_to_the_webhook_is_reconciled_and_contained_once(
    emu: Any, tmp_path: Path
) -> None:
    tenant(emu)
    others, phish = phish_tables(minutes_ago(8))
    emu.log_analytics.workspace.load({**others, "SigninLogs": [*others["SigninLogs"], phish]})
    settings = reconcile_settings(emu, tmp_path)
    missed = recent(5)
    delivered = recent(4)
    unrelated = recent(3, relatedAnalyticRuleIds=[OTHER_RULE])
    for body in (missed, delivered, unrelated):
        emu.sentinel.add(body["object"])
    # The webhook did receive one of them: it is in the inbox as the webhook stores it.
    store = open_store(settings.store.url)
    audit = AuditLog(store)
    arrived, _ = delivery_for(
        json.dumps(delivered).encode(),
        caller="logic app",
        scheme="bearer",
        received=minutes_ago(4),
        margin_before=parse_duration("2h"),
        margin_after=parse_duration("30m"),
    )
    # Stored, not yet run: the worker runs it beside the recovered one.
    Inbox(store, audit, mode="auto").record([arrived])

    with watching(settings) as failures:
        wait_for(
            lambda: len(records(settings, "reconcile.finished")) >= 3 or failures,
            timeout=40,
            what="three passes",
        )
        wait_for(lambda: len(revokes(emu)) >= 1 or failures, timeout=30, what="a revocation")
        wait_for(
            lambda: _incidents_done(store) == 2 or failures, timeout=30, what="both incidents run"
        )
    assert not failures, failures

    first, *later = records(settings, "reconcile.finished")
    assert first.data["recovered"] == 1
    assert first.data["matched"] == 2 and first.data["arrived"] == 1
    assert first.data["listed"] == 3 and first.data["pages"] >= 3, (
        "one incident a page, by nextLink"
    )
    assert all(r.data["recovered"] == 0 for r in later), (
        "a recovered incident is not recovered again"
    )
    rows = [row for row in _inbox_rows(store) if row["scheme"] == RECONCILED]
    assert [row["incident_key"] for row in rows] == [missed["object"]["id"].lower()]
    assert json.loads(rows[0]["outcome"])["run_status"] == "complete"
    assert len(revokes(emu)) == 1, (
        "the missed and the delivered incident are one phish: contained once"
    )
    assert store.job(RECONCILE)["detail"]["recovered_total"] == 1
    text = metrics_response(store)[0].decode()
    assert "tokenward_recovered_incidents_total 1.0" in text
    listed = emu.requests(r"/providers/Microsoft\.SecurityInsights/incidents$", method="GET")
    assert "createdTimeUtc" in unquote(listed[0].query)
    assert all("skipToken" in unquote(r.query) for r in listed[1:3]), "later pages by nextLink"


def test_readyz_shows_how_many_incidents_reconciliation_recovered(emu: Any, tmp_path: Path) -> None:
    settings = service_settings(
        emu,
        tmp_path,
        schedule={
            "reconcile": True,
            "reconcile_every_seconds": 0.5,
            "jitter_seconds": 0,
            "analytic_rules": [RULE],
            "workspaces": [WORKSPACE],
        },
    )
    with running_service(emu, tmp_path, settings=settings) as service:
        # The seed's incident, in Sentinel but never posted (the clock is the seed's).
        body = incident()
        emu.sentinel.add(body["object"])
        with service.client() as client:
            ready = wait_for(
                lambda: (answer := client.get("/readyz").json())["recovered_incidents"] and answer,
                timeout=30,
                what="a recovered incident in /readyz",
            )
            metrics = client.get("/metrics")
    assert ready["recovered_incidents"] == 1
    assert ready["checks"]["schedule"] == "ok"
    assert "reconcile" in ready["jobs"]
    assert "tokenward_recovered_incidents_total 1.0" in metrics.text


def _incidents_done(store: Any) -> int:
    return sum(
        1 for row in _inbox_rows(store) if row["scheme"] != "schedule" and row["status"] == "done"
    )


def _inbox_rows(store: Any) -> list[dict[str, Any]]:
    with store.engine.connect() as connection:
        return [
            dict(row)
            for row in connection.execute(select(inbox).order_by(inbox.c.received_at)).mappings()
        ]
