"""Synthetic Entra ID and Defender XDR exports at tenant scale.

The rows are shaped like real Log Analytics exports: nested dynamic columns in
``SigninLogs``, JSON *text* in ``AADNonInteractiveUserSignInLogs``, seven-digit
ticks, UPNs whose case differs between tables, a few percent of device code
flows (an interrupt, the redemption, and non-interactive rows that reuse its
token with ``OriginalTransferMethod`` set), and mail and Safe Links clicks of
which some lead up to a device code sign-in.

DuckDB makes the rows and writes them as JSON lines, so five million sign-ins
take seconds rather than minutes. Every value derives from ``hash(row, salt)``:
the same arguments give the same files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

#: The generated week ends here; a hunt over ``[START, END]`` covers it all.
END = datetime(2026, 3, 8, tzinfo=UTC)
START = END - timedelta(days=7)

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"

_MACROS = f"""
CREATE OR REPLACE MACRO u01(i, salt) AS (hash(i, salt) % 1000000) / 1000000.0;
CREATE OR REPLACE MACRO pick(options, i, salt) AS
    options[1 + (hash(i, salt) % len(options))::BIGINT];
CREATE OR REPLACE MACRO guid(a, b, salt) AS
    printf('%08x-%04x-4%03x-8%03x-%012x',
        hash(a, salt) % 4294967296, hash(a, b, salt, 'g2') % 65536,
        hash(a, b) % 4096, hash(b, a) % 4096, hash(a, b, salt) % 281474976710656);
CREATE OR REPLACE MACRO ticks(sec, i) AS
    strftime(TIMESTAMP '{START:%Y-%m-%d %H:%M:%S}' + to_seconds(sec::BIGINT),
        '%Y-%m-%dT%H:%M:%S')
    || '.' || lpad((hash(i, 'ticks') % 10000000)::VARCHAR, 7, '0') || 'Z';
CREATE OR REPLACE MACRO upn(u, i, salt) AS CASE hash(i, salt) % 10
    WHEN 0 THEN upper('user' || u || '@contoso.com')
    WHEN 1 THEN 'User' || u || '@Contoso.com'
    ELSE 'user' || u || '@contoso.com' END;
CREATE OR REPLACE MACRO user_id(u) AS guid(u, 2, 'user');
"""

_APPS = """[
    {'id': '04b07795-8ddb-461a-bbee-02f9e1bf7b46', 'name': 'Microsoft Azure CLI'},
    {'id': '1950a258-227b-4e31-a9cf-717495945fc2', 'name': 'Microsoft Azure PowerShell'},
    {'id': '29d9ed98-a469-4536-ade2-f981bc1d605e',
     'name': 'Microsoft Authentication Broker'},
    {'id': 'd3590ed6-52b3-4102-aeff-aad2292ab01c', 'name': 'Microsoft Office'},
    {'id': '1fec8e78-bce4-4aaf-ab1b-5451cc387264', 'name': 'Microsoft Teams'},
    {'id': '00000002-0000-0ff1-ce00-000000000000', 'name': 'Office 365 Exchange Online'},
    {'id': '89bee1f7-5e6e-4d8a-9f3d-ecd601259da7', 'name': 'Office365 Shell WCSS-Client'},
    {'id': 'c44b4083-3bb0-49c1-b47d-974e53cbdf3c', 'name': 'Azure Portal'}
]"""
_RESOURCES = (
    "['Microsoft Graph', 'Office 365 Exchange Online', "
    "'Windows Azure Service Management API', 'Office 365 SharePoint Online']"
)
_AGENTS = """[
    'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) '
        || 'Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51',
    'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) '
        || 'Version/17.4 Safari/605.1.15',
    'Microsoft Authentication Library',
    'python-requests/2.31.0',
    'Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0'
]"""
_COUNTRIES = "['US', 'GB', 'DE', 'FR', 'NL', 'CA', 'IN', 'BR', 'JP', 'NG']"
_SYSTEMS = "['Windows 10', 'MacOs', 'Ios', 'Android', 'Linux']"
_BROWSERS = "['Edge 124.0.0', 'Chrome 124.0.0', 'Safari 17.4', 'Firefox 125.0', '']"


@dataclass(frozen=True)
class GeneratedExport:
    """What was written, and what a hunt over it must find."""

    directory: str
    sign_ins: int
    interactive: int
    non_interactive: int
    emails: int
    clicks: int
    users: int
    flows: int
    # Rows the hunt matches: redemptions, interrupts and token reuse.
    device_code_rows: int
    start: str
    end: str

    def write_manifest(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read_manifest(cls, path: Path) -> GeneratedExport:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def generate(directory: Path, *, sign_ins: int) -> GeneratedExport:
    """Write ``sign_ins`` sign-ins, ``sign_ins/2`` mails and ``sign_ins/5`` clicks."""
    directory.mkdir(parents=True, exist_ok=True)
    interactive = sign_ins * 2 // 5
    flows = max(1, interactive // 100)
    users = max(500, sign_ins // 200)
    span = int((END - START).total_seconds())

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    con.execute(_MACROS)

    # Device code flows: who, when, which session; each becomes one redemption
    # row, an interrupt for one in ten, and two non-interactive token reuses.
    con.execute(
        f"""
        CREATE TABLE flows AS
        SELECT i AS flow, hash(i, 'flow-user') % {users} AS u,
               3600 + hash(i, 'flow-sec') % ({span} - 7200) AS sec,
               guid(i, 7, 'session') AS session
        FROM range({flows}) t(i)
        """
    )
    con.execute(
        f"""
        CREATE TABLE interactive AS
        SELECT 1000000000 + flow AS i, u, sec, session, 'deviceCode' AS protocol,
               '0' AS result, pick({_APPS}, flow, 'dc-app') AS app
        FROM flows
        UNION ALL
        SELECT 2000000000 + flow, u, sec - 40, session, 'deviceCode', '50199',
               pick({_APPS}, flow, 'dc-app')
        FROM flows WHERE flow % 10 = 0
        """
    )
    taken = con.execute("SELECT count(*) FROM interactive").fetchone()
    rest = interactive - int(taken[0] if taken else 0)
    con.execute(
        f"""
        INSERT INTO interactive
        SELECT i, hash(i, 'user') % {users}, hash(i, 'sec') % {span},
               guid(i, 3, 'session'),
               CASE WHEN u01(i, 'proto') < 0.02 THEN 'ropc'
                    WHEN u01(i, 'proto') < 0.05 THEN 'oAuth2' ELSE 'none' END,
               CASE WHEN u01(i, 'fail') < 0.05 THEN '50126'
                    WHEN u01(i, 'fail') < 0.08 THEN '50074' ELSE '0' END,
               pick({_APPS}, i, 'app')
        FROM range({max(rest, 0)}) t(i)
        """
    )
    con.execute(
        f"""
        COPY (
        SELECT
            ticks(sec, i) AS TimeGenerated,
            ticks(sec, i) AS CreatedDateTime,
            guid(i, 1, 'id') AS Id,
            'Sign-in activity' AS OperationName,
            'SignInLogs' AS Category,
            '{TENANT}' AS TenantId,
            '{TENANT}' AS AADTenantId,
            '{TENANT}' AS HomeTenantId,
            '{TENANT}' AS ResourceTenantId,
            upn(u, i, 'case') AS UserPrincipalName,
            user_id(u) AS UserId,
            'User ' || u AS UserDisplayName,
            'Member' AS UserType,
            app.id AS AppId,
            app.name AS AppDisplayName,
            pick({_RESOURCES}, i, 'res') AS ResourceDisplayName,
            protocol AS AuthenticationProtocol,
            'none' AS IncomingTokenType,
            'singleFactorAuthentication' AS AuthenticationRequirement,
            '[{{"authenticationMethod":"Password","succeeded":true}}]'
                AS AuthenticationDetails,
            'Browser' AS ClientAppUsed,
            true AS IsInteractive,
            result AS ResultType,
            CASE WHEN result = '0' THEN 'SUCCESS' ELSE 'FAILURE' END AS ResultSignature,
            '' AS ResultDescription,
            '203.0.' || hash(i, 'ip1') % 256 || '.' || hash(i, 'ip2') % 256 AS IPAddress,
            pick({_COUNTRIES}, u * 7 + (hash(i, 'travel') % 20 = 0)::INT, 'country')
                AS Location,
            json_object(
                'city', 'City ' || hash(i, 'city') % 50,
                'state', 'State',
                'countryOrRegion',
                pick({_COUNTRIES}, u * 7 + (hash(i, 'travel') % 20 = 0)::INT, 'country'),
                'geoCoordinates', json_object(
                    'latitude', u01(i, 'lat') * 180 - 90,
                    'longitude', u01(i, 'lon') * 360 - 180)) AS LocationDetails,
            CASE WHEN u01(i, 'dd') < 0.1 THEN json_object(
                    'deviceId', '', 'operatingSystem', pick({_SYSTEMS}, i, 'os'),
                    'browser', pick({_BROWSERS}, i, 'br'))
                 ELSE json_object(
                    'deviceId', guid(u, 5, 'device'), 'displayName', 'PC-' || u,
                    'operatingSystem', pick({_SYSTEMS}, i, 'os'),
                    'browser', pick({_BROWSERS}, i, 'br'),
                    'isCompliant', u01(i, 'comp') < 0.6,
                    'isManaged', u01(i, 'man') < 0.7,
                    'trustType', 'Azure AD joined') END AS DeviceDetail,
            json_object('errorCode', result::INT,
                'additionalDetails', 'MFA requirement satisfied by claim in the token')
                AS Status,
            json_array() AS ConditionalAccessPolicies,
            json_object() AS MfaDetail,
            pick({_AGENTS}, i, 'ua') AS UserAgent,
            guid(i, 4, 'corr') AS CorrelationId,
            session AS SessionId,
            guid(i, 6, 'uti') AS UniqueTokenIdentifier,
            pick(['none', 'none', 'none', 'low', 'medium', 'high'], i, 'risk')
                AS RiskLevelDuringSignIn,
            pick(['none', 'none', 'low', 'medium'], i, 'agg') AS RiskLevelAggregated,
            'none' AS RiskState,
            CASE WHEN u01(i, 'anon') < 0.01 THEN '["anonymizedIPAddress"]' ELSE '[]' END
                AS RiskEventTypes,
            CASE WHEN u01(i, 'anon') < 0.01
                 THEN '["anonymizedIPAddress","riskyIPAddress"]' ELSE '[]' END
                AS RiskEventTypes_V2,
            'notApplied' AS ConditionalAccessStatus,
            (100 + hash(i, 'ms') % 400)::VARCHAR AS ProcessingTimeInMilliseconds,
            0 AS DurationMs,
            'SigninLogs' AS Type
        FROM interactive
        ) TO '{directory / "SigninLogs.jsonl"}' (FORMAT JSON)
        """
    )

    # Non-interactive rows: two token reuses per flow, then background noise.
    non_interactive = sign_ins - interactive
    con.execute(
        f"""
        CREATE TABLE non_interactive AS
        SELECT 3000000000 + flow * 2 + k AS i, u, sec + 30 + 60 * k AS sec, session,
               CASE WHEN flow % 20 = 0 THEN 'Device code flow' ELSE 'deviceCodeFlow' END
                   AS transfer,
               '0' AS result, pick({_APPS}, flow * 2 + k, 'reuse-app') AS app
        FROM flows, range(2) r(k)
        """
    )
    taken = con.execute("SELECT count(*) FROM non_interactive").fetchone()
    rest = non_interactive - int(taken[0] if taken else 0)
    con.execute(
        f"""
        INSERT INTO non_interactive
        SELECT 4000000000 + i, hash(i, 'nuser') % {users}, hash(i, 'nsec') % {span},
               guid(i, 8, 'nsession'), 'none', '0', pick({_APPS}, i, 'napp')
        FROM range({max(rest, 0)}) t(i)
        """
    )
    con.execute(
        f"""
        COPY (
        SELECT
            ticks(sec, i) AS TimeGenerated,
            ticks(sec, i) AS CreatedDateTime,
            guid(i, 1, 'id') AS Id,
            'Sign-in activity' AS OperationName,
            'NonInteractiveUserSignInLogs' AS Category,
            '{TENANT}' AS TenantId,
            '{TENANT}' AS AADTenantId,
            '{TENANT}' AS HomeTenantId,
            '{TENANT}' AS ResourceTenantId,
            upn(u, i, 'ncase') AS UserPrincipalName,
            user_id(u) AS UserId,
            'User ' || u AS UserDisplayName,
            'Member' AS UserType,
            app.id AS AppId,
            app.name AS AppDisplayName,
            pick({_RESOURCES}, i, 'nres') AS ResourceDisplayName,
            'none' AS AuthenticationProtocol,
            transfer AS OriginalTransferMethod,
            'refreshToken' AS IncomingTokenType,
            'singleFactorAuthentication' AS AuthenticationRequirement,
            '[]' AS AuthenticationDetails,
            'Mobile Apps and Desktop clients' AS ClientAppUsed,
            false AS IsInteractive,
            result AS ResultType,
            'SUCCESS' AS ResultSignature,
            '' AS ResultDescription,
            '198.51.100.' || hash(i, 'nip') % 256 AS IPAddress,
            pick({_COUNTRIES}, u * 7, 'country') AS Location,
            json_object('city', 'City ' || hash(i, 'ncity') % 50,
                'countryOrRegion', pick({_COUNTRIES}, u * 7, 'country'))::VARCHAR
                AS LocationDetails,
            json_object('deviceId', '', 'operatingSystem', pick({_SYSTEMS}, i, 'nos'),
                'browser', '')::VARCHAR AS DeviceDetail,
            json_object('errorCode', 0)::VARCHAR AS Status,
            '[]' AS ConditionalAccessPolicies,
            '{{}}' AS MfaDetail,
            pick({_AGENTS}, i, 'nua') AS UserAgent,
            guid(i, 4, 'ncorr') AS CorrelationId,
            session AS SessionId,
            guid(i, 6, 'nuti') AS UniqueTokenIdentifier,
            'none' AS RiskLevelDuringSignIn,
            'none' AS RiskLevelAggregated,
            'none' AS RiskState,
            '[]' AS RiskEventTypes,
            '[]' AS RiskEventTypes_V2,
            'notApplied' AS ConditionalAccessStatus,
            (50 + hash(i, 'nms') % 100)::VARCHAR AS ProcessingTimeInMs,
            'AADNonInteractiveUserSignInLogs' AS Type
        FROM non_interactive
        ) TO '{directory / "AADNonInteractiveUserSignInLogs.jsonl"}' (FORMAT JSON)
        """
    )

    # Mail: a lure before half of the flows, delivered to the address in
    # another case; the rest is ordinary mail spread over the week.
    emails = sign_ins // 2
    con.execute(
        """
        CREATE TABLE mail AS
        SELECT 5000000000 + flow AS i, u, sec - 300 - hash(flow, 'lure-lead') % 3000 AS sec,
               true AS lure
        FROM flows WHERE flow % 2 = 0
        """
    )
    taken = con.execute("SELECT count(*) FROM mail").fetchone()
    rest = emails - int(taken[0] if taken else 0)
    con.execute(
        f"""
        INSERT INTO mail
        SELECT 6000000000 + i, hash(i, 'muser') % {users}, hash(i, 'msec') % {span}, false
        FROM range({max(rest, 0)}) t(i)
        """
    )
    con.execute(
        f"""
        COPY (
        SELECT
            ticks(sec, i) AS Timestamp,
            ticks(sec + 20, i) AS TimeGenerated,
            guid(i, 9, 'nmid') AS NetworkMessageId,
            '<' || guid(i, 10, 'imid') || '@mail.example>' AS InternetMessageId,
            CASE WHEN lure THEN 'it-support@fabrikam-helpdesk.example'
                 ELSE 'sender' || hash(i, 'sender') % 2000 || '@example.com' END
                AS SenderFromAddress,
            CASE WHEN lure THEN 'fabrikam-helpdesk.example' ELSE 'example.com' END
                AS SenderFromDomain,
            CASE WHEN lure THEN 'IT Support' ELSE 'Sender' END AS SenderDisplayName,
            CASE WHEN hash(i, 'rcase') % 4 = 0 THEN upper('user' || u || '@contoso.com')
                 ELSE 'user' || u || '@contoso.com' END AS RecipientEmailAddress,
            CASE WHEN hash(i, 'roid') % 3 = 0 THEN '' ELSE user_id(u) END
                AS RecipientObjectId,
            CASE WHEN lure THEN 'Action required: confirm your device'
                 ELSE 'Subject ' || hash(i, 'subj') % 10000 END AS Subject,
            'Inbound' AS EmailDirection,
            pick(['Delivered', 'Delivered', 'Delivered', 'Junked', 'Blocked'], i, 'da')
                AS DeliveryAction,
            'Inbox/folder' AS DeliveryLocation,
            CASE WHEN lure AND hash(i, 'phish') % 3 = 0 THEN 'Phish'
                 WHEN u01(i, 'spam') < 0.05 THEN 'Spam' ELSE '' END AS ThreatTypes,
            CASE WHEN lure THEN '{{"Phish":["URL detonation reputation"]}}' ELSE '' END
                AS DetectionMethods,
            (hash(i, 'urls') % 4)::INT AS UrlCount,
            (hash(i, 'att') % 2)::INT AS AttachmentCount,
            '{{"SPF":"pass","DKIM":"pass","DMARC":"pass"}}' AS AuthenticationDetails,
            (hash(i, 'report') % 100000000)::VARCHAR AS ReportId,
            'EmailEvents' AS Type
        FROM mail
        ) TO '{directory / "EmailEvents.jsonl"}' (FORMAT JSON)
        """
    )

    # Clicks: most lures are clicked a few minutes after delivery, through a
    # lure host whose chain ends on the device login page.
    clicks = sign_ins // 5
    con.execute(
        """
        CREATE TABLE click AS
        SELECT i, u, sec + 60 + hash(i, 'click-lag') % 180 AS sec, true AS lure
        FROM mail WHERE lure AND hash(i, 'clicked') % 5 <> 0
        """
    )
    taken = con.execute("SELECT count(*) FROM click").fetchone()
    rest = clicks - int(taken[0] if taken else 0)
    con.execute(
        f"""
        INSERT INTO click
        SELECT 7000000000 + i, hash(i, 'cuser') % {users}, hash(i, 'csec') % {span}, false
        FROM range({max(rest, 0)}) t(i)
        """
    )
    con.execute(
        f"""
        COPY (
        SELECT
            ticks(sec, i) AS Timestamp,
            ticks(sec + 15, i) AS TimeGenerated,
            CASE WHEN lure THEN 'https://verify-' || i % 97 || '.workers.dev/join'
                 ELSE 'https://site' || hash(i, 'site') % 5000 || '.example/p' END AS Url,
            CASE WHEN lure THEN '["https://verify-' || i % 97
                    || '.workers.dev/join","https://microsoft.com/devicelogin"]'
                 ELSE '[]' END AS UrlChain,
            pick(['ClickAllowed', 'ClickAllowed', 'ClickBlocked', 'UrlScanInProgress'],
                i, 'action') AS ActionType,
            CASE WHEN hash(i, 'case') % 3 = 0 THEN upper('user' || u || '@contoso.com')
                 ELSE 'user' || u || '@contoso.com' END AS AccountUpn,
            CASE WHEN hash(i, 'teams') % 10 = 0 THEN 'Teams' ELSE 'Email' END AS Workload,
            guid(i, 9, 'nmid') AS NetworkMessageId,
            '203.0.113.' || hash(i, 'cip') % 256 AS IPAddress,
            '' AS ThreatTypes,
            '' AS DetectionMethods,
            u01(i, 'through') < 0.1 AS IsClickedThrough,
            guid(i, 11, 'click-report') AS ReportId,
            'UrlClickEvents' AS Type
        FROM click
        ) TO '{directory / "UrlClickEvents.jsonl"}' (FORMAT JSON)
        """
    )

    counts = con.execute(
        """
        SELECT (SELECT count(*) FROM interactive),
               (SELECT count(*) FROM non_interactive),
               (SELECT count(*) FROM mail),
               (SELECT count(*) FROM click),
               (SELECT count(*) FROM interactive WHERE protocol = 'deviceCode')
               + (SELECT count(*) FROM non_interactive WHERE transfer <> 'none')
        """
    ).fetchone()
    con.close()
    assert counts is not None
    made = GeneratedExport(
        directory=str(directory),
        sign_ins=int(counts[0]) + int(counts[1]),
        interactive=int(counts[0]),
        non_interactive=int(counts[1]),
        emails=int(counts[2]),
        clicks=int(counts[3]),
        users=users,
        flows=flows,
        device_code_rows=int(counts[4]),
        start=START.isoformat(),
        end=END.isoformat(),
    )
    return made
