"""Identity values checked by their shape before they reach a query or a URL.

Account names, object ids and addresses arrive in incidents that an attacker
can influence. Each is refused unless it has the shape it claims, and then
rendered only through the quoting helpers in :mod:`playbooks.kql`.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from urllib.parse import quote

from playbooks.errors import IdentityError

# Entra ID allows A-Z a-z 0-9 ' . - _ ! # ^ ~ in the local part of a UPN; mail
# addresses add +. Guests carry #EXT# before the tenant's domain.
_LOCAL = r"[A-Za-z0-9'_!#^~+\-](?:[A-Za-z0-9'._!#^~+\-]{0,110}[A-Za-z0-9'_!#^~+\-])?"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
_UPN = re.compile(rf"^{_LOCAL}@{_DOMAIN}$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MAX_UPN_LENGTH = 113


def is_upn(value: str) -> bool:
    return len(value) <= MAX_UPN_LENGTH and bool(_UPN.match(value))


def is_guid(value: str) -> bool:
    return bool(_GUID.match(value))


def is_guest_upn(value: str) -> bool:
    return "#ext#" in value.lower()


def require_upn(value: str, *, what: str = "user principal name") -> str:
    """The UPN or mail address itself, or :class:`IdentityError` naming it."""
    if not isinstance(value, str) or not is_upn(value):
        raise IdentityError(f"{what} {_show(value)} is not a UPN or mail address")
    return value


def require_guid(value: str, *, what: str = "object id") -> str:
    """The GUID in lower case, or :class:`IdentityError` naming it."""
    if not isinstance(value, str) or not is_guid(value):
        raise IdentityError(f"{what} {_show(value)} is not a GUID")
    return str(uuid.UUID(value))


def require_ip(value: str, *, what: str = "IP address") -> str:
    """The address in canonical form, or :class:`IdentityError` naming it."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except (ValueError, AttributeError):
        raise IdentityError(f"{what} {_show(value)} is not an IP address") from None


def user_key(upn: str) -> str:
    """The key sign-ins, mails and clicks are joined on: the lower-cased UPN."""
    return upn.strip().lower()


def graph_user_segment(user: str) -> str:
    """A user id or UPN as one percent-encoded Graph path segment.

    ``#`` must become ``%23``: unencoded it starts a URL fragment and a guest's
    ``…#EXT#@contoso.onmicrosoft.com`` is cut to a different user.
    """
    return quote(user, safe="@'")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
