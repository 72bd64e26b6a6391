"""What happened around one finding, in time order: the timeline's marks.

Pure: a finding and the run's actions in, marks out. The HTML report draws
them to scale and lists them as a table; a mark says which lane it belongs to
(mail, link click, sign-in, tokenward), when it happened and what a person
should read beside it.

Planned actions sit at the run's clock, the moment tokenward decided them: in
a dry run nothing was sent, so that is when it would have been.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from urllib.parse import urlsplit

from playbooks.models import (
    ActionReport,
    ActionStatus,
    EmailEvidence,
    Finding,
    FlowEvidence,
    RunReport,
    SignIn,
    SignInOutcome,
    UrlClickEvidence,
)
from playbooks.reports import STATUS_WORDS, action_title

_BLOCKED_DELIVERY = ("blocked", "junked", "replaced")


class Lane(StrEnum):
    MAIL = "mail"
    CLICK = "click"
    SIGN_IN = "sign_in"
    # Later rows of the flow that use the token it issued: what was done with it.
    TOKEN_USE = "token_use"
    TOKENWARD = "tokenward"

    @property
    def heading(self) -> str:
        return _LANE_TITLES[self]

    @property
    def empty_note(self) -> str:
        return _EMPTY_NOTES[self]


_LANE_TITLES = {
    Lane.MAIL: "Mail",
    Lane.CLICK: "Link click",
    Lane.SIGN_IN: "Sign-in",
    Lane.TOKEN_USE: "Token use",
    Lane.TOKENWARD: "tokenward",
}
_EMPTY_NOTES = {
    Lane.MAIL: "no mail found around the sign-in",
    Lane.CLICK: "no click found around the sign-in",
    Lane.SIGN_IN: "",
    Lane.TOKEN_USE: "",
    Lane.TOKENWARD: "",
}


@dataclass(frozen=True)
class Mark:
    """One event on a finding's timeline."""

    lane: Lane
    # What kind of event: lure_email, email, click, click_blocked,
    # device_code, device_code_failed, interrupt, token_use, action, run.
    kind: str
    time: datetime
    title: str
    # One or two lines (joined by a newline) to read beside the mark.
    detail: str
    # From the scored sign-in; negative is before it.
    offset: timedelta
    # The scored sign-in, which the timeline is drawn around.
    primary: bool = False
    # For an action: its status, so it is drawn as sent, held or blocked.
    status: ActionStatus | None = None
    # A short name of what the mark is about (a resource, a host), for a
    # label that sums up several marks close together.
    subject: str = ""

    @property
    def offset_text(self) -> str:
        return offset_text(self.offset)


@dataclass(frozen=True)
class Timeline:
    """The marks of one finding, earliest first, around its scored sign-in."""

    anchor: datetime
    marks: tuple[Mark, ...]
    # A token was issued and tokenward planned to act: the time between the
    # sign-in and the run is time the holder of the token had.
    exposed: bool = False

    def lane(self, lane: Lane) -> tuple[Mark, ...]:
        return tuple(mark for mark in self.marks if mark.lane is lane)


def timeline_for(finding: Finding, report: RunReport) -> Timeline:
    """Every mail, click and sign-in row of *finding*, and what tokenward planned."""
    anchor = finding.primary.time
    marks: list[Mark] = []
    lure_ids = {
        click.network_message_id
        for click in finding.evidence.url_clicks
        if click.reached and click.network_message_id
    }
    for email in finding.evidence.emails:
        marks.append(_email_mark(email, anchor, lure=email.network_message_id in lure_ids))
    for click in finding.evidence.url_clicks:
        marks.append(_click_mark(click, anchor))
    for sign_in in finding.sign_ins:
        marks.append(_sign_in_mark(sign_in, anchor, primary=sign_in is finding.primary))

    actions = actions_for(finding, report)
    if actions:
        for action in actions:
            marks.append(_action_mark(action, report.now, anchor))
    else:
        marks.append(
            Mark(
                lane=Lane.TOKENWARD,
                kind="run",
                time=report.now,
                title="tokenward ran",
                detail=f"{finding.tier.value} tier: no action planned",
                offset=report.now - anchor,
            )
        )
    # Stable: marks at the same instant keep the order of the story.
    ordered = sorted(marks, key=lambda mark: mark.time)
    issued = any(row.outcome is SignInOutcome.SUCCESS for row in finding.sign_ins)
    return Timeline(anchor=anchor, marks=tuple(ordered), exposed=issued and bool(actions))


def deciding_findings(report: RunReport) -> dict[str, str]:
    """Per user, the finding whose tier decided the user's actions.

    Planning acts once per user on the user's worst finding (highest tier,
    then score); the report shows the actions on that finding's timeline.
    """
    chosen: dict[str, Finding] = {}
    for finding in report.findings:
        key = finding.user_principal_name.lower()
        known = chosen.get(key)
        if known is None or (finding.tier.rank, finding.score) > (
            known.tier.rank,
            known.score,
        ):
            chosen[key] = finding
    return {user: finding.id for user, finding in chosen.items()}


def actions_for(finding: Finding, report: RunReport) -> tuple[ActionReport, ...]:
    """The run's actions on *finding*'s user, if this finding decided them."""
    user = finding.user_principal_name.lower()
    if deciding_findings(report).get(user) != finding.id:
        return ()
    return tuple(
        action
        for action in report.actions
        if any(target.user_principal_name.lower() == user for target in action.targets)
    )


def offset_text(offset: timedelta) -> str:
    """``−9 min``, ``0``, ``+30 min``, ``+2 h 5 min``, ``−45 s``, ``+3 d 2 h``."""
    seconds = round(offset.total_seconds())
    if seconds == 0:
        return "0"
    sign = "−" if seconds < 0 else "+"
    rest = abs(seconds)
    if rest < 60:
        return f"{sign}{rest} s"
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{sign}{days} d" + (f" {hours} h" if hours else "")
    if hours:
        return f"{sign}{hours} h" + (f" {minutes} min" if minutes else "")
    return f"{sign}{minutes} min"


def short_url(url: str) -> str:
    """A URL as host and path, without scheme or query: what a person scans."""
    candidate = url.strip()
    if "://" not in candidate:
        candidate = "https://" + candidate
    try:
        parts = urlsplit(candidate)
    except ValueError:
        return url
    path = parts.path.rstrip("/")
    return f"{parts.hostname or ''}{path}" or url


def click_route(click: UrlClickEvidence, *, separator: str = " ") -> str:
    """Where the click went: ``lure.workers.dev/x → microsoft.com/devicelogin``."""
    first = short_url(click.url)
    chain = [short_url(url) for url in click.url_chain]
    last = chain[-1] if chain else first
    return first if last == first else f"{first}{separator}→ {last}"


def _email_mark(email: EmailEvidence, anchor: datetime, *, lure: bool) -> Mark:
    delivery = email.delivery_action.lower()
    if any(word in delivery for word in _BLOCKED_DELIVERY):
        title = f"Mail {delivery}"
    elif email.threat_types:
        title = f"{email.threat_types} mail delivered"
    elif lure:
        title = "Lure mail delivered"
    else:
        title = "Mail delivered"
    subject = f"“{email.subject}”" if email.subject else "no subject"
    sender = f"\nfrom {email.sender_from_address}" if email.sender_from_address else ""
    return Mark(
        lane=Lane.MAIL,
        kind="lure_email" if lure else "email",
        time=email.time,
        title=title,
        detail=subject + sender,
        offset=email.time - anchor,
    )


def _click_mark(click: UrlClickEvidence, anchor: datetime) -> Mark:
    if click.is_clicked_through:
        title, kind = "Safe Links warning clicked through", "click"
    elif click.reached:
        title, kind = "Link opened", "click"
    else:
        title, kind = "Click blocked", "click_blocked"
    return Mark(
        lane=Lane.CLICK,
        kind=kind,
        time=click.time,
        title=title,
        detail=click_route(click, separator="\n"),
        offset=click.time - anchor,
    )


def _sign_in_mark(sign_in: SignIn, anchor: datetime, *, primary: bool) -> Mark:
    where = sign_in.ip_address + (f" ({sign_in.country})" if sign_in.country else "")
    app = sign_in.app_display_name or sign_in.app_id or "unknown app"
    code = f" ({sign_in.result_type})" if sign_in.result_type else ""
    agent = f"\n{sign_in.user_agent}" if sign_in.user_agent else ""
    lane = Lane.SIGN_IN
    if sign_in.flow_evidence is FlowEvidence.TRANSFER_METHOD:
        lane, kind = Lane.TOKEN_USE, "token_use"
        title = "Token used" + ("" if _succeeded(sign_in) else f", failed{code}")
        detail = f"{sign_in.resource_display_name or app} from {where}{agent}"
    elif sign_in.outcome is SignInOutcome.SUCCESS:
        kind, title = "device_code", "Device code redeemed"
        detail = f"{app} from {where}{agent}"
    elif sign_in.outcome is SignInOutcome.INTERRUPTED:
        kind, title = "interrupt", f"Sign-in paused{code}"
        detail = f"{app} from {where}{agent}"
    else:
        kind, title = "device_code_failed", f"Device code sign-in failed{code}"
        detail = f"{app} from {where}{agent}"
    return Mark(
        lane=lane,
        kind=kind,
        time=sign_in.time,
        title=title,
        detail=detail,
        offset=sign_in.time - anchor,
        primary=primary,
        # What a cluster of such marks is summed up by.
        subject=(sign_in.resource_display_name or app).removeprefix("Office 365 "),
    )


def _action_mark(action: ActionReport, clock: datetime, anchor: datetime) -> Mark:
    return Mark(
        lane=Lane.TOKENWARD,
        kind="action",
        time=clock,
        title=action_title(action.action),
        detail=STATUS_WORDS.get(action.status, action.status.value),
        offset=clock - anchor,
        status=action.status,
    )


def _succeeded(sign_in: SignIn) -> bool:
    return sign_in.outcome is SignInOutcome.SUCCESS


__all__: Sequence[str] = [
    "Lane",
    "Mark",
    "Timeline",
    "actions_for",
    "click_route",
    "deciding_findings",
    "offset_text",
    "short_url",
    "timeline_for",
]
