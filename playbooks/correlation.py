"""Sign-in rows grouped into device code flows, with the evidence around each.

A flow is one user's device code authentication: the interrupt while the code
was typed, the success, and the non-interactive redemptions of its token share
a session. Each flow becomes one finding, scored on its first successful
interactive row and on every click, mail and baseline row that the correlation
queries returned for any of its rows.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from playbooks.models import (
    Baseline,
    EmailEvidence,
    Evidence,
    FlowEvidence,
    SignIn,
    SignInOutcome,
    UrlClickEvidence,
)
from playbooks.rows import Row, baseline_from_row, flag, result_code, string_list, text, timestamp

# Safe Links actions after which the user saw the page.
REACHED_ACTIONS = frozenset({"clickallowed", "urlscaninprogress", "urlerrorpage"})
JoinPath = Literal["upn", "object_id", "network_message_id"]
_JOIN_PREFERENCE = {"upn": 0, "object_id": 1, "network_message_id": 2}


@dataclass(frozen=True)
class Flow:
    """The rows of one device code authentication, the scored one first."""

    id: str
    sign_ins: tuple[SignIn, ...]

    @property
    def primary(self) -> SignIn:
        return self.sign_ins[0]

    @property
    def hit_ids(self) -> frozenset[str]:
        return frozenset(sign_in.id for sign_in in self.sign_ins)


def group_flows(sign_ins: Iterable[SignIn]) -> list[Flow]:
    """One flow per user and session (or correlation id), earliest first."""
    groups: dict[tuple[str, str], list[SignIn]] = defaultdict(list)
    for sign_in in sign_ins:
        session = sign_in.session_id or sign_in.correlation_id or sign_in.id
        groups[(sign_in.user_key, session)].append(sign_in)

    flows = []
    for (user, session), members in groups.items():
        ordered = sorted(members, key=_primary_order)
        digest = hashlib.sha256(f"{user}\n{session}".encode()).hexdigest()[:16]
        flows.append(Flow(id=f"f-{digest}", sign_ins=tuple(ordered)))
    return sorted(flows, key=lambda flow: (flow.primary.time, flow.id))


def _primary_order(sign_in: SignIn) -> tuple[int, int, datetime]:
    # The scored row: a successful redemption of the code, else the first one.
    redeemed = sign_in.flow_evidence is FlowEvidence.PROTOCOL
    succeeded = sign_in.outcome is SignInOutcome.SUCCESS
    return (0 if redeemed else 1, 0 if succeeded else 1, sign_in.time)


def index_by_hit(rows: Iterable[Row]) -> dict[str, list[Row]]:
    indexed: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        indexed[text(row.get("HitId"))].append(row)
    return indexed


def evidence_for(
    flow: Flow,
    *,
    clicks: Mapping[str, Sequence[Row]],
    emails: Mapping[str, Sequence[Row]],
) -> Evidence:
    reference = flow.primary.time
    click_rows = [row for hit in flow.hit_ids for row in clicks.get(hit, ())]
    email_rows = [row for hit in flow.hit_ids for row in emails.get(hit, ())]
    return Evidence(
        url_clicks=merge_clicks(click_rows, reference),
        emails=merge_emails(email_rows, reference),
    )


def baseline_for(flow: Flow, rows: Mapping[str, Sequence[Row]], *, days: int) -> Baseline:
    found = rows.get(flow.primary.id)
    return baseline_from_row(found[0] if found else None, days=days)


def merge_clicks(rows: Iterable[Row], reference: datetime) -> tuple[UrlClickEvidence, ...]:
    """Safe Links rows as logical clicks: one per ``ReportId``.

    A blocked click and the click-through that follows share a ReportId; they
    are one click, reached because the user went through.
    """
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        key = text(row.get("ReportId")) or f"{row.get('Timestamp')}|{text(row.get('Url'))}"
        groups[key].append(row)

    clicks = []
    for members in groups.values():
        members.sort(key=lambda row: timestamp(row.get("Timestamp")))
        actions = sorted({text(row.get("ActionType")) for row in members} - {""})
        clicked_through = any(flag(row.get("IsClickedThrough")) for row in members)
        reached = clicked_through or any(
            text(row.get("ActionType")).lower() in REACHED_ACTIONS for row in members
        )
        chain: list[str] = []
        for row in members:
            for url in string_list(row.get("UrlChain")):
                if url not in chain:
                    chain.append(url)
        first = members[0]
        when = timestamp(first.get("Timestamp"))
        clicks.append(
            UrlClickEvidence(
                time=when,
                account_upn=text(first.get("AccountUpn")),
                url=_first(members, "Url"),
                url_chain=tuple(chain),
                action_types=tuple(actions),
                is_clicked_through=clicked_through,
                reached=reached,
                report_id=text(first.get("ReportId")),
                workload=_first(members, "Workload"),
                network_message_id=_first(members, "NetworkMessageId"),
                ip_address=_first(members, "IPAddress"),
                threat_types=_first(members, "ThreatTypes"),
                minutes_before_sign_in=_minutes(reference, when),
            )
        )
    return tuple(sorted(clicks, key=lambda click: click.time))


def merge_emails(rows: Iterable[Row], reference: datetime) -> tuple[EmailEvidence, ...]:
    """Messages once each, linked by the strongest path that found them."""
    best: dict[tuple[str, str], Row] = {}
    for row in rows:
        key = (text(row.get("NetworkMessageId")), text(row.get("RecipientEmailAddress")).lower())
        known = best.get(key)
        if known is None or _join_rank(row) < _join_rank(known):
            best[key] = row

    emails = []
    for row in best.values():
        when = timestamp(row.get("Timestamp"))
        emails.append(
            EmailEvidence(
                time=when,
                network_message_id=text(row.get("NetworkMessageId")),
                recipient_email_address=text(row.get("RecipientEmailAddress")),
                recipient_object_id=text(row.get("RecipientObjectId")),
                sender_from_address=text(row.get("SenderFromAddress")),
                sender_from_domain=text(row.get("SenderFromDomain")),
                sender_display_name=text(row.get("SenderDisplayName")),
                subject=text(row.get("Subject")),
                email_direction=text(row.get("EmailDirection")),
                delivery_action=text(row.get("DeliveryAction")),
                delivery_location=text(row.get("DeliveryLocation")),
                threat_types=text(row.get("ThreatTypes")),
                detection_methods=text(row.get("DetectionMethods")),
                url_count=result_code(row.get("UrlCount")),
                minutes_before_sign_in=_minutes(reference, when),
                joined_by=_joined_by(row),
            )
        )
    return tuple(sorted(emails, key=lambda email: email.time))


def _joined_by(row: Row) -> JoinPath:
    value = text(row.get("JoinedBy"))
    if value == "object_id":
        return "object_id"
    if value == "network_message_id":
        return "network_message_id"
    return "upn"


def _join_rank(row: Row) -> int:
    return _JOIN_PREFERENCE.get(text(row.get("JoinedBy")), len(_JOIN_PREFERENCE))


def _first(rows: Sequence[Row], column: str) -> str:
    for row in rows:
        value = text(row.get(column))
        if value:
            return value
    return ""


def _minutes(reference: datetime, when: datetime) -> float:
    return round((reference - when).total_seconds() / 60, 1)
