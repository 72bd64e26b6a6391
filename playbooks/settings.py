"""Typed settings from ``config/tokenward.toml`` and the environment.

Settings are built explicitly (never at import time) and validated whole:
an unknown key, a bad value or two settings that contradict each other stop
the process before anything runs, with the file and key in the message.
Secrets come from the environment only and are held as ``SecretStr``.

Where the settings come from, first match wins: ``--config FILE``, the
``TOKENWARD_CONFIG`` variable, ``./config/tokenward.toml``, built-in defaults
(which are exactly what the shipped ``config/tokenward.toml`` says).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from playbooks.clouds import (
    AzureEndpoints,
    Cloud,
    EndpointConflict,
    derive_endpoints,
    parse_cloud,
)
from playbooks.errors import Location, SettingsError
from playbooks.identities import is_guid, is_upn
from playbooks.kql import kql_identifier
from playbooks.yamlsource import describe, dotted

DEFAULT_PATH = Path("config/tokenward.toml")
ENV_CONFIG = "TOKENWARD_CONFIG"
ENV_AUDIT_KEY = "TOKENWARD_AUDIT_HMAC_KEY"
# As long as HMAC-SHA256's output (RFC 2104): a shorter key is easier to guess
# than the chain's hashes are to forge.
MIN_AUDIT_KEY_BYTES = 32
ENV_CLIENT_SECRET = "TOKENWARD_CLIENT_SECRET"
ENV_CERTIFICATE_PASSWORD = "TOKENWARD_CLIENT_CERTIFICATE_PASSWORD"
# Any of 1/true/yes/on turns the kill switch on, whatever the file says.
ENV_KILL_SWITCH = "TOKENWARD_KILL_SWITCH"
ENV_WEBHOOK_SECRET = "TOKENWARD_WEBHOOK_HMAC_SECRET"
# Set by the AKS workload identity webhook; used when the settings leave them out.
ENV_WORKLOAD_IDENTITY = {
    "tenant_id": "AZURE_TENANT_ID",
    "client_id": "AZURE_CLIENT_ID",
    "federated_token_file": "AZURE_FEDERATED_TOKEN_FILE",
}
# Secrets: settings key under [azure.credential] -> the only variable it may come from.
_CREDENTIAL_SECRETS = {
    "client_secret": ENV_CLIENT_SECRET,
    "certificate_password": ENV_CERTIFICATE_PASSWORD,
}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_network(item) for item in value)
    return value


#: Addresses or CIDR ranges, given as text in files.
Networks = Annotated[tuple[Network, ...], BeforeValidator(_networks)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSettings(Section):
    url: str = Field(
        default="sqlite:///tokenward.db",
        description="SQLAlchemy URL of the state database (audit, runs, plans).",
    )


class AuditSettings(Section):
    hmac_key: SecretStr | None = Field(
        default=None,
        description=f"Key for HMAC-chained audit records; from {ENV_AUDIT_KEY} only.",
    )


class SanctionedUse(Section):
    """Device code use the SOC has approved: an app, by whom, from where."""

    name: str = Field(min_length=1)
    users: tuple[str, ...] = ()
    apps: tuple[str, ...] = ()
    ip_ranges: Networks = ()

    @model_validator(mode="after")
    def _not_by_app_alone(self) -> SanctionedUse:
        # Attack kits use the same first-party apps (Azure CLI, the broker):
        # an app alone never makes a sign-in sanctioned.
        if not self.users and not self.ip_ranges:
            raise ValueError(
                f"sanctioned use {self.name!r} needs users or ip_ranges; "
                "an app alone is what attackers use too"
            )
        return self


class GuardrailSettings(Section):
    protected_accounts: tuple[str, ...] = Field(
        default=(),
        description="UPNs or object ids never acted on (break-glass, service accounts).",
    )
    max_users_per_run: int = Field(
        default=10,
        ge=1,
        description="Above this many users in one run, every action waits for approval.",
    )
    sanctioned_use: tuple[SanctionedUse, ...] = ()
    # -- enforced again when actions execute ----------------------------------
    kill_switch: bool = Field(
        default=False,
        description=f"Nothing is written anywhere while on (also {ENV_KILL_SWITCH}=1).",
    )
    max_users_per_hour: int = Field(
        default=20,
        ge=1,
        description="Users written to in any hour; above it, unattended actions wait for approval.",
    )
    revoke_cooldown_minutes: int = Field(
        default=60,
        ge=0,
        description="After a revoke, another unattended revoke of the user waits for approval.",
    )
    privileged_roles: tuple[str, ...] = Field(
        default=("*",),
        description="Directory roles (names or template ids) whose holders need approval; * is any.",
    )

    @field_validator("protected_accounts")
    @classmethod
    def _identities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not (is_upn(item) or is_guid(item)):
                raise ValueError(f"{item!r} is neither a UPN nor an object id")
        return tuple(item.lower() for item in value)


class ThreatIntelSettings(Section):
    ip_ranges: Networks = Field(
        default=(), description="Addresses or CIDR ranges treated as hostile."
    )
    files: tuple[Path, ...] = Field(
        default=(), description="Files with one address or range per line (# comments)."
    )


class HuntSettings(Section):
    allowed_countries: tuple[str, ...] = Field(
        default=(),
        description="Two-letter countries sign-ins are expected from; empty: not checked.",
    )
    default_since: str = Field(default="24h", description="Window of a hunt given no times.")
    split_depth: int = Field(
        default=1,
        ge=0,
        le=3,
        description="Times a partial or timed-out query is re-run over halves of its window.",
    )

    @field_validator("default_since")
    @classmethod
    def _since(cls, value: str) -> str:
        from playbooks.times import parse_duration

        parse_duration(value)
        return value

    @field_validator("allowed_countries")
    @classmethod
    def _countries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not re.fullmatch(r"[A-Za-z]{2}", item):
                raise ValueError(f"{item!r} is not a two-letter country code")
        return tuple(item.upper() for item in value)


class PlaybookSettings(Section):
    path: Path | None = Field(
        default=None, description="A playbook YAML to use instead of the bundled one."
    )


# -- Azure: clouds, credentials and the services tokenward calls ----------------


class CredentialKind(StrEnum):
    """How tokenward proves who it is; chosen explicitly, never by a fallback chain."""

    MANAGED_IDENTITY = "managed_identity"
    WORKLOAD_IDENTITY = "workload_identity"
    CLIENT_CERTIFICATE = "client_certificate"
    CLIENT_SECRET = "client_secret"


class CredentialSettings(Section):
    kind: CredentialKind | None = Field(
        default=None,
        description="managed_identity, workload_identity, client_certificate or client_secret.",
    )
    client_id: str = Field(
        default="",
        description="The app registration's client id; for a managed identity, the "
        "user-assigned identity's client id (empty: the system-assigned one).",
    )
    certificate_path: Path | None = Field(
        default=None, description="PEM or PKCS#12 file with the certificate and its private key."
    )
    send_certificate_chain: bool = Field(
        default=False, description="Send the certificate chain (subject name/issuer auth)."
    )
    federated_token_file: Path | None = Field(
        default=None,
        description="Workload identity token file (default: $AZURE_FEDERATED_TOKEN_FILE).",
    )
    client_secret: SecretStr | None = Field(
        default=None, description=f"From {ENV_CLIENT_SECRET} only."
    )
    certificate_password: SecretStr | None = Field(
        default=None, description=f"From {ENV_CERTIFICATE_PASSWORD} only."
    )

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        if value and not is_guid(value):
            raise ValueError(f"client_id {value!r} is not a GUID")
        return value.lower()


def _cloud(value: Any) -> Any:
    return parse_cloud(value) if isinstance(value, str) else value


class AzureSettings(Section):
    cloud: Annotated[Cloud, BeforeValidator(_cloud)] = Field(
        default=Cloud.PUBLIC, description="The cloud every endpoint and scope is derived from."
    )
    tenant_id: str = Field(
        default="", description="The Entra tenant id (GUID) or its primary domain."
    )
    authority_host: str = Field(default="", description="Override of the sign-in authority.")
    graph_endpoint: str = Field(default="", description="Override of the Microsoft Graph host.")
    log_analytics_endpoint: str = Field(
        default="", description="Override of the Log Analytics host."
    )
    arm_endpoint: str = Field(default="", description="Override of the Resource Manager host.")
    ca_bundle: Path | None = Field(
        default=None, description="PEM file of CAs trusted instead of the system's."
    )
    connect_timeout: float = Field(default=10, gt=0, le=120)
    read_timeout: float = Field(default=300, gt=0, le=900)
    credential: CredentialSettings = CredentialSettings()

    @field_validator("tenant_id")
    @classmethod
    def _tenant(cls, value: str) -> str:
        if value and not (is_guid(value) or re.fullmatch(r"[A-Za-z0-9.-]+\.[A-Za-z]{2,}", value)):
            raise ValueError(f"tenant_id {value!r} is neither a GUID nor a domain name")
        return value.lower()

    @model_validator(mode="after")
    def _consistent(self) -> AzureSettings:
        self.endpoints()
        return self

    def endpoints(self) -> AzureEndpoints:
        """The cloud's endpoints and scopes with the overrides applied."""
        return derive_endpoints(
            self.cloud,
            authority_host=self.authority_host,
            graph_endpoint=self.graph_endpoint,
            log_analytics_endpoint=self.log_analytics_endpoint,
            arm_endpoint=self.arm_endpoint,
        )


class LogAnalyticsSettings(Section):
    workspace_id: str = Field(default="", description="The Sentinel workspace's id (a GUID).")
    server_timeout: int = Field(
        default=180,
        ge=1,
        le=600,
        description="Seconds the service may run one query (Prefer: wait).",
    )

    @field_validator("workspace_id")
    @classmethod
    def _workspace(cls, value: str) -> str:
        if value and not is_guid(value):
            raise ValueError(
                f"workspace_id {value!r} is not a GUID (the workspace id, not its name)"
            )
        return value.lower()


class DefenderSettings(Section):
    concurrency: int = Field(
        default=4, ge=1, le=10, description="Advanced hunting queries in flight at once."
    )


class SourceKind(StrEnum):
    """Where a table's rows are read live."""

    LOG_ANALYTICS = "log_analytics"
    DEFENDER = "defender"


class SourceSettings(Section):
    default: SourceKind = Field(
        default=SourceKind.LOG_ANALYTICS, description="Where tables not listed below are read."
    )
    tables: dict[str, SourceKind] = Field(
        default_factory=dict, description='Table name to source, e.g. EmailEvents = "defender".'
    )

    @field_validator("tables")
    @classmethod
    def _table_names(cls, value: dict[str, SourceKind]) -> dict[str, SourceKind]:
        for name in value:
            kql_identifier(name)
        return value

    def source_for(self, table: str) -> SourceKind:
        return self.tables.get(table, self.default)


class RetrySettings(Section):
    max_attempts: int = Field(
        default=4, ge=1, le=10, description="Attempts per call, the first included."
    )
    wait_initial: float = Field(
        default=0.5,
        ge=0,
        le=60,
        description="First backoff in seconds when no Retry-After is sent.",
    )
    wait_max: float = Field(
        default=30,
        ge=0,
        le=600,
        description="Longest single wait; a longer Retry-After stops the call.",
    )
    deadline: float = Field(
        default=120, gt=0, le=3600, description="Seconds one call may take, waits included."
    )

    @model_validator(mode="after")
    def _ordered(self) -> RetrySettings:
        if self.wait_initial > self.wait_max:
            raise ValueError(
                f"wait_initial ({self.wait_initial}) is above wait_max ({self.wait_max})"
            )
        if self.wait_max > self.deadline:
            raise ValueError(f"wait_max ({self.wait_max}) is above the deadline ({self.deadline})")
        return self


class GraphSettings(Section):
    """How containment calls are spread over Microsoft Graph."""

    batch_size: int = Field(
        default=20, ge=1, le=20, description="Calls per $batch request (Graph allows 20)."
    )
    concurrency: int = Field(
        default=4, ge=1, le=20, description="Graph requests in flight at once."
    )
    verify_delay: float = Field(
        default=2.0,
        ge=0,
        le=60,
        description="Seconds before reading a user back again when the first read-back "
        "does not show the change yet.",
    )
    identity_protection_wait: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="Least wait before retrying confirmCompromised (1 request/s per tenant).",
    )


class ApprovalSettings(Section):
    expire_after_hours: float = Field(
        default=24,
        gt=0,
        le=24 * 30,
        description="A stored plan can be approved and executed this long.",
    )
    require_distinct_approver: bool = Field(
        default=True, description="The approver must not be the person who requested the plan."
    )


# -- the webhook service: listening, authenticating, the inbox, write-back -------


class AuthScheme(StrEnum):
    """How a caller of the service proves who it is."""

    # An Entra ID access token (the Logic App's managed identity, an approver).
    BEARER = "bearer"
    # An HMAC-SHA256 signature over the timestamp and raw body (other senders).
    HMAC = "hmac"


class ServerSettings(Section):
    host: str = Field(default="127.0.0.1", description="Address uvicorn listens on.")
    port: int = Field(default=8443, ge=1, le=65535, description="Port uvicorn listens on.")
    certfile: Path | None = Field(default=None, description="TLS certificate chain (PEM).")
    keyfile: Path | None = Field(default=None, description="TLS private key (PEM).")
    tls_offloaded: bool = Field(
        default=False,
        description="TLS ends at a proxy in front of tokenward; plain HTTP may then "
        "listen on a non-loopback address.",
    )
    forwarded_allow_ips: tuple[str, ...] = Field(
        default=(), description="Proxies whose X-Forwarded-* headers are trusted."
    )

    @model_validator(mode="after")
    def _tls(self) -> ServerSettings:
        if (self.certfile is None) != (self.keyfile is None):
            raise _KeyedError(
                "server.keyfile", "certfile and keyfile go together: give both or neither"
            )
        loopback = self.host in ("localhost", "::1") or self.host.startswith("127.")
        if self.certfile is None and not loopback and not self.tls_offloaded:
            raise _KeyedError(
                "server.host",
                f"tokenward would serve plain HTTP on {self.host}: give server.certfile "
                "and server.keyfile, or set server.tls_offloaded when a proxy ends TLS",
            )
        return self


class WebhookSettings(Section):
    auth: tuple[AuthScheme, ...] = Field(
        default=(AuthScheme.BEARER,),
        description="Accepted schemes: bearer (Entra ID tokens) and/or hmac.",
    )
    audiences: tuple[str, ...] = Field(
        default=(), description="Token audiences accepted (tokenward's Application ID URI)."
    )
    issuers: tuple[str, ...] = Field(
        default=(),
        description="Token issuers accepted; empty: the tenant's v1 and v2 issuers.",
    )
    allowed_principals: tuple[str, ...] = Field(
        default=(),
        description="Object ids (or app ids) allowed to post incidents, e.g. the Logic "
        "App's managed identity.",
    )
    approvers: tuple[str, ...] = Field(
        default=(), description="Object ids of the people who may approve plans."
    )
    approver_role: str = Field(
        default="", description="An app role whose holders may approve plans (roles claim)."
    )
    hmac_secret: SecretStr | None = Field(
        default=None, description=f"Shared HMAC secret; from {ENV_WEBHOOK_SECRET} only."
    )
    replay_window: int = Field(
        default=300, ge=10, le=3600, description="Seconds a signed request stays valid."
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, le=16 * 1_048_576, description="Largest body accepted."
    )
    mode: str = Field(default="dry-run", description="Mode of webhook-triggered runs.")

    @field_validator("allowed_principals", "approvers")
    @classmethod
    def _object_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not is_guid(item):
                raise ValueError(f"{item!r} is not an object id (a GUID)")
        return tuple(item.lower() for item in value)

    @field_validator("mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        if value not in ("dry-run", "approve", "auto"):
            raise ValueError(f"mode {value!r} is not dry-run, approve or auto")
        return value

    @model_validator(mode="after")
    def _schemes(self) -> WebhookSettings:
        if not self.auth:
            raise _KeyedError("webhook.auth", "at least one scheme (bearer, hmac) is needed")
        return self


class InboxSettings(Section):
    worker: bool = Field(
        default=True, description="tokenward serve starts a worker process for the inbox."
    )
    concurrency: int = Field(default=2, ge=1, le=16, description="Runs at once per worker.")
    lease_seconds: float = Field(
        default=60,
        ge=1,
        le=3600,
        description="How long a claimed delivery stays with its worker without a heartbeat.",
    )
    poll_seconds: float = Field(default=1.0, gt=0, le=60, description="Idle wait between polls.")
    max_attempts: int = Field(
        default=3, ge=1, le=20, description="Attempts before a delivery is set aside as failed."
    )
    retry_seconds: float = Field(
        default=60, ge=0, le=3600, description="Wait before a failed run is tried again."
    )


class SentinelSettings(Section):
    api_version: str = Field(
        default="2025-09-01", description="api-version of the Sentinel incidents REST API."
    )
    write_back: bool = Field(
        default=True, description="Comment on and label the incident after each run."
    )
    label_prefix: str = Field(
        default="tokenward:", description="Prefix of the labels tokenward owns."
    )
    allowed_workspaces: tuple[str, ...] = Field(
        default=(),
        description="Workspace resource ids whose incidents are accepted; empty: any.",
    )
    window_before: str = Field(
        default="2h", description="How far before the first activity the hunt reaches."
    )
    window_after: str = Field(
        default="30m", description="How far after the last activity the hunt reaches."
    )
    rehunt_after: tuple[str, ...] = Field(
        default=("10m", "25m"),
        description="When a run finds no device code sign-in, hunt again this long after "
        "the delivery (sign-in logs arrive late); empty: never.",
    )

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", value):
            raise ValueError(f"api_version {value!r} is not like 2025-09-01")
        return value

    @field_validator("label_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,30}[:/-]", value):
            raise ValueError(f"label_prefix {value!r} should look like tokenward:")
        return value

    @field_validator("window_before", "window_after")
    @classmethod
    def _duration(cls, value: str) -> str:
        from playbooks.times import parse_duration

        parse_duration(value)
        return value

    @field_validator("rehunt_after")
    @classmethod
    def _rehunts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from playbooks.times import parse_duration

        delays = [parse_duration(item) for item in value]
        if delays != sorted(delays) or len(set(delays)) != len(delays):
            raise ValueError('rehunt_after must grow: e.g. ["10m", "25m"]')
        return value

    @field_validator("allowed_workspaces")
    @classmethod
    def _workspaces(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not re.fullmatch(
                r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
                r"Microsoft\.OperationalInsights/workspaces/[^/]+",
                item,
                re.IGNORECASE,
            ):
                raise ValueError(f"{item!r} is not a workspace resource id")
        return tuple(item.lower() for item in value)


class ScheduleSettings(Section):
    """What tokenward does unprompted: the scheduled hunt and the reconciliation."""

    hunt: bool = Field(
        default=False, description="Hunt every user on a schedule (serve and watch)."
    )
    hunt_every_seconds: float = Field(
        default=300, ge=0.1, le=86_400, description="Seconds between scheduled hunts."
    )
    max_ingestion_delay: str = Field(
        default="20m",
        description="How late a sign-in may reach the workspace; each window overlaps "
        "the last completed one by this much.",
    )
    first_window: str = Field(
        default="1h", description="How far back the first scheduled hunt reaches."
    )
    max_window: str = Field(
        default="24h",
        description="The longest window one cycle hunts; a longer gap is caught up "
        "over several cycles.",
    )
    mode: str = Field(default="dry-run", description="Mode of scheduled hunts.")
    reconcile: bool = Field(
        default=False,
        description="List the analytic rules' incidents and run those the webhook never delivered.",
    )
    reconcile_every_seconds: float = Field(
        default=300, ge=0.1, le=86_400, description="Seconds between reconciliations."
    )
    reconcile_overlap: str = Field(
        default="10m",
        description="Each listing reaches this far before the newest incident seen.",
    )
    reconcile_first_window: str = Field(
        default="24h", description="How far back the first reconciliation lists."
    )
    analytic_rules: tuple[str, ...] = Field(
        default=(),
        description="Analytic rule ids (GUIDs or resource ids) whose incidents are reconciled.",
    )
    workspaces: tuple[str, ...] = Field(
        default=(), description="Workspace resource ids whose incidents are listed."
    )
    page_size: int = Field(
        default=50, ge=1, le=1000, description="Incidents asked for per page ($top)."
    )
    jitter_seconds: float = Field(
        default=10, ge=0, le=3600, description="Random delay added to each job's start."
    )

    @field_validator("mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        if value not in ("dry-run", "approve", "auto"):
            raise ValueError(f"mode {value!r} is not dry-run, approve or auto")
        return value

    @field_validator(
        "max_ingestion_delay",
        "first_window",
        "max_window",
        "reconcile_overlap",
        "reconcile_first_window",
    )
    @classmethod
    def _duration(cls, value: str) -> str:
        from playbooks.times import parse_duration

        parse_duration(value)
        return value

    @field_validator("analytic_rules")
    @classmethod
    def _rules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not (is_guid(item) or "/alertrules/" in item.lower()):
                raise ValueError(
                    f"{item!r} is neither a rule id (GUID) nor an alert rule resource id"
                )
        return tuple(item.lower() for item in value)

    @field_validator("workspaces")
    @classmethod
    def _workspaces(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not _WORKSPACE_ID.fullmatch(item):
                raise ValueError(f"{item!r} is not a workspace resource id")
        return value

    @model_validator(mode="after")
    def _windows(self) -> ScheduleSettings:
        from playbooks.times import parse_duration

        if parse_duration(self.max_window) <= parse_duration(self.max_ingestion_delay):
            raise _KeyedError(
                "schedule.max_window",
                f"max_window ({self.max_window}) must be longer than "
                f"max_ingestion_delay ({self.max_ingestion_delay}), or a cycle could "
                "never move past the overlap",
            )
        if self.reconcile and not self.analytic_rules:
            raise _KeyedError(
                "schedule.analytic_rules",
                "reconcile is on but analytic_rules is empty: name the rules whose "
                "incidents the webhook should deliver (deploy/sentinel's rule id)",
            )
        if self.reconcile and not self.workspaces:
            raise _KeyedError(
                "schedule.workspaces",
                "reconcile is on but workspaces is empty: name the Sentinel "
                "workspace resource ids to list incidents from",
            )
        return self


class MetricsSettings(Section):
    enabled: bool = Field(
        default=True, description="Serve Prometheus metrics (/metrics; watch: a port)."
    )
    host: str = Field(default="127.0.0.1", description="Where tokenward watch serves its metrics.")
    port: int = Field(
        default=9464, ge=1, le=65535, description="Port of tokenward watch's metrics."
    )


_WORKSPACE_ID = re.compile(
    r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    r"Microsoft\.OperationalInsights/workspaces/[^/]+",
    re.IGNORECASE,
)


class Settings(Section):
    store: StoreSettings = StoreSettings()
    audit: AuditSettings = AuditSettings()
    guardrails: GuardrailSettings = GuardrailSettings()
    threat_intel: ThreatIntelSettings = ThreatIntelSettings()
    hunt: HuntSettings = HuntSettings()
    playbook: PlaybookSettings = PlaybookSettings()
    azure: AzureSettings = AzureSettings()
    log_analytics: LogAnalyticsSettings = LogAnalyticsSettings()
    defender: DefenderSettings = DefenderSettings()
    sources: SourceSettings = SourceSettings()
    retry: RetrySettings = RetrySettings()
    graph: GraphSettings = GraphSettings()
    approvals: ApprovalSettings = ApprovalSettings()
    # The webhook service (tokenward serve).
    server: ServerSettings = ServerSettings()
    webhook: WebhookSettings = WebhookSettings()
    inbox: InboxSettings = InboxSettings()
    sentinel: SentinelSettings = SentinelSettings()
    # What tokenward does unprompted (serve and watch), and what it reports.
    schedule: ScheduleSettings = ScheduleSettings()
    metrics: MetricsSettings = MetricsSettings()

    @model_validator(mode="after")
    def _timeouts(self) -> Settings:
        # B18: a client that stops reading first makes the service's work wasted,
        # and a retry then starts the same heavy query again.
        if self.log_analytics.server_timeout >= self.azure.read_timeout:
            raise _KeyedError(
                "log_analytics.server_timeout",
                f"server_timeout ({self.log_analytics.server_timeout} s) must be below "
                f"azure.read_timeout ({self.azure.read_timeout:g} s), or the client gives "
                "up while the workspace is still running the query",
            )
        return self

    def threat_networks(self) -> tuple[Network, ...]:
        """The configured hostile ranges, with the listed files read."""
        networks = list(self.threat_intel.ip_ranges)
        for path in self.threat_intel.files:
            networks.extend(read_network_file(path))
        return tuple(networks)


def load_settings(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from *path*, ``$TOKENWARD_CONFIG``, ``./config/tokenward.toml`` or defaults."""
    env = os.environ if environ is None else environ
    chosen = path or (Path(env[ENV_CONFIG]) if env.get(ENV_CONFIG) else None)
    if chosen is None and DEFAULT_PATH.is_file():
        chosen = DEFAULT_PATH
    data: dict[str, Any] = {}
    if chosen is not None:
        data = _read_toml(chosen)
    return settings_from_dict(data, file=str(chosen) if chosen else None, environ=env)


def settings_from_dict(
    data: Mapping[str, Any],
    *,
    file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    env = {} if environ is None else environ
    merged: dict[str, Any] = {key: value for key, value in data.items()}
    if env.get(ENV_AUDIT_KEY):
        merged["audit"] = {**merged.get("audit", {}), "hmac_key": _audit_key(env[ENV_AUDIT_KEY])}
    elif "hmac_key" in merged.get("audit", {}):
        raise SettingsError(
            f"audit.hmac_key belongs in the {ENV_AUDIT_KEY} variable, not in a file",
            source=Location(file=file, key="audit.hmac_key"),
        )
    merged = _with_credential_environment(merged, env, file=file)
    if env.get(ENV_KILL_SWITCH, "").strip().lower() in ("1", "true", "yes", "on"):
        merged["guardrails"] = {**merged.get("guardrails", {}), "kill_switch": True}
    merged = _with_webhook_secret(merged, env, file=file)
    base = Path(file).parent if file else Path.cwd()
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as failure:
        raise _settings_error(failure, file) from None
    files = tuple(
        item if item.is_absolute() else base / item for item in settings.threat_intel.files
    )
    threat_intel = settings.threat_intel.model_copy(update={"files": files})
    for item in files:
        read_network_file(item)
    return settings.model_copy(
        update={
            "threat_intel": threat_intel,
            "azure": _azure_paths(settings.azure, base),
            "server": _server_paths(settings.server, base),
        }
    )


class _KeyedError(ValueError):
    """A whole-settings check that knows which key to blame."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _settings_error(failure: ValidationError, file: str | None) -> SettingsError:
    first = failure.errors()[0]
    key = dotted(tuple(first["loc"]))
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, EndpointConflict | _KeyedError):
        prefix = "azure." if isinstance(cause, EndpointConflict) else ""
        return SettingsError(str(cause), source=Location(file=file, key=prefix + cause.key))
    return SettingsError(describe(first), source=Location(file=file, key=key or None))


def _audit_key(key: str) -> str:
    """The audit key from its variable, refused when too short to be a key."""
    size = len(key.encode())
    if size < MIN_AUDIT_KEY_BYTES:
        raise SettingsError(
            f"{ENV_AUDIT_KEY} is {size} bytes long: an audit key needs at least "
            f"{MIN_AUDIT_KEY_BYTES} (e.g. the output of `openssl rand -hex 32`)"
        )
    return key


def _with_credential_environment(
    data: dict[str, Any], env: Mapping[str, str], *, file: str | None
) -> dict[str, Any]:
    """Secrets from their variables (refused in files); workload identity defaults."""
    azure = dict(data.get("azure") or {})
    credential = dict(azure.get("credential") or {})
    for key, variable in _CREDENTIAL_SECRETS.items():
        if key in credential:
            raise SettingsError(
                f"azure.credential.{key} belongs in the {variable} variable, not in a file",
                source=Location(file=file, key=f"azure.credential.{key}"),
            )
        if env.get(variable):
            credential[key] = env[variable]
    if credential.get("kind") == CredentialKind.WORKLOAD_IDENTITY.value:
        for key, variable in ENV_WORKLOAD_IDENTITY.items():
            target = credential if key != "tenant_id" else azure
            if not target.get(key) and env.get(variable):
                target[key] = env[variable]
    if not credential and "credential" not in azure:
        return data
    azure["credential"] = credential
    return {**data, "azure": azure}


def _with_webhook_secret(
    data: dict[str, Any], env: Mapping[str, str], *, file: str | None
) -> dict[str, Any]:
    """The webhook's HMAC secret from its variable only (refused in files)."""
    webhook = dict(data.get("webhook") or {})
    if "hmac_secret" in webhook:
        raise SettingsError(
            f"webhook.hmac_secret belongs in the {ENV_WEBHOOK_SECRET} variable, not in a file",
            source=Location(file=file, key="webhook.hmac_secret"),
        )
    if not env.get(ENV_WEBHOOK_SECRET):
        return data
    webhook["hmac_secret"] = env[ENV_WEBHOOK_SECRET]
    return {**data, "webhook": webhook}


def _server_paths(server: ServerSettings, base: Path) -> ServerSettings:
    def resolved(path: Path | None) -> Path | None:
        return path if path is None or path.is_absolute() else base / path

    return server.model_copy(
        update={"certfile": resolved(server.certfile), "keyfile": resolved(server.keyfile)}
    )


def _azure_paths(azure: AzureSettings, base: Path) -> AzureSettings:
    """Relative file settings are relative to the settings file, as elsewhere."""

    def resolved(path: Path | None) -> Path | None:
        return path if path is None or path.is_absolute() else base / path

    credential = azure.credential.model_copy(
        update={
            "certificate_path": resolved(azure.credential.certificate_path),
            "federated_token_file": resolved(azure.credential.federated_token_file),
        }
    )
    return azure.model_copy(
        update={"ca_bundle": resolved(azure.ca_bundle), "credential": credential}
    )


def read_network_file(path: Path) -> list[Network]:
    """Addresses and ranges from a file, one per line; ``#`` starts a comment."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as failure:
        raise SettingsError(
            f"cannot read the file: {failure}", source=Location(file=str(path))
        ) from None
    networks = []
    for number, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            networks.append(_network(text))
        except ValueError:
            raise SettingsError(
                f"{text!r} is not an IP address or range",
                source=Location(file=str(path), line=number),
            ) from None
    return networks


def _network(value: Any) -> Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    return ipaddress.ip_network(str(value).strip(), strict=False)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError("no such settings file", source=Location(file=str(path))) from None
    except tomllib.TOMLDecodeError as failure:
        match = re.search(r"line (\d+)", str(failure))
        raise SettingsError(
            f"not valid TOML: {failure}",
            source=Location(file=str(path), line=int(match.group(1)) if match else None),
        ) from None
