"""The data that flows through a run: sign-ins, evidence, findings, plans, actions.

Every model is immutable once built; a step returns new data instead of
changing what an earlier step produced, so a report shows exactly what each
step decided.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer

from playbooks.times import as_utc, isoformat_z

#: An aware UTC instant, written out as ISO 8601 with a ``Z``.
UtcDatetime = Annotated[
    datetime,
    AfterValidator(as_utc),
    PlainSerializer(isoformat_z, return_type=str, when_used="json"),
]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Tier(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        return {"low": 0, "medium": 1, "high": 2}[self.value]


class Mode(StrEnum):
    DRY_RUN = "dry-run"
    APPROVE = "approve"
    AUTO = "auto"


class TriState(StrEnum):
    """A flag that may be true, false or not known (missing, null, ``""``)."""

    TRUE = "true"
    FALSE = "false"
    UNKNOWN = "unknown"


class SignInOutcome(StrEnum):
    SUCCESS = "success"
    # 50199, 50074, 50140 and the like: the flow paused for the user; no token yet.
    INTERRUPTED = "interrupted"
    FAILED = "failed"


class FlowEvidence(StrEnum):
    """How a row shows that it belongs to a device code flow."""

    # AuthenticationProtocol is deviceCode: the code was redeemed in this sign-in.
    PROTOCOL = "authentication_protocol"
    # Only OriginalTransferMethod says deviceCodeFlow: a token from the flow is used.
    TRANSFER_METHOD = "original_transfer_method"


# -- what the hunt finds ------------------------------------------------------


class SignIn(Model):
    """One sign-in log row that the hunt matched."""

    time: UtcDatetime
    source_table: str
    id: str = ""
    user_principal_name: str
    user_id: str = ""
    user_display_name: str = ""
    user_type: str = ""
    home_tenant_id: str = ""
    resource_tenant_id: str = ""
    app_id: str = ""
    app_display_name: str = ""
    resource_display_name: str = ""
    authentication_protocol: str = ""
    original_transfer_method: str = ""
    flow_evidence: FlowEvidence
    is_interactive: bool | None = None
    result_type: int | None = None
    result_signature: str = ""
    result_description: str = ""
    outcome: SignInOutcome
    ip_address: str = ""
    country: str = ""
    city: str = ""
    operating_system: str = ""
    browser: str = ""
    device_id: str = ""
    is_compliant: TriState = TriState.UNKNOWN
    is_managed: TriState = TriState.UNKNOWN
    trust_type: str = ""
    risk_level_during_sign_in: str = ""
    risk_level_aggregated: str = ""
    risk_state: str = ""
    risk_event_types: tuple[str, ...] = ()
    user_agent: str = ""
    client_app_used: str = ""
    correlation_id: str = ""
    session_id: str = ""
    unique_token_identifier: str = ""
    conditional_access_status: str = ""

    @property
    def user_key(self) -> str:
        return self.user_principal_name.strip().lower()

    @property
    def is_guest(self) -> bool:
        if self.user_type.lower() == "guest":
            return True
        if "#ext#" in self.user_principal_name.lower():
            return True
        return bool(
            self.home_tenant_id
            and self.resource_tenant_id
            and self.home_tenant_id.lower() != self.resource_tenant_id.lower()
        )


class UrlClickEvidence(Model):
    """One logical Safe Links click: the rows of one ``ReportId`` merged."""

    time: UtcDatetime
    account_upn: str
    url: str
    url_chain: tuple[str, ...] = ()
    action_types: tuple[str, ...] = ()
    is_clicked_through: bool = False
    # The user got to the page: allowed, still being scanned, an error page, or
    # clicked through a warning. A block the user did not pass is not reached.
    reached: bool
    report_id: str = ""
    workload: str = ""
    network_message_id: str = ""
    ip_address: str = ""
    threat_types: str = ""
    minutes_before_sign_in: float
    joined_by: Literal["upn"] = "upn"


class EmailEvidence(Model):
    """One message delivered to the user around the sign-in."""

    time: UtcDatetime
    network_message_id: str
    recipient_email_address: str
    recipient_object_id: str = ""
    sender_from_address: str = ""
    sender_from_domain: str = ""
    sender_display_name: str = ""
    subject: str = ""
    email_direction: str = ""
    delivery_action: str = ""
    delivery_location: str = ""
    threat_types: str = ""
    detection_methods: str = ""
    url_count: int | None = None
    minutes_before_sign_in: float
    # How the message was linked to the user: recipient address, recipient object
    # id, or the NetworkMessageId of a click the user made (mail to an alias).
    joined_by: Literal["upn", "object_id", "network_message_id"]


class Baseline(Model):
    """What the user's sign-ins looked like in the days before this one."""

    days: int
    sign_ins: int
    countries: tuple[str, ...] = ()
    app_ids: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    device_code_sign_ins: int = 0


class Evidence(Model):
    url_clicks: tuple[UrlClickEvidence, ...] = ()
    emails: tuple[EmailEvidence, ...] = ()


# -- what the attacker did next (follow-on activity of high findings) --------


class TouchedArea(Model):
    """Graph requests of the stolen token that touched one area."""

    # mail, files, directory or other
    area: str
    requests: int
    methods: tuple[str, ...] = ()
    first: UtcDatetime | None = None
    last: UtcDatetime | None = None
    ip_addresses: tuple[str, ...] = ()
    # A few "METHOD /path" examples.
    samples: tuple[str, ...] = ()


class SessionActivity(Model):
    """Non-interactive sign-ins of the same session after the phishing sign-in."""

    sign_ins: int
    apps: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()
    first: UtcDatetime | None = None
    last: UtcDatetime | None = None


class FollowOnActivity(Model):
    """What the token of a high finding was used for, from the sign-in until the run."""

    since: UtcDatetime
    until: UtcDatetime
    graph_activity: tuple[TouchedArea, ...] = ()
    session: SessionActivity | None = None
    # False when a follow-on query failed or came back partial: absence of
    # activity then proves nothing.
    complete: bool = True
    notes: tuple[str, ...] = ()

    @property
    def touched(self) -> tuple[str, ...]:
        return tuple(area.area for area in self.graph_activity)


# -- what scoring decides -----------------------------------------------------


class Reason(Model):
    """One signal that fired: its weight, and a sentence a person can read."""

    signal: str
    weight: int
    detail: str


class Finding(Model):
    """One device code authentication of one user, scored with its reasons.

    ``sign_ins`` are the rows of the same flow (an interrupt and its success,
    the token redemptions that follow); the first is the one that was scored.
    """

    id: str
    user_principal_name: str
    user_id: str
    sign_in_time: UtcDatetime
    score: int = Field(ge=0, le=100)
    tier: Tier
    reasons: tuple[Reason, ...]
    evidence: Evidence
    sign_ins: tuple[SignIn, ...]
    baseline: Baseline | None = None
    is_guest: bool = False
    allowlisted: bool = False
    follow_on: FollowOnActivity | None = None

    @property
    def primary(self) -> SignIn:
        return self.sign_ins[0]


# -- what planning decides ----------------------------------------------------


class ActionKind(StrEnum):
    REVOKE_SESSIONS = "revoke_sessions"
    DISABLE_ACCOUNT = "disable_account"
    CONFIRM_COMPROMISED = "confirm_compromised"
    COMMENT_ON_INCIDENT = "comment_on_incident"


class ServiceRequest(Model):
    """An HTTP request exactly as tokenward would send it, without credentials."""

    service: Literal["graph", "sentinel"]
    method: Literal["GET", "POST", "PATCH", "PUT"]
    path: str
    body: dict[str, Any] | None = None


class Target(Model):
    """The user an action is about; ``user_id`` is empty until resolved."""

    user_principal_name: str
    user_id: str = ""

    @property
    def label(self) -> str:
        return self.user_principal_name or self.user_id


class Gate(StrEnum):
    """How far an action may go without a person."""

    # May run in auto mode without approval.
    UNATTENDED = "unattended"
    # Waits for a named approver in every mode that executes.
    APPROVAL = "approval"
    # Never runs; kept in the plan so the report says why.
    BLOCKED = "blocked"


class GuardrailDecision(Model):
    guardrail: str
    gate: Gate
    detail: str


class PlannedAction(Model):
    id: str
    action: ActionKind
    targets: tuple[Target, ...]
    finding_ids: tuple[str, ...]
    tier: Tier
    gate: Gate
    request: ServiceRequest
    decisions: tuple[GuardrailDecision, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def target(self) -> Target:
        return self.targets[0]


class Plan(Model):
    id: str
    run_id: str
    created_at: UtcDatetime
    actions: tuple[PlannedAction, ...]
    # sha256 over the actions' canonical JSON: an approval binds to exactly this.
    content_hash: str


class ActionStatus(StrEnum):
    # dry-run: the request was built and shown, nothing was sent.
    WOULD_SEND = "would_send"
    # waits for an approver.
    AWAITING_APPROVAL = "awaiting_approval"
    BLOCKED = "blocked"
    SKIPPED = "skipped"
    SUCCEEDED = "succeeded"
    # 2xx, but the service did not confirm the change (revoke ``value: false``).
    UNCONFIRMED = "unconfirmed"
    # succeeded, but it does not contain the account (a guest's home-tenant tokens).
    INEFFECTIVE = "ineffective"
    FAILED = "failed"
    # the outcome is not known (a crash or timeout after the request went out).
    UNKNOWN = "unknown"


class Problem(StrEnum):
    """Why an action did not take effect, in words an escalation can route on."""

    # 401/403: the app lacks a permission or role for this target (an admin).
    FAILED_PERMISSION = "failed_permission"
    # 400 on a user synced from on-premises: the change belongs in AD DS.
    REQUIRES_ONPREM = "requires_onprem"
    NOT_FOUND = "not_found"
    BAD_REQUEST = "bad_request"
    # 429 past the retry budget, or a Retry-After longer than retry.wait_max.
    THROTTLED = "throttled"
    # 5xx, timeouts, dropped connections past the retry budget.
    TRANSIENT = "transient"
    # 2xx, but the service or the read-back does not show the change.
    NOT_VERIFIED = "not_verified"
    # A revoke of a guest: their tokens come from the home tenant.
    GUEST_NOT_CONTAINED = "guest_not_contained"


class ActionResult(Model):
    action_id: str
    status: ActionStatus
    detail: str = ""
    http_status: int | None = None
    error_code: str | None = None
    request_id: str | None = None
    attempts: int = 0
    duration_ms: int | None = None
    containment_effective: bool | None = None
    # -- set by the Graph responder and the verification after it ------------
    problem: Problem | None = None
    # A person must look: the action failed, was not confirmed, or cannot contain.
    escalate: bool = False
    client_request_id: str | None = None
    error_message: str | None = None
    # not_found, auth, bad_request, throttled, transient, timeout (B14).
    error_class: str | None = None
    # The read-back after acting showed the change (None: not read back).
    verified: bool | None = None
    # The object id the action was sent for, when it was resolved from a UPN.
    user_id: str | None = None


class DirectoryUser(Model):
    """What Microsoft Graph says about a user now, read with ``$select``."""

    # The UPN or object id the user was asked for.
    key: str
    id: str = ""
    user_principal_name: str = ""
    account_enabled: bool | None = None
    user_type: str = ""
    on_premises_sync_enabled: bool | None = None
    sign_in_sessions_valid_from: UtcDatetime | None = None
    # Directory roles the user holds (display names and role template ids).
    roles: tuple[str, ...] = ()
    # False when the role lookup failed: privilege cannot be ruled out.
    roles_known: bool = False
    # How the user was found: "object_id", "upn", "email->proxyAddresses->objectId".
    resolved_by: str = ""
    # Why the user could not be read (not found, permission, throttled), if so.
    error: str | None = None
    error_class: str | None = None

    @property
    def found(self) -> bool:
        return bool(self.id) and self.error is None

    @property
    def is_guest(self) -> bool:
        return self.user_type.lower() == "guest" or "#ext#" in self.user_principal_name.lower()


class Containment(StrEnum):
    """What a run's actions achieved, over every user it acted on."""

    CONTAINED = "contained"
    PARTIALLY_CONTAINED = "partially contained"
    NOT_CONTAINED = "not contained"
    # Nothing was sent: dry-run, waiting for approval, or nothing to do.
    NOT_ATTEMPTED = "not attempted"


class UserContainment(Model):
    """One user's final state: each step's status and whether access is cut."""

    user: str
    user_id: str = ""
    steps: dict[str, str] = Field(default_factory=dict)
    state: Containment
    escalate: bool = False
    notes: tuple[str, ...] = ()


# -- what a run reports -------------------------------------------------------


class RunStatus(StrEnum):
    COMPLETE = "complete"
    # some evidence did not arrive whole; no high-tier action runs unattended.
    PARTIAL = "partial"
    FAILED = "failed"


class QueryRecord(Model):
    name: str
    tables: tuple[str, ...]
    text: str
    row_count: int
    status: RunStatus
    duration_ms: int
    error: str | None = None
    # Where it ran, in which step (hunt, correlate, follow_on), and anything a
    # reader of a partial or re-run result needs to know.
    source: str = ""
    phase: str = ""
    detail: str | None = None


class Window(Model):
    start: UtcDatetime
    end: UtcDatetime


class ActionReport(Model):
    """One action as a report shows it: what, on whom, the request, what happened."""

    id: str
    action: ActionKind
    # The user's UPN, several joined for one call with many, or "incident".
    target: str
    targets: tuple[Target, ...]
    status: ActionStatus
    gate: Gate
    request: ServiceRequest
    decisions: tuple[GuardrailDecision, ...] = ()
    notes: tuple[str, ...] = ()
    detail: str = ""
    http_status: int | None = None
    error_code: str | None = None
    request_id: str | None = None
    attempts: int = 0
    containment_effective: bool | None = None
    problem: Problem | None = None
    escalate: bool = False
    verified: bool | None = None


class RunReport(Model):
    """Everything one run found, decided and did: the JSON report's schema."""

    schema_version: Literal["1"] = "1"
    run_id: str
    playbook: str
    mode: Mode
    trigger: str
    status: RunStatus
    error: str | None = None
    started_at: UtcDatetime
    ended_at: UtcDatetime
    now: UtcDatetime
    window: Window
    users: tuple[str, ...] = ()
    source: str
    queries: tuple[QueryRecord, ...] = ()
    warnings: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    plan_id: str | None = None
    plan_hash: str | None = None
    actions: tuple[ActionReport, ...] = ()
    notes: tuple[str, ...] = ()
    # What the executed actions achieved, per user and overall.
    containment: Containment = Containment.NOT_ATTEMPTED
    users_contained: tuple[UserContainment, ...] = ()

    def tier_counts(self) -> dict[str, int]:
        counts = {tier.value: 0 for tier in Tier}
        for finding in self.findings:
            counts[finding.tier.value] += 1
        return counts
