"""Planning: one set of actions per user, after the guardrails."""

from __future__ import annotations

from datetime import UTC, datetime

from playbooks.actions import IncidentRef
from playbooks.models import ActionKind, Finding, Gate, Plan, Tier
from playbooks.planning import Guardrails, plan_actions
from playbooks.playbook import load_playbook
from tests.factories import finding

PLAYBOOK = load_playbook()
NOW = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)


def plan(findings: list[Finding], guardrails: Guardrails | None = None) -> Plan:
    return plan_actions(
        findings, PLAYBOOK, guardrails or Guardrails(), run_id="r-1", created_at=NOW
    )


def kinds(result: Plan) -> list[tuple[str, str, str]]:
    return [
        (a.action.value, ",".join(t.label for t in a.targets), a.gate.value) for a in result.actions
    ]


def test_a_high_finding_plans_revoke_disable_and_confirm_with_exact_requests() -> None:
    result = plan([finding()])
    assert kinds(result) == [
        ("revoke_sessions", "megan.bowen@contoso.com", "unattended"),
        ("disable_account", "megan.bowen@contoso.com", "unattended"),
        ("confirm_compromised", "megan.bowen@contoso.com", "unattended"),
    ]
    revoke, disable, confirm = (a.request for a in result.actions)
    assert (revoke.method, revoke.path, revoke.body) == (
        "POST",
        "/users/aaaaaaaa-0000-4000-8000-000000000002/revokeSignInSessions",
        None,
    )
    assert (disable.method, disable.body) == ("PATCH", {"accountEnabled": False})
    assert confirm.body == {"userIds": ["aaaaaaaa-0000-4000-8000-000000000002"]}


def test_many_findings_for_one_user_give_one_set_of_actions_by_the_highest_tier() -> None:
    result = plan(
        [
            finding(tier=Tier.MEDIUM, score=50, id="f-a"),
            finding(id="f-b"),
            finding(id="f-c", score=80),
        ]
    )
    assert [a.action for a in result.actions].count(ActionKind.REVOKE_SESSIONS) == 1
    assert result.actions[0].finding_ids == ("f-b",)


def test_confirm_compromised_is_one_call_for_all_users() -> None:
    result = plan(
        [
            finding("a@contoso.com", user_id="aaaaaaaa-0000-4000-8000-00000000000a"),
            finding("b@contoso.com", user_id="aaaaaaaa-0000-4000-8000-00000000000b"),
        ]
    )
    confirms = [a for a in result.actions if a.action is ActionKind.CONFIRM_COMPROMISED]
    assert len(confirms) == 1
    assert confirms[0].request.body == {
        "userIds": ["aaaaaaaa-0000-4000-8000-00000000000a", "aaaaaaaa-0000-4000-8000-00000000000b"]
    }


def test_a_protected_account_is_never_planned_for_under_any_score() -> None:
    for protected in ("megan.bowen@contoso.com", "aaaaaaaa-0000-4000-8000-000000000002"):
        result = plan([finding(score=100)], Guardrails(protected_accounts=frozenset({protected})))
        assert {a.gate for a in result.actions} == {Gate.BLOCKED}
        assert all(d.guardrail == "protected_account" for a in result.actions for d in a.decisions)


def test_a_privileged_user_and_one_whose_roles_could_not_be_read_wait_with_their_own_reason() -> (
    None
):
    cases = {
        "privileged": (
            Guardrails(privileged_users=frozenset({"megan.bowen@contoso.com"})),
            "megan.bowen@contoso.com holds a privileged directory role",
        ),
        "unread": (
            Guardrails(unread_users=frozenset({"aaaaaaaa-0000-4000-8000-000000000002"})),
            "could not be read from the directory, so its roles are unknown",
        ),
    }
    for guardrails, reason in cases.values():
        result = plan([finding(score=100)], guardrails)
        user_actions = [a for a in result.actions if a.targets]
        assert user_actions and {a.gate for a in user_actions} == {Gate.APPROVAL}
        details = [
            d.detail
            for a in user_actions
            for d in a.decisions
            if d.guardrail == "privileged_account"
        ]
        assert details and all(reason in detail for detail in details)


def test_sanctioned_use_never_runs_unattended() -> None:
    result = plan([finding(allowlisted=True)])
    assert {a.gate for a in result.actions} == {Gate.APPROVAL}


def test_above_the_cap_every_action_waits_for_approval() -> None:
    many = [
        finding(f"u{n}@contoso.com", user_id=f"aaaaaaaa-0000-4000-8000-{n:012d}") for n in range(3)
    ]
    result = plan(many, Guardrails(max_users_per_run=2))
    assert {a.gate for a in result.actions} == {Gate.APPROVAL}
    assert any(
        "3 users exceed max_users_per_run (2)" in d.detail
        for a in result.actions
        for d in a.decisions
    )
    assert {a.gate for a in plan(many, Guardrails(max_users_per_run=3)).actions} == {
        Gate.UNATTENDED
    }


def test_partial_evidence_holds_high_tier_actions_for_a_person() -> None:
    result = plan([finding()], Guardrails(evidence_complete=False))
    assert {a.gate for a in result.actions} == {Gate.APPROVAL}


def test_a_guest_is_told_that_a_revoke_does_not_contain_them() -> None:
    result = plan([finding(is_guest=True)])
    revoke = next(a for a in result.actions if a.action is ActionKind.REVOKE_SESSIONS)
    assert any("does not contain a guest" in note for note in revoke.notes)
    assert any(a.action is ActionKind.DISABLE_ACCOUNT for a in result.actions)


def test_low_and_medium_tiers_plan_no_user_action() -> None:
    assert plan([finding(tier=Tier.LOW, score=10)]).actions == ()
    assert plan([finding(tier=Tier.MEDIUM, score=50)]).actions == ()


def test_an_incident_gets_one_comment_with_an_id_fixed_by_the_run() -> None:
    incident = IncidentRef(
        resource_id="/subscriptions/s/resourceGroups/g/providers/Microsoft.OperationalInsights/workspaces/w/providers/Microsoft.SecurityInsights/incidents/i-1"
    )
    first = plan([finding()], Guardrails(incident=incident))
    again = plan([finding()], Guardrails(incident=incident))
    comment = first.actions[-1]
    assert comment.action is ActionKind.COMMENT_ON_INCIDENT
    assert comment.request.method == "PUT" and "/comments/" in comment.request.path
    assert comment.request.path == again.actions[-1].request.path


def test_the_plan_hash_binds_to_the_requests() -> None:
    one = plan([finding()])
    same = plan([finding()])
    other = plan([finding(user_id="aaaaaaaa-0000-4000-8000-000000000009")])
    assert one.content_hash == same.content_hash != other.content_hash


def test_action_ids_are_stable_for_the_same_sign_in_across_runs() -> None:
    first = plan_actions([finding()], PLAYBOOK, Guardrails(), run_id="r-1", created_at=NOW)
    second = plan_actions([finding()], PLAYBOOK, Guardrails(), run_id="r-2", created_at=NOW)
    assert [a.id for a in first.actions] == [a.id for a in second.actions]
