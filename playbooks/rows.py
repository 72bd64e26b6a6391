"""Query result rows to typed evidence, with the field quirks made explicit.

Rows come from the local engine or from Log Analytics and Defender, so every
reader here accepts the spellings they use: flags as ``true``, ``"True"``,
``1`` or ``""``; lists as arrays or as JSON text; ``ResultType`` as ``"0"`` or
``0``; times as datetimes or strings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from playbooks.identities import is_guid
from playbooks.models import (
    Baseline,
    FlowEvidence,
    SignIn,
    SignInOutcome,
    TriState,
)
from playbooks.times import as_utc

logger = logging.getLogger(__name__)

Row = dict[str, Any]

DEVICE_CODE_PROTOCOL = "devicecode"
DEVICE_CODE_TRANSFER_METHODS = frozenset({"devicecodeflow", "device code flow"})

# The values Entra documents for AuthenticationProtocol; anything else, its own
# ``unknownFutureValue`` included, is "other" and never an error.
KNOWN_PROTOCOLS = {
    name.lower(): name
    for name in ("none", "oAuth2", "ropc", "wsFederation", "saml20", "deviceCode")
}

# Codes where the sign-in paused for the user (MFA, a device code being typed,
# a password change): no token was issued, but the flow may still complete.
INTERRUPT_CODES = frozenset(
    {50055, 50072, 50074, 50076, 50079, 50125, 50140, 50158, 50199, 70016, 81010}
)


def object_id(value: Any) -> str:
    """A directory object id from the logs, or ``""`` when it is not a GUID.

    Graph requests put the id in their path; a value that is not one (the
    logs are data anyone who can reach a sign-in page shapes) is dropped, and
    the user is addressed by the percent-encoded UPN instead.
    """
    given = text(value).strip().lower()
    if given and not is_guid(given):
        logger.warning("ignored a UserId that is not an object id: %r", given[:80])
        return ""
    return given


def text(value: Any) -> str:
    """A cell as a string: ``None`` is ``""``, as Kusto strings are never null."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def tristate(value: Any) -> TriState:
    """``true``/``"True"`` is TRUE, ``false``/``"False"`` is FALSE, all else UNKNOWN."""
    if isinstance(value, bool):
        return TriState.TRUE if value else TriState.FALSE
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered == "true":
            return TriState.TRUE
        if lowered == "false":
            return TriState.FALSE
    return TriState.UNKNOWN


def flag(value: Any) -> bool:
    """A click-through style flag: ``true``, ``1`` and ``"1"`` are true."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    return text(value).strip().lower() in ("true", "1", "yes")


def result_code(value: Any) -> int | None:
    """``ResultType`` / ``ErrorCode`` as an int, whether it came as text or a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    cleaned = text(value).strip()
    try:
        return int(cleaned)
    except ValueError:
        return None


def outcome_of(code: int | None, signature: str) -> SignInOutcome:
    if code == 0:
        return SignInOutcome.SUCCESS
    if code is None:
        return SignInOutcome.SUCCESS if signature.lower() == "success" else SignInOutcome.FAILED
    if code in INTERRUPT_CODES:
        return SignInOutcome.INTERRUPTED
    return SignInOutcome.FAILED


def string_list(value: Any) -> tuple[str, ...]:
    """A list cell as strings: an array, JSON text of one, or one plain value."""
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(text(item) for item in value if text(item))
    raw = text(value).strip()
    if not raw:
        return ()
    if raw.startswith("["):
        try:
            parsed = json.loads(raw)
        except ValueError:
            return (raw,)
        if isinstance(parsed, list):
            return tuple(text(item) for item in parsed if text(item))
    return (raw,)


def protocol_kind(value: Any) -> str:
    """``AuthenticationProtocol`` as its documented spelling, ``none`` when empty, else ``other``."""
    lowered = text(value).strip().lower()
    if not lowered:
        return "none"
    return KNOWN_PROTOCOLS.get(lowered, "other")


def flow_evidence(protocol: str, transfer_method: str) -> FlowEvidence | None:
    """How a row shows it belongs to a device code flow; ``None`` if it does not."""
    if protocol.strip().lower() == DEVICE_CODE_PROTOCOL:
        return FlowEvidence.PROTOCOL
    if transfer_method.strip().lower() in DEVICE_CODE_TRANSFER_METHODS:
        return FlowEvidence.TRANSFER_METHOD
    return None


def timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        return as_utc(value)
    return as_utc(text(value))


def sign_in_from_row(row: Row) -> SignIn | None:
    """A hunt row as a :class:`SignIn`; ``None`` (and a log line) when it is not one."""
    protocol = text(row.get("AuthenticationProtocol"))
    transfer = text(row.get("OriginalTransferMethod"))
    evidence = flow_evidence(protocol, transfer)
    if evidence is None:
        logger.info(
            "skipped a sign-in row with protocol %r (%s): not device code",
            protocol,
            protocol_kind(protocol),
        )
        return None
    code = result_code(row.get("ResultType"))
    signature = text(row.get("ResultSignature"))
    risk_events = string_list(row.get("RiskEventTypes")) + string_list(row.get("RiskEventTypes_V2"))
    interactive = row.get("IsInteractive")
    return SignIn(
        time=timestamp(row.get("TimeGenerated")),
        source_table=text(row.get("SourceTable")) or "SigninLogs",
        id=text(row.get("Id")),
        user_principal_name=text(row.get("UserPrincipalName")),
        user_id=object_id(row.get("UserId")),
        user_display_name=text(row.get("UserDisplayName")),
        user_type=text(row.get("UserType")),
        home_tenant_id=text(row.get("HomeTenantId")),
        resource_tenant_id=text(row.get("ResourceTenantId")),
        app_id=text(row.get("AppId")).lower(),
        app_display_name=text(row.get("AppDisplayName")),
        resource_display_name=text(row.get("ResourceDisplayName")),
        authentication_protocol=protocol,
        original_transfer_method=transfer,
        flow_evidence=evidence,
        is_interactive=interactive if isinstance(interactive, bool) else None,
        result_type=code,
        result_signature=signature,
        result_description=text(row.get("ResultDescription")),
        outcome=outcome_of(code, signature),
        ip_address=text(row.get("IPAddress")),
        country=text(row.get("Country")).upper(),
        city=text(row.get("City")),
        operating_system=text(row.get("OS")),
        browser=text(row.get("Browser")),
        device_id=text(row.get("DeviceId")),
        is_compliant=tristate(row.get("IsCompliant")),
        is_managed=tristate(row.get("IsManagedDevice")),
        trust_type=text(row.get("TrustType")),
        risk_level_during_sign_in=text(row.get("RiskLevelDuringSignIn")).lower(),
        risk_level_aggregated=text(row.get("RiskLevelAggregated")).lower(),
        risk_state=text(row.get("RiskState")),
        risk_event_types=tuple(sorted(set(risk_events))),
        user_agent=text(row.get("UserAgent")),
        client_app_used=text(row.get("ClientAppUsed")),
        correlation_id=text(row.get("CorrelationId")),
        session_id=text(row.get("SessionId")),
        unique_token_identifier=text(row.get("UniqueTokenIdentifier")),
        conditional_access_status=text(row.get("ConditionalAccessStatus")),
    )


def baseline_from_row(row: Row | None, *, days: int) -> Baseline:
    """The baseline of one sign-in; no row means no sign-ins in the window."""
    if row is None:
        return Baseline(days=days, sign_ins=0)
    return Baseline(
        days=days,
        sign_ins=int(row.get("SignIns") or 0),
        countries=_sorted_set(item.upper() for item in string_list(row.get("Countries"))),
        app_ids=_sorted_set(item.lower() for item in string_list(row.get("AppIds"))),
        ip_addresses=_sorted_set(string_list(row.get("IPAddresses"))),
        device_code_sign_ins=int(row.get("DeviceCodeSignIns") or 0),
    )


def _sorted_set(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({value for value in values if value}))
