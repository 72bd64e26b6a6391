"""Plan approvals over HTTP: only a named person decides, and the decision names them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from playbooks.approval_api import ApprovalRefused, ApprovalRequest, PlanNotFound, PlanView
from tests.service import APPROVER, LOGIC_APP, Service, running_service

HASH = "ab" * 32


@dataclass
class MemoryApprovals:
    """The approval storage's contract, kept in memory for the HTTP layer's tests."""

    views: dict[str, PlanView] = field(default_factory=dict)
    decided: list[ApprovalRequest] = field(default_factory=list)

    def plans(self, *, status: str | None, limit: int) -> list[PlanView]:
        return [v for v in self.views.values() if status in (None, v.status)][:limit]

    def plan(self, plan_id: str) -> PlanView | None:
        return self.views.get(plan_id)

    def decide(self, request: ApprovalRequest) -> PlanView:
        view = self.views.get(request.plan_id)
        if view is None:
            raise PlanNotFound(request.plan_id)
        if view.status != "awaiting_approval":
            raise ApprovalRefused(f"plan {view.plan_id} was already {view.status}")
        if request.plan_hash != view.content_hash:
            raise ApprovalRefused("the plan changed since it was shown: its hash differs")
        self.decided.append(request)
        decided = replace(
            view,
            status=request.decision,
            decisions=[{"by": request.approver.principal_id, "decision": request.decision}],
        )
        self.views[view.plan_id] = decided
        return decided


@pytest.fixture(scope="module")
def approvals() -> MemoryApprovals:
    return MemoryApprovals()


@pytest.fixture(scope="module")
def service(
    emulator: Any, tmp_path_factory: pytest.TempPathFactory, approvals: MemoryApprovals
) -> Iterator[Service]:
    emulator.reset()
    with running_service(
        emulator, tmp_path_factory.mktemp("approvals"), worker=False, approvals=approvals
    ) as running:
        yield running


@pytest.fixture
def plan(approvals: MemoryApprovals) -> PlanView:
    view = PlanView(
        plan_id=f"plan-r-{len(approvals.views)}",
        run_id="r-approve",
        status="awaiting_approval",
        content_hash=HASH,
        created_at=datetime(2026, 1, 15, 9, 30, tzinfo=UTC),
        actions=[{"id": "a-1", "action": "revoke_sessions"}],
    )
    approvals.views[view.plan_id] = view
    return view


def person(service: Service, oid: str = APPROVER, **claims: Any) -> dict[str, str]:
    token = service.token(oid=oid, scp="user_impersonation", upn="soc.lead@contoso.com", **claims)
    return {"Authorization": f"Bearer {token}"}


def test_an_approver_approves_the_plan_they_saw_and_is_recorded_with_it(
    service: Service, approvals: MemoryApprovals, plan: PlanView
) -> None:
    with service.client() as client:
        shown = client.get(f"/plans/{plan.plan_id}", headers=person(service))
        answer = client.post(
            f"/plans/{plan.plan_id}/approve",
            json={"plan_hash": HASH, "reason": "seen the click"},
            headers=person(service),
        )

    assert shown.status_code == 200 and shown.json()["content_hash"] == HASH
    assert answer.status_code == 200 and answer.json()["status"] == "approved"
    decision = approvals.decided[-1]
    assert (decision.approver.principal_id, decision.approver.name, decision.reason) == (
        APPROVER,
        "soc.lead@contoso.com",
        "seen the click",
    )
    audited = [
        r for r in service.parts.audit.records(run_id="r-approve") if r.kind == "plan.approved"
    ][-1]
    assert audited.actor == "soc.lead@contoso.com" and audited.data["hash"] == HASH


def test_a_plan_that_changed_since_it_was_shown_is_not_approved(
    service: Service, plan: PlanView
) -> None:
    with service.client() as client:
        answer = client.post(
            f"/plans/{plan.plan_id}/approve", json={"plan_hash": "cd" * 32}, headers=person(service)
        )
    assert answer.status_code == 409
    assert answer.json()["message"] == "the plan changed since it was shown: its hash differs"


def test_a_rejection_is_a_decision_too(service: Service, plan: PlanView) -> None:
    with service.client() as client:
        answer = client.post(
            f"/plans/{plan.plan_id}/reject",
            json={"plan_hash": HASH, "reason": "meeting room"},
            headers=person(service),
        )
    assert answer.json()["status"] == "rejected"


@pytest.mark.parametrize(
    ("who", "status"),
    [
        ("nobody", 401),
        ("the-logic-app", 403),
        ("a-person-not-listed", 403),
        ("hmac-sender", 401),
    ],
)
def test_only_a_listed_person_may_decide(
    service: Service, approvals: MemoryApprovals, plan: PlanView, who: str, status: int
) -> None:
    headers = {
        "nobody": {},
        "the-logic-app": {"Authorization": f"Bearer {service.token(oid=LOGIC_APP)}"},
        "a-person-not-listed": person(service, oid="c0c0c0c0-0000-4000-8000-000000000003"),
        "hmac-sender": service.signed(b'{"plan_hash": "' + HASH.encode() + b'"}'),
    }[who]
    before = len(approvals.decided)
    with service.client() as client:
        answer = client.post(
            f"/plans/{plan.plan_id}/approve",
            json={"plan_hash": HASH},
            headers={k: v for k, v in headers.items() if v},
        )
    assert answer.status_code == status
    assert len(approvals.decided) == before


def test_an_app_role_makes_an_approver_when_configured(
    emu: Any, tmp_path: Any, approvals: MemoryApprovals, plan: PlanView
) -> None:
    from tests.service import service_settings

    settings = service_settings(
        emu, tmp_path, webhook={"approvers": [], "approver_role": "Tokenward.Approver"}
    )
    with running_service(
        emu, tmp_path, worker=False, settings=settings, approvals=approvals
    ) as service:
        with service.client() as client:
            refused = client.get(
                "/plans", headers=person(service, oid="c0c0c0c0-0000-4000-8000-000000000003")
            )
            listed = client.get(
                "/plans",
                headers=person(
                    service,
                    oid="c0c0c0c0-0000-4000-8000-000000000003",
                    roles=["Tokenward.Approver"],
                ),
            )
    assert refused.status_code == 403
    assert listed.status_code == 200 and plan.plan_id in [p["plan_id"] for p in listed.json()]


def test_unknown_plans_and_bad_decision_bodies_are_4xx(service: Service, plan: PlanView) -> None:
    with service.client() as client:
        missing = client.post(
            "/plans/plan-nope/approve", json={"plan_hash": HASH}, headers=person(service)
        )
        bad = client.post(
            f"/plans/{plan.plan_id}/approve", json={"plan_hash": "short"}, headers=person(service)
        )
    assert missing.status_code == 404
    assert bad.status_code == 400 and "plan_hash" in bad.json()["message"]


def test_by_default_the_endpoints_serve_the_stored_plans(emu: Any, tmp_path: Any) -> None:
    with running_service(emu, tmp_path, worker=False) as service:
        with service.client() as client:
            answer = client.get("/plans", headers=person(service))
            missing = client.get("/plans/plan-r-none", headers=person(service))
    assert answer.status_code == 200
    assert answer.json() == []
    assert missing.status_code == 404
