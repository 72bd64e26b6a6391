"""Scoring: every signal that fires adds its weight and a readable reason."""

from __future__ import annotations

import ipaddress

import pytest

from playbooks.models import Evidence, SignInOutcome, Tier, TriState
from playbooks.playbook import load_playbook
from playbooks.scoring import ScoringContext, SignalInput, score
from playbooks.settings import SanctionedUse
from tests.factories import baseline, click, email, sign_in

PLAYBOOK = load_playbook()
MAB = "29d9ed98-a469-4536-ade2-f981bc1d605e"


def assess(given: SignalInput) -> tuple[int, Tier, dict[str, int]]:
    thresholds = PLAYBOOK.spec.scoring.thresholds
    result = score(given, PLAYBOOK.signals, high=thresholds.high, medium=thresholds.medium)
    return result.value, result.tier, {reason.signal: reason.weight for reason in result.reasons}


def test_the_seed_true_positive_scores_high_with_every_reason() -> None:
    row = sign_in(
        ip_address="185.220.101.47",
        country="NL",
        is_compliant=TriState.FALSE,
        is_managed=TriState.FALSE,
        risk_level_during_sign_in="high",
        risk_level_aggregated="high",
        user_agent="python-requests/2.28.0",
    )
    lure = click(
        3,
        url="https://x.workers.dev/s",
        url_chain=("https://x.workers.dev/s", "https://microsoft.com/devicelogin"),
    )
    given = SignalInput(
        sign_in=row,
        flow=(row,),
        evidence=Evidence(url_clicks=(lure,), emails=(email(9),)),
        baseline=baseline(),
        context=ScoringContext(threat_networks=(ipaddress.ip_network("185.220.101.0/24"),)),
    )
    value, tier, reasons = assess(given)
    assert (value, tier) == (100, Tier.HIGH)
    assert {
        "high_value_app": 15,
        "unmanaged_device": 10,
        "non_compliant_device": 10,
        "sign_in_risk": 15,
        "aggregated_risk": 10,
        "threat_intel_ip": 15,
        "scripted_user_agent": 10,
        "unusual_country": 10,
        "url_click_before": 20,
        "click_to_device_login": 20,
        "click_lure_host": 10,
        "lure_email": 10,
        "first_device_code_use": 10,
    }.items() <= reasons.items()


def test_reasons_are_sentences_with_the_facts_that_fired() -> None:
    row = sign_in(user_agent="curl/8.7.1")
    thresholds = PLAYBOOK.spec.scoring.thresholds
    given = SignalInput(sign_in=row, flow=(row,), evidence=Evidence(), baseline=baseline())
    reasons = {
        r.signal: r.detail
        for r in score(
            given, PLAYBOOK.signals, high=thresholds.high, medium=thresholds.medium
        ).reasons
    }
    assert (
        reasons["scripted_user_agent"]
        == "the user agent 'curl/8.7.1' is a scripting client, not a browser"
    )
    assert "Microsoft Azure CLI (04b07795-8ddb-461a-bbee-02f9e1bf7b46)" in reasons["high_value_app"]


def test_a_broker_sign_in_minutes_after_a_devicelogin_click_is_high_even_from_the_same_address() -> (
    None
):
    # Field case B24: the address differing is a bonus, never a requirement.
    for ip in ("198.51.100.44", "203.0.113.10"):
        row = sign_in(
            app_id=MAB,
            app_display_name="Microsoft Authentication Broker",
            resource_display_name="Microsoft Graph",
            ip_address=ip,
            is_compliant=TriState.UNKNOWN,
            is_managed=TriState.UNKNOWN,
        )
        lure = click(9.5, url="https://microsoft.com/devicelogin", ip_address="203.0.113.10")
        given = SignalInput(
            sign_in=row,
            flow=(row,),
            evidence=Evidence(url_clicks=(lure,)),
            baseline=baseline(sign_ins=0, countries=()),
        )
        value, tier, reasons = assess(given)
        assert tier is Tier.HIGH, (ip, value, reasons)
        assert ("ip_differs_from_click" in reasons) is (ip != "203.0.113.10")


def test_an_engineer_with_a_device_code_history_and_no_lure_scores_low() -> None:
    row = sign_in(ip_address="203.0.113.50")
    history = baseline(device_code_sign_ins=20, sign_ins=40)
    value, tier, reasons = assess(
        SignalInput(sign_in=row, flow=(row,), evidence=Evidence(), baseline=history)
    )
    assert tier is Tier.LOW
    assert set(reasons) == {"high_value_app"}


def test_a_compliant_flag_lowers_nothing_and_an_unknown_one_adds_a_little() -> None:
    compliant = sign_in(is_compliant=TriState.TRUE, is_managed=TriState.TRUE)
    unknown = sign_in(is_compliant=TriState.UNKNOWN, is_managed=TriState.UNKNOWN)
    known = assess(
        SignalInput(sign_in=compliant, flow=(compliant,), evidence=Evidence(), baseline=baseline())
    )
    vague = assess(
        SignalInput(sign_in=unknown, flow=(unknown,), evidence=Evidence(), baseline=baseline())
    )
    assert "non_compliant_device" not in known[2]
    assert vague[2]["non_compliant_device"] == 5 and vague[2]["unmanaged_device"] == 5


def test_a_blocked_click_the_user_did_not_pass_is_not_a_reached_lure() -> None:
    row = sign_in()
    blocked = click(3, action_types=("ClickBlocked",), reached=False)
    _, _, reasons = assess(
        SignalInput(
            sign_in=row, flow=(row,), evidence=Evidence(url_clicks=(blocked,)), baseline=baseline()
        )
    )
    assert "url_click_before" not in reasons


def test_a_failed_sign_in_cannot_have_issued_a_token() -> None:
    row = sign_in(
        result_type=53003, outcome=SignInOutcome.FAILED, result_description="Blocked by CA"
    )
    _, _, reasons = assess(
        SignalInput(sign_in=row, flow=(row,), evidence=Evidence(), baseline=baseline())
    )
    assert reasons["sign_in_not_successful"] == -40


def test_sanctioned_use_needs_the_user_app_and_network_together() -> None:
    entry = SanctionedUse(
        name="rooms",
        users=("boardroom@contoso.com",),
        apps=("Microsoft Teams",),
        ip_ranges=(ipaddress.ip_network("198.51.100.0/24"),),
    )
    context = ScoringContext(sanctioned_use=(entry,))
    room = sign_in(
        user_principal_name="boardroom@contoso.com",
        app_display_name="Microsoft Teams",
        app_id="",
        ip_address="198.51.100.24",
    )
    elsewhere = room.model_copy(update={"ip_address": "185.220.101.47"})
    for row, sanctioned in ((room, True), (elsewhere, False)):
        _, _, reasons = assess(
            SignalInput(
                sign_in=row, flow=(row,), evidence=Evidence(), baseline=baseline(), context=context
            )
        )
        assert ("sanctioned_use" in reasons) is sanctioned


def test_an_app_alone_can_never_be_sanctioned() -> None:
    with pytest.raises(ValueError, match="an app alone is what attackers use too"):
        SanctionedUse(name="cli", apps=("Microsoft Azure CLI",))


def test_the_score_is_clamped_to_zero_and_a_hundred() -> None:
    row = sign_in(result_type=53003)
    entry = SanctionedUse(name="x", users=("megan.bowen@contoso.com",))
    value, tier, _ = assess(
        SignalInput(
            sign_in=row,
            flow=(row,),
            evidence=Evidence(),
            baseline=baseline(device_code_sign_ins=3),
            context=ScoringContext(sanctioned_use=(entry,)),
        )
    )
    assert (value, tier) == (0, Tier.LOW)
