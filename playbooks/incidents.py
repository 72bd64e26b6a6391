"""A Sentinel incident payload to a scope: who, from where, when. Pure.

Accepted shapes: the automation-rule / Logic App incident trigger body
(``{"object": <incident>, "objectEventType": ...}``), the bare incident
resource (``{"id": ".../incidents/<name>", "properties": {...}}``) and the
REST examples' wrapper (``{"responses": {"200": {"body": <incident>}}}``).

Accounts are resolved the way the field has learnt to (entity order is not
stable and any identifier may be missing): the Entra object id
(``aadUserId``, ``objectGuid``), then a UPN, then ``accountName@upnSuffix``,
then a UPN-shaped ``fullName`` or ``accountName`` (low confidence: never acted
on without approval). Mailbox entities (Defender for Office incidents name the
phished recipient that way) resolve by ``externalDirectoryObjectId`` or
``upn``; a bare ``mailboxPrimaryAddress`` is a mail address, not necessarily
the UPN, and is low confidence. Every value is checked by its shape; one that
fails is reported as unresolved, never passed on. An incident whose accounts
all fail is still a scope, with nothing to hunt and a reason to say so.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Any

from playbooks.actions import IncidentRef
from playbooks.errors import IdentityError, InputError, Location
from playbooks.identities import is_guid, is_upn, require_ip
from playbooks.models import Window
from playbooks.times import parse_time

# Each segment in the characters Azure allows for it, so the id can be used
# as a URL path as it stands (no "?", "#", "%", "..", spaces).
WORKSPACE_ID = re.compile(
    r"^/subscriptions/[0-9A-Fa-f-]{36}/resourceGroups/[-\w.()]{1,90}"
    r"/providers/Microsoft\.OperationalInsights/workspaces/[A-Za-z0-9-]{1,63}$",
    re.IGNORECASE,
)
# The longest hunt an incident's own times can ask for.
MAX_INCIDENT_WINDOW = timedelta(days=30)
INCIDENT_ID = re.compile(
    r"^(?P<workspace>/subscriptions/[0-9A-Fa-f-]{36}/resourceGroups/[-\w.()]{1,90}"
    r"/providers/Microsoft\.OperationalInsights/workspaces/[A-Za-z0-9-]{1,63})"
    r"/providers/Microsoft\.SecurityInsights/incidents/[A-Za-z0-9-]{1,64}$",
    re.IGNORECASE,
)


class Confidence(StrEnum):
    HIGH = "high"
    # A name that only looks like a UPN: never acted on without approval.
    LOW = "low"


@dataclass(frozen=True)
class ResolvedAccount:
    """One account of the incident, as tokenward will hunt and act on it."""

    user_id: str
    user_principal_name: str
    confidence: Confidence
    # Which identifiers resolved it, e.g. "aadUserId" or "accountName+upnSuffix".
    resolved_by: str

    @property
    def key(self) -> str:
        return self.user_id or self.user_principal_name.lower()


@dataclass(frozen=True)
class IncidentScope:
    incident: IncidentRef
    name: str
    event: str
    # Changes whenever Sentinel changes the incident.
    revision: str
    accounts: tuple[ResolvedAccount, ...]
    unresolved: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    window: Window
    workspace_id: str = ""
    analytic_rule_ids: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    # The incident's own activity, widened, before it is cut at "now"; None
    # when the incident carries no times. The fingerprint uses this, so the
    # same incident delivered twice has the same fingerprint whenever it comes.
    activity_window: Window | None = None

    @property
    def incident_key(self) -> str:
        """The incident's resource id as a key: Resource Manager ids ignore case."""
        return self.incident.resource_id.lower()

    @property
    def workspace_resource_id(self) -> str:
        match = INCIDENT_ID.match(self.incident.resource_id)
        return match["workspace"].lower() if match else ""

    @property
    def users(self) -> tuple[str, ...]:
        """The hunt's user filter: object ids and lower-cased UPNs."""
        found: list[str] = []
        for account in self.accounts:
            for value in (account.user_id, account.user_principal_name.lower()):
                if value and value not in found:
                    found.append(value)
        return tuple(found)

    @property
    def low_confidence_users(self) -> frozenset[str]:
        return frozenset(
            account.user_principal_name.lower()
            for account in self.accounts
            if account.confidence is Confidence.LOW
        )

    @cached_property
    def fingerprint(self) -> str:
        """What the hunt depends on; an update that keeps it needs no re-run."""
        window = self.activity_window
        canonical = {
            "accounts": sorted(account.key for account in self.accounts),
            "ips": sorted(self.ip_addresses),
            "window": [window.start.isoformat(), window.end.isoformat()] if window else None,
        }
        text = json.dumps(canonical, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def scope_from_incident(
    payload: Mapping[str, Any],
    *,
    now: datetime,
    margin_before: timedelta = timedelta(hours=2),
    margin_after: timedelta = timedelta(minutes=30),
    default_lookback: timedelta = timedelta(hours=24),
) -> IncidentScope:
    """The scope of the incident in *payload*; :class:`InputError` if it is none."""
    incident, event = _incident_of(payload)
    resource_id = _text(incident.get("id"))
    if not INCIDENT_ID.match(resource_id):
        raise InputError("the incident has no valid resource id", source=Location(key="object.id"))
    properties = incident.get("properties")
    if not isinstance(properties, Mapping):
        raise InputError("the incident has no properties", source=Location(key="properties"))

    accounts, unresolved = _accounts(_entities(properties))
    ips, bad_ips = _addresses(_entities(properties))
    window, window_notes = _window(properties, now, margin_before, margin_after, default_lookback)
    activity = _activity_window(properties, margin_before, margin_after)
    number = properties.get("incidentNumber")
    return IncidentScope(
        incident=IncidentRef(
            resource_id=resource_id,
            number=number if isinstance(number, int) and not isinstance(number, bool) else None,
            title=_text(properties.get("title"))[:256],
        ),
        name=_text(incident.get("name")) or resource_id.rsplit("/", 1)[-1],
        event=event,
        revision=_text(incident.get("etag")) or _text(properties.get("lastModifiedTimeUtc")),
        accounts=accounts,
        unresolved=unresolved + bad_ips,
        ip_addresses=ips,
        window=window,
        workspace_id=_text(payload.get("workspaceId")),
        analytic_rule_ids=tuple(
            _text(item) for item in properties.get("relatedAnalyticRuleIds") or () if _text(item)
        ),
        warnings=_unknown_kinds(_entities(properties)) + window_notes,
        activity_window=activity,
    )


def _incident_of(payload: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    if not isinstance(payload, Mapping):
        raise InputError("the payload is not a JSON object")
    responses = payload.get("responses")
    if isinstance(responses, Mapping):
        for status in ("200", "201"):
            body = (
                responses.get(status, {}).get("body")
                if isinstance(responses.get(status), Mapping)
                else None
            )
            if isinstance(body, Mapping):
                return body, "Example"
    wrapped = payload.get("object")
    if isinstance(wrapped, Mapping):
        schema = _text(payload.get("objectSchemaType")) or "Incident"
        if schema.lower() != "incident":
            raise InputError(
                f"the payload carries a {schema}, not an incident",
                source=Location(key="objectSchemaType"),
            )
        return wrapped, _text(payload.get("objectEventType")) or "Create"
    if "properties" in payload and "id" in payload:
        return payload, "Resource"
    raise InputError("the payload holds no incident (expected object.id and object.properties)")


def _entities(properties: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Entities from relatedEntities and from every alert, by kind, never by position."""
    found: list[Mapping[str, Any]] = []
    for entity in properties.get("relatedEntities") or ():
        if isinstance(entity, Mapping):
            found.append(entity)
    for alert in properties.get("alerts") or ():
        if not isinstance(alert, Mapping):
            continue
        raw = (
            (alert.get("properties") or {}).get("entities")
            if isinstance(alert.get("properties"), Mapping)
            else None
        )
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                raw = None
        for entity in raw or ():
            if isinstance(entity, Mapping):
                found.append(entity)
    return found


def _kind(entity: Mapping[str, Any]) -> str:
    return _text(entity.get("kind") or entity.get("Type") or entity.get("type")).lower()


def _props(entity: Mapping[str, Any]) -> dict[str, Any]:
    """Entity properties with lower-cased names: Sentinel sends both casings."""
    properties = entity.get("properties")
    source = properties if isinstance(properties, Mapping) else entity
    return {str(key).lower(): value for key, value in source.items()}


def _accounts(
    entities: Iterable[Mapping[str, Any]],
) -> tuple[tuple[ResolvedAccount, ...], tuple[str, ...]]:
    accounts: dict[str, ResolvedAccount] = {}
    unresolved: list[str] = []
    for entity in entities:
        kind = _kind(entity)
        if kind not in ("account", "mailbox"):
            continue
        props = _props(entity)
        account = resolve_account(props) if kind == "account" else resolve_mailbox(props)
        if isinstance(account, str):
            unresolved.append(account)
            continue
        known = accounts.get(account.key)
        if known is None or (
            known.confidence is Confidence.LOW and account.confidence is Confidence.HIGH
        ):
            accounts[account.key] = account
    return tuple(accounts.values()), tuple(unresolved)


def resolve_account(props: Mapping[str, Any]) -> ResolvedAccount | str:
    """One Account entity's identity, or a sentence saying why there is none."""
    object_id = ""
    for key in ("aaduserid", "objectguid"):
        value = _text(props.get(key)).strip()
        if value and is_guid(value):
            object_id = value.lower()
            break
    name = _text(props.get("accountname") or props.get("name")).strip()
    suffix = _text(props.get("upnsuffix")).strip()
    upn, by = "", ""
    for candidate, label in (
        (_text(props.get("userprincipalname")).strip(), "userPrincipalName"),
        (f"{name}@{suffix}" if name and suffix else "", "accountName+upnSuffix"),
        (name if "@" in name else "", "accountName"),
    ):
        if candidate and is_upn(candidate):
            upn, by = candidate, label
            break

    if object_id:
        return ResolvedAccount(
            object_id, upn, Confidence.HIGH, "aadUserId" + (f"+{by}" if by else "")
        )
    if upn:
        confidence = Confidence.HIGH if by != "accountName" else Confidence.LOW
        return ResolvedAccount("", upn, confidence, by)
    full = _text(props.get("fullname")).strip()
    if full and is_upn(full):
        return ResolvedAccount("", full, Confidence.LOW, "fullName")
    label = name or full or _text(props.get("friendlyname")) or "an account"
    return f"account {label[:80]!r} has no Entra object id or UPN (on-premises only, or not mapped)"


def resolve_mailbox(props: Mapping[str, Any]) -> ResolvedAccount | str:
    """A Mailbox entity's owner: its Entra object id or UPN; its address is weaker."""
    object_id = _text(props.get("externaldirectoryobjectid")).strip()
    upn = _text(props.get("upn")).strip()
    address = _text(props.get("mailboxprimaryaddress")).strip()
    if object_id and not is_guid(object_id):
        object_id = ""
    if upn and not is_upn(upn):
        upn = ""
    if object_id:
        by = "externalDirectoryObjectId" + ("+upn" if upn else "")
        return ResolvedAccount(object_id.lower(), upn, Confidence.HIGH, by)
    if upn:
        return ResolvedAccount("", upn, Confidence.HIGH, "mailbox upn")
    if address and is_upn(address):
        # A primary SMTP address often equals the UPN, but need not.
        return ResolvedAccount("", address, Confidence.LOW, "mailboxPrimaryAddress")
    label = address or _text(props.get("displayname")) or "a mailbox"
    return f"mailbox {label[:80]!r} has no Entra object id or UPN"


# The entity kinds Sentinel documents (EntityKind, 2024-09-01). Others are
# ignored with a warning: a kind added later must not make tokenward drop an
# incident it could still hunt.
KNOWN_KINDS = frozenset(
    kind.lower()
    for kind in (
        "Account",
        "Host",
        "File",
        "AzureResource",
        "CloudApplication",
        "DnsResolution",
        "FileHash",
        "Ip",
        "Malware",
        "Process",
        "RegistryKey",
        "RegistryValue",
        "SecurityGroup",
        "Url",
        "IoTDevice",
        "SecurityAlert",
        "Bookmark",
        "MailCluster",
        "MailMessage",
        "Mailbox",
        "SubmissionMail",
        "Nic",
        # Alert entities (SecurityAlert.Entities) spell some with hyphens.
        "cloud-logon-session",
        "host-logon-session",
        "network-connection",
        "dns",
        "blob",
        "blob-container",
        "mailbox-configuration",
        "oauth-application",
    )
)


def _unknown_kinds(entities: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    known = {kind.replace("-", "") for kind in KNOWN_KINDS}
    unknown = sorted(
        kind
        for kind in {_kind(e) for e in entities if e.get("kind") or e.get("Type")}
        if kind.replace("-", "") not in known
    )
    return tuple(
        f"entity kind {kind[:64]!r} is not one tokenward knows; ignored" for kind in unknown
    )


def _addresses(entities: Iterable[Mapping[str, Any]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    ips: list[str] = []
    bad: list[str] = []
    for entity in entities:
        if _kind(entity) != "ip":
            continue
        value = _text(_props(entity).get("address")).strip()
        try:
            address = require_ip(value, what="IP entity")
        except IdentityError as failure:
            bad.append(str(failure))
            continue
        if address not in ips:
            ips.append(address)
    return tuple(ips), tuple(bad)


def _window(
    properties: Mapping[str, Any],
    now: datetime,
    before: timedelta,
    after: timedelta,
    lookback: timedelta,
) -> tuple[Window, tuple[str, ...]]:
    """The hunt window of the incident's activity, and what was changed in it.

    The times come from the sender: a window longer than :data:`MAX_INCIDENT_WINDOW`
    (an incident from 1900, say) is cut to its last part rather than sent as
    a decades-long query to the workspace.
    """
    notes: list[str] = []
    first = _time(properties.get("firstActivityTimeUtc"))
    last = _time(properties.get("lastActivityTimeUtc"))
    created = _time(properties.get("createdTimeUtc"))
    if first is not None and last is not None and last < first:
        notes.append("the incident's last activity is before its first; hunted around the first")
        last = None
    start = (first or last or created or now - lookback) - before
    end = min(now, (last or first or created or now) + after)
    if end <= start:
        end = start + before + after
    if end - start > MAX_INCIDENT_WINDOW:
        notes.append(
            f"the incident's activity spans {(end - start).days} days; the hunt covers its "
            f"last {MAX_INCIDENT_WINDOW.days} days"
        )
        start = end - MAX_INCIDENT_WINDOW
    return Window(start=start, end=end), tuple(notes)


def _activity_window(
    properties: Mapping[str, Any], before: timedelta, after: timedelta
) -> Window | None:
    first = _time(properties.get("firstActivityTimeUtc"))
    last = _time(properties.get("lastActivityTimeUtc"))
    created = _time(properties.get("createdTimeUtc"))
    start = first or last or created
    end = last or first or created
    if start is None or end is None:
        return None
    return Window(start=start - before, end=max(end + after, start - before))


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return parse_time(value).value
    except ValueError:
        return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)
