"""Small builders for specification tests: a sign-in, a click, a finding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from playbooks.models import (
    Baseline,
    EmailEvidence,
    Evidence,
    Finding,
    FlowEvidence,
    Reason,
    SignIn,
    SignInOutcome,
    Tier,
    TriState,
    UrlClickEvidence,
)

AT = datetime(2026, 1, 15, 9, 24, 58, tzinfo=UTC)


def sign_in(**changes: Any) -> SignIn:
    values: dict[str, Any] = {
        "time": AT,
        "source_table": "SigninLogs",
        "id": "si-1",
        "user_principal_name": "megan.bowen@contoso.com",
        "user_id": "aaaaaaaa-0000-4000-8000-000000000002",
        "app_id": "04b07795-8ddb-461a-bbee-02f9e1bf7b46",
        "app_display_name": "Microsoft Azure CLI",
        "resource_display_name": "Windows Azure Service Management API",
        "authentication_protocol": "deviceCode",
        "flow_evidence": FlowEvidence.PROTOCOL,
        "result_type": 0,
        "outcome": SignInOutcome.SUCCESS,
        "ip_address": "198.51.100.44",
        "country": "US",
        "is_compliant": TriState.TRUE,
        "is_managed": TriState.TRUE,
        "session_id": "session-1",
    }
    values.update(changes)
    return SignIn(**values)


def click(minutes_before: float = 3, **changes: Any) -> UrlClickEvidence:
    values: dict[str, Any] = {
        "time": AT - timedelta(minutes=minutes_before),
        "account_upn": "megan.bowen@contoso.com",
        "url": "https://lure.fabrikam.example/join",
        "action_types": ("ClickAllowed",),
        "reached": True,
        "report_id": "r-1",
        "workload": "Email",
        "network_message_id": "nm-1",
        "ip_address": "203.0.113.10",
        "minutes_before_sign_in": minutes_before,
    }
    values.update(changes)
    return UrlClickEvidence(**values)


def email(minutes_before: float = 9, **changes: Any) -> EmailEvidence:
    values: dict[str, Any] = {
        "time": AT - timedelta(minutes=minutes_before),
        "network_message_id": "nm-1",
        "recipient_email_address": "megan.bowen@contoso.com",
        "sender_from_address": "helpdesk@fabrikam.example",
        "subject": "Verify your access",
        "email_direction": "Inbound",
        "delivery_action": "Delivered",
        "url_count": 1,
        "minutes_before_sign_in": minutes_before,
        "joined_by": "upn",
    }
    values.update(changes)
    return EmailEvidence(**values)


def baseline(**changes: Any) -> Baseline:
    values: dict[str, Any] = {
        "days": 30,
        "sign_ins": 40,
        "countries": ("US",),
        "device_code_sign_ins": 0,
    }
    values.update(changes)
    return Baseline(**values)


def finding(
    user: str = "megan.bowen@contoso.com",
    *,
    tier: Tier = Tier.HIGH,
    score: int = 90,
    user_id: str = "aaaaaaaa-0000-4000-8000-000000000002",
    **changes: Any,
) -> Finding:
    row = sign_in(user_principal_name=user, user_id=user_id)
    values: dict[str, Any] = {
        "id": f"f-{user}",
        "user_principal_name": user,
        "user_id": user_id,
        "sign_in_time": AT,
        "score": score,
        "tier": tier,
        "reasons": (Reason(signal="high_value_app", weight=15, detail="..."),),
        "evidence": Evidence(),
        "sign_ins": (row,),
    }
    values.update(changes)
    return Finding(**values)
