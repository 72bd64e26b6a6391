"""The tables tokenward reads, with the column types Log Analytics gives them.

Every export shape is mapped onto these columns and cast to these types, so a
template runs against the same schema locally as in the workspace. Columns are
the ones the playbooks and an analyst's follow-up queries use; anything else in
an export is ignored.

The types are the workspace's, not a convenience: in
``AADNonInteractiveUserSignInLogs`` the detail columns are JSON *text*, as in
Log Analytics, so a template that forgets ``parse_json`` fails here as it
would in Sentinel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

#: Changes whenever a schema, a shape's mapping or a cast changes what a loaded
#: table holds; a cached load made under another version is not reused.
SCHEMA_VERSION = "2"


class Kind(StrEnum):
    """Log Analytics column types."""

    DATETIME = "datetime"
    STRING = "string"
    DYNAMIC = "dynamic"
    BOOL = "bool"
    INT = "int"
    LONG = "long"
    REAL = "real"

    @property
    def duckdb_type(self) -> str:
        return _DUCKDB_TYPES[self]


_DUCKDB_TYPES = {
    Kind.DATETIME: "TIMESTAMPTZ",
    Kind.STRING: "VARCHAR",
    Kind.DYNAMIC: "JSON",
    Kind.BOOL: "BOOLEAN",
    Kind.INT: "INTEGER",
    Kind.LONG: "BIGINT",
    Kind.REAL: "DOUBLE",
}


@dataclass(frozen=True)
class TableSchema:
    name: str
    columns: Mapping[str, Kind]
    # The column a time window applies to.
    time_column: str
    # Columns that, when an export lacks them, are filled from another column.
    fill_from: Mapping[str, str] = field(default_factory=dict)
    # Columns without which a hunt over this table cannot find what it looks for.
    required: tuple[str, ...] = ()
    # Columns that, when no record carries them, make the hunt blind (a warning).
    signals: tuple[str, ...] = ()
    # Columns that tell this table from the others when neither the file nor
    # its records name it (a CSV or JSON export of one table).
    identifying: tuple[str, ...] = ()


STR, DYN, TIME, BOOL, INT, LONG = (
    Kind.STRING,
    Kind.DYNAMIC,
    Kind.DATETIME,
    Kind.BOOL,
    Kind.INT,
    Kind.LONG,
)

_SIGN_IN_COMMON: dict[str, Kind] = {
    "TimeGenerated": TIME,
    "CreatedDateTime": TIME,
    "Id": STR,
    "OperationName": STR,
    "Category": STR,
    "TenantId": STR,
    "AADTenantId": STR,
    "HomeTenantId": STR,
    "ResourceTenantId": STR,
    "UserPrincipalName": STR,
    "UserId": STR,
    "UserDisplayName": STR,
    "UserType": STR,
    "AlternateSignInName": STR,
    "AppId": STR,
    "AppDisplayName": STR,
    "ResourceDisplayName": STR,
    "ResourceIdentity": STR,
    "ResourceServicePrincipalId": STR,
    "AuthenticationProtocol": STR,
    "OriginalTransferMethod": STR,
    "IncomingTokenType": STR,
    "AuthenticationRequirement": STR,
    "AuthenticationDetails": STR,
    "AuthenticationProcessingDetails": STR,
    "ClientAppUsed": STR,
    "IsInteractive": BOOL,
    "IsRisky": BOOL,
    "ResultType": STR,
    "ResultSignature": STR,
    "ResultDescription": STR,
    "IPAddress": STR,
    "AutonomousSystemNumber": STR,
    "Location": STR,
    "UserAgent": STR,
    "RiskLevelDuringSignIn": STR,
    "RiskLevelAggregated": STR,
    "RiskState": STR,
    "RiskDetail": STR,
    "RiskEventTypes": STR,
    "RiskEventTypes_V2": STR,
    "ConditionalAccessStatus": STR,
    "CorrelationId": STR,
    "OriginalRequestId": STR,
    "SessionId": STR,
    "UniqueTokenIdentifier": STR,
    "TokenIssuerType": STR,
    "CrossTenantAccessType": STR,
    "NetworkLocationDetails": STR,
    "DurationMs": LONG,
    "Type": STR,
}

_SIGN_IN_SIGNALS = ("AuthenticationProtocol", "OriginalTransferMethod")
_SIGN_IN_REQUIRED = ("TimeGenerated",)

SIGNIN_LOGS = TableSchema(
    name="SigninLogs",
    columns={
        **_SIGN_IN_COMMON,
        "DeviceDetail": DYN,
        "LocationDetails": DYN,
        "Status": DYN,
        "ConditionalAccessPolicies": DYN,
        "MfaDetail": DYN,
        "ProcessingTimeInMilliseconds": STR,
    },
    time_column="TimeGenerated",
    fill_from={"TimeGenerated": "CreatedDateTime", "CreatedDateTime": "TimeGenerated"},
    required=_SIGN_IN_REQUIRED,
    signals=_SIGN_IN_SIGNALS,
    # Only the processing-time column's name tells the two sign-in tables apart.
    identifying=("UserPrincipalName", "AppId", "ProcessingTimeInMilliseconds"),
)

AAD_NON_INTERACTIVE_USER_SIGN_IN_LOGS = TableSchema(
    name="AADNonInteractiveUserSignInLogs",
    columns={
        **_SIGN_IN_COMMON,
        # JSON text in this table, exactly as in Log Analytics.
        "DeviceDetail": STR,
        "LocationDetails": STR,
        "Status": STR,
        "ConditionalAccessPolicies": STR,
        "MfaDetail": STR,
        "ProcessingTimeInMs": STR,
    },
    time_column="TimeGenerated",
    fill_from={"TimeGenerated": "CreatedDateTime", "CreatedDateTime": "TimeGenerated"},
    required=_SIGN_IN_REQUIRED,
    signals=_SIGN_IN_SIGNALS,
    identifying=("UserPrincipalName", "AppId", "ProcessingTimeInMs"),
)

_DEFENDER_TIME = {"Timestamp": "TimeGenerated", "TimeGenerated": "Timestamp"}

EMAIL_EVENTS = TableSchema(
    name="EmailEvents",
    columns={
        "Timestamp": TIME,
        "TimeGenerated": TIME,
        "NetworkMessageId": STR,
        "InternetMessageId": STR,
        "SenderMailFromAddress": STR,
        "SenderFromAddress": STR,
        "SenderDisplayName": STR,
        "SenderObjectId": STR,
        "SenderMailFromDomain": STR,
        "SenderFromDomain": STR,
        "SenderIPv4": STR,
        "SenderIPv6": STR,
        "RecipientEmailAddress": STR,
        "RecipientObjectId": STR,
        "Subject": STR,
        "EmailClusterId": LONG,
        "EmailDirection": STR,
        "DeliveryAction": STR,
        "DeliveryLocation": STR,
        "LatestDeliveryAction": STR,
        "LatestDeliveryLocation": STR,
        "ThreatTypes": STR,
        "ThreatNames": STR,
        "DetectionMethods": STR,
        "ConfidenceLevel": STR,
        "BulkComplaintLevel": INT,
        "EmailAction": STR,
        "EmailActionPolicy": STR,
        "AuthenticationDetails": STR,
        "AttachmentCount": INT,
        "UrlCount": INT,
        "EmailLanguage": STR,
        "Connectors": STR,
        "OrgLevelAction": STR,
        "OrgLevelPolicy": STR,
        "UserLevelAction": STR,
        "UserLevelPolicy": STR,
        "ReportId": STR,
        "AdditionalFields": DYN,
        "Type": STR,
    },
    time_column="Timestamp",
    fill_from=_DEFENDER_TIME,
    required=("Timestamp",),
    identifying=("NetworkMessageId", "RecipientEmailAddress", "Subject"),
)

URL_CLICK_EVENTS = TableSchema(
    name="UrlClickEvents",
    columns={
        "Timestamp": TIME,
        "TimeGenerated": TIME,
        "Url": STR,
        "ActionType": STR,
        "AccountUpn": STR,
        "Workload": STR,
        "NetworkMessageId": STR,
        "IPAddress": STR,
        "ThreatTypes": STR,
        "DetectionMethods": STR,
        "IsClickedThrough": BOOL,
        "UrlChain": STR,
        "ReportId": STR,
        "Type": STR,
    },
    time_column="Timestamp",
    fill_from=_DEFENDER_TIME,
    required=("Timestamp",),
    identifying=("Url", "ActionType", "AccountUpn", "IsClickedThrough"),
)

EMAIL_URL_INFO = TableSchema(
    name="EmailUrlInfo",
    columns={
        "Timestamp": TIME,
        "TimeGenerated": TIME,
        "NetworkMessageId": STR,
        "Url": STR,
        "UrlDomain": STR,
        "UrlLocation": STR,
        "ReportId": STR,
        "Type": STR,
    },
    time_column="Timestamp",
    fill_from=_DEFENDER_TIME,
    required=("Timestamp",),
    identifying=("NetworkMessageId", "Url", "UrlLocation"),
)

MICROSOFT_GRAPH_ACTIVITY_LOGS = TableSchema(
    name="MicrosoftGraphActivityLogs",
    columns={
        "TimeGenerated": TIME,
        "RequestId": STR,
        "OperationId": STR,
        "ClientRequestId": STR,
        "ApiVersion": STR,
        "RequestMethod": STR,
        "ResponseStatusCode": INT,
        "IPAddress": STR,
        "UserAgent": STR,
        "RequestUri": STR,
        "ResponseSizeBytes": LONG,
        "Roles": STR,
        "Scopes": STR,
        "TokenIssuedAt": TIME,
        "SignInActivityId": STR,
        "AppId": STR,
        "UserId": STR,
        "ServicePrincipalId": STR,
        "Location": STR,
        "SessionId": STR,
        "Type": STR,
    },
    time_column="TimeGenerated",
    identifying=("RequestUri", "RequestMethod", "ResponseStatusCode"),
)

THREAT_INTELLIGENCE_INDICATOR = TableSchema(
    name="ThreatIntelligenceIndicator",
    columns={
        "TimeGenerated": TIME,
        "IndicatorId": STR,
        "NetworkIP": STR,
        "NetworkSourceIP": STR,
        "NetworkDestinationIP": STR,
        "EmailSourceIpAddress": STR,
        "ThreatType": STR,
        "Description": STR,
        "ConfidenceScore": INT,
        "SourceSystem": STR,
        "Active": BOOL,
        "ExpirationDateTime": TIME,
        "Tags": STR,
        "Type": STR,
    },
    time_column="TimeGenerated",
    identifying=("IndicatorId", "ThreatType", "ConfidenceScore"),
)

TABLES: dict[str, TableSchema] = {
    schema.name: schema
    for schema in (
        SIGNIN_LOGS,
        AAD_NON_INTERACTIVE_USER_SIGN_IN_LOGS,
        EMAIL_EVENTS,
        URL_CLICK_EVENTS,
        EMAIL_URL_INFO,
        MICROSOFT_GRAPH_ACTIVITY_LOGS,
        THREAT_INTELLIGENCE_INDICATOR,
    )
}

_BY_LOWER = {name.lower(): name for name in TABLES}

# Entra diagnostic-settings categories (Event Hub, storage) of the tables read.
_CATEGORIES = {
    "signinlogs": SIGNIN_LOGS.name,
    "noninteractiveusersigninlogs": AAD_NON_INTERACTIVE_USER_SIGN_IN_LOGS.name,
}
# Defender XDR streaming records name their table after this prefix.
DEFENDER_CATEGORY_PREFIX = "advancedhunting-"


def table_named(name: str) -> TableSchema | None:
    """The schema of a table by its name in any case, or ``None``."""
    canonical = _BY_LOWER.get(name.strip().lower())
    return TABLES[canonical] if canonical else None


def table_for_category(category: str) -> TableSchema | None:
    """The table a diagnostic or streaming record's ``category`` belongs to.

    ``SignInLogs`` and ``NonInteractiveUserSignInLogs`` are Entra's names for
    the two sign-in tables; ``AdvancedHunting-EmailEvents`` is Defender XDR's
    for ``EmailEvents``. ``None`` for every table tokenward does not read.
    """
    lowered = category.strip().lower()
    if lowered.startswith(DEFENDER_CATEGORY_PREFIX):
        return table_named(lowered.removeprefix(DEFENDER_CATEGORY_PREFIX))
    canonical = _CATEGORIES.get(lowered)
    return TABLES[canonical] if canonical else None


def table_by_columns(columns: set[str]) -> TableSchema | None:
    """The one table whose identifying columns all appear, or ``None``."""
    matches = [
        table
        for table in TABLES.values()
        if table.identifying and set(table.identifying) <= columns
    ]
    return matches[0] if len(matches) == 1 else None


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def columns_used(texts: Iterable[str]) -> dict[str, frozenset[str]]:
    """The columns of each table that the KQL *texts* name, as a loader keeps them.

    A column counts when its name appears as an identifier anywhere in the
    texts, so the set can only be wider than what the queries read. The
    columns a table cannot be loaded without, and those that tell a device
    code flow, are always kept.
    """
    named: set[str] = set()
    for text in texts:
        named.update(_IDENTIFIER.findall(text))
    return {
        table.name: frozenset(
            column
            for column in table.columns
            if column in named or column in table.required or column in table.signals
        )
        for table in TABLES.values()
    }
