"""Specification: tokenward serve contains for real in auto, and on approval in approve.

The service runs under uvicorn with its worker process, hunting the
emulator's workspace through the real Log Analytics SDK and containing
through the real Graph SDK, after the permission preflight.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from playbooks.errors import PermissionDenied
from playbooks.server import build_parts
from playbooks.wiring import SourceSpec
from tests.graph_helpers import GRAPH_AUDIENCE, graph_calls
from tests.scheduled import (
    TARGET,
    minutes_ago,
    phish_tables,
    recent,
    revokes,
    tenant,
    wait_for,
)
from tests.service import APPROVER, running_service, service_settings

LIVE = SourceSpec("log_analytics")


def acting_settings(emu: Any, directory: Path, mode: str, **sections: dict[str, Any]) -> Any:
    return service_settings(
        emu,
        directory,
        webhook={"mode": mode},
        threat_intel={"ip_ranges": ["185.220.101.0/24"]},
        graph={"verify_delay": 0, "identity_protection_wait": 0},
        **sections,
    )


@pytest.fixture
def phished(emu: Any) -> dict[str, Any]:
    """The seed phish, eight minutes ago, in the workspace; its incident since."""
    tenant(emu)
    others, phish = phish_tables(minutes_ago(8))
    emu.log_analytics.workspace.load({**others, "SigninLogs": [*others["SigninLogs"], phish]})
    return recent(4)


def test_in_auto_a_delivered_incident_is_contained_once_however_often_it_is_delivered(
    emu: Any, tmp_path: Path, phished: dict[str, Any]
) -> None:
    settings = acting_settings(emu, tmp_path, "auto")
    with running_service(emu, tmp_path, settings=settings, source=LIVE) as service:
        first = service.post(phished)
        row = service.wait_done(first.json()["delivery_id"])
        again = service.post(phished)
    assert row["status"] == "done", row
    assert again.json()["status"] == "duplicate"
    assert len(revokes(emu)) == 1
    assert emu.graph.find(TARGET) is not None


def test_in_approve_the_plan_waits_for_a_named_approver_and_runs_on_approval(
    emu: Any, tmp_path: Path, phished: dict[str, Any]
) -> None:
    settings = acting_settings(emu, tmp_path, "approve")
    with running_service(emu, tmp_path, settings=settings, source=LIVE) as service:
        row = service.wait_done(service.post(phished).json()["delivery_id"])
        plan_id = _outcome(row)["plan_id"]
        assert plan_id, row
        assert revokes(emu) == [], "nothing is sent before the approval"
        approver = {
            "Authorization": f"Bearer {service.token(oid=APPROVER, scp='user_impersonation', upn='soc.lead@contoso.com')}"
        }
        with service.client() as client:
            shown = client.get(f"/plans/{plan_id}", headers=approver).json()
            decided = client.post(
                f"/plans/{plan_id}/approve",
                headers=approver,
                json={"plan_hash": shown["content_hash"], "reason": "seen"},
            )
            assert decided.status_code == 200, decided.text
            wait_for(lambda: revokes(emu), timeout=30, what="the approved plan's revocation")
            executed = wait_for(
                lambda: (
                    (view := client.get(f"/plans/{plan_id}", headers=approver).json())["status"]
                    == "executed"
                    and view
                ),
                timeout=30,
                what="the plan executed",
            )
    assert executed["status"] == "executed"
    assert len(revokes(emu)) == 1


def test_a_protected_account_is_never_touched_even_in_auto(
    emu: Any, tmp_path: Path, phished: dict[str, Any]
) -> None:
    settings = acting_settings(emu, tmp_path, "auto", guardrails={"protected_accounts": [TARGET]})
    with running_service(emu, tmp_path, settings=settings, source=LIVE) as service:
        row = service.wait_done(service.post(phished).json()["delivery_id"])
    assert row["status"] == "done", row
    assert revokes(emu) == []
    assert graph_calls(emu, writes_only=True) == []


def test_serve_in_auto_refuses_to_start_without_the_graph_permissions(
    emu: Any, tmp_path: Path
) -> None:
    emu.identity.roles[GRAPH_AUDIENCE] = ["User.Read.All"]
    settings = acting_settings(emu, tmp_path, "auto")
    with pytest.raises(PermissionDenied, match="tokenward serve"):
        build_parts(settings, spec=LIVE, with_worker=True)


def _outcome(row: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(row["outcome"]))
