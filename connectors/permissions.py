"""The Graph application permissions each action needs, and a preflight that
reads them from the app's own token.

The token's ``roles`` claim lists the application permissions granted to the
app. tokenward reads it without verifying the signature (it only informs a
refusal to start; Graph itself still enforces the permissions), compares it
with what the configured actions need and names, exactly, what is missing
(field case B13: finding a missing permission halfway through a containment
is the failure SOC teams report most).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential

from playbooks.errors import AuthenticationFailed, ConnectorError
from playbooks.models import ActionKind

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Requirement:
    """One least-privilege permission, what needs it, and what else grants it."""

    permission: str
    needed_for: str
    # Broader permissions that include this one.
    also_granted_by: tuple[str, ...] = ()

    def met_by(self, roles: frozenset[str]) -> bool:
        return self.permission in roles or any(role in roles for role in self.also_granted_by)


READ_USERS = Requirement(
    "User.Read.All",
    "reading users back before and after acting",
    ("User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"),
)
READ_ROLES = Requirement(
    "RoleManagement.Read.Directory",
    "the privileged-role check before acting",
    ("RoleManagement.ReadWrite.Directory", "Directory.Read.All", "Directory.ReadWrite.All"),
)
REQUIREMENTS: dict[ActionKind, tuple[Requirement, ...]] = {
    ActionKind.REVOKE_SESSIONS: (
        Requirement(
            "User.RevokeSessions.All",
            "revoke_sessions (revokeSignInSessions)",
            ("User.ReadWrite.All", "Directory.ReadWrite.All"),
        ),
    ),
    ActionKind.DISABLE_ACCOUNT: (
        Requirement(
            "User.EnableDisableAccount.All",
            "disable_account (PATCH accountEnabled)",
            ("User.ReadWrite.All", "Directory.ReadWrite.All"),
        ),
    ),
    ActionKind.CONFIRM_COMPROMISED: (
        Requirement(
            "IdentityRiskyUser.ReadWrite.All",
            "confirm_compromised (riskyUsers/confirmCompromised)",
        ),
    ),
}


def permission_hint(kind: ActionKind) -> str:
    """``the app needs User.RevokeSessions.All``, for an error a person acts on."""
    names = [item.permission for item in REQUIREMENTS.get(kind, ())]
    return f"the app needs {' and '.join(names)}" if names else ""


def required_permissions(kinds: Iterable[ActionKind]) -> list[Requirement]:
    """What the given actions need, reads included, once each, in a stable order."""
    wanted = [kind for kind in REQUIREMENTS if kind in set(kinds)]
    needed: list[Requirement] = []
    for kind in wanted:
        needed.extend(REQUIREMENTS[kind])
    if wanted:
        needed += [READ_USERS, READ_ROLES]
    return needed


@dataclass(frozen=True)
class PermissionCheck:
    """What the app's token grants against what the actions need."""

    identity: str
    roles: frozenset[str]
    needed: tuple[Requirement, ...]
    missing: tuple[Requirement, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.missing

    def summary(self) -> str:
        if self.ok:
            return f"{self.identity} has every Graph permission the configured actions need"
        names = ", ".join(f"{item.permission} (for {item.needed_for})" for item in self.missing)
        return f"{self.identity} lacks the Graph application permission(s) {names}"


def token_roles(token: str) -> frozenset[str]:
    """The ``roles`` claim of a JWT access token, read without verifying it."""
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthenticationFailed("the Graph token is not a JWT; its roles cannot be read")
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims: Any = json.loads(base64.urlsafe_b64decode(padded))
    except ValueError:
        raise AuthenticationFailed("the Graph token's claims cannot be read") from None
    roles = claims.get("roles") if isinstance(claims, dict) else None
    return frozenset(str(role) for role in roles) if isinstance(roles, list) else frozenset()


def check_roles(
    roles: frozenset[str], kinds: Iterable[ActionKind], *, identity: str
) -> PermissionCheck:
    needed = tuple(required_permissions(kinds))
    missing = tuple(item for item in needed if not item.met_by(roles))
    return PermissionCheck(identity=identity, roles=roles, needed=needed, missing=missing)


async def check_graph_permissions(
    credential: AsyncTokenCredential,
    *,
    scope: str,
    kinds: Sequence[ActionKind],
    identity: str = "the app",
) -> PermissionCheck:
    """Get a Graph token and check its roles; raises if no token can be had."""
    try:
        token = await credential.get_token(scope)
    except ConnectorError:
        raise
    except Exception as failure:  # azure-identity raises several unrelated types
        raise AuthenticationFailed(
            f"no Graph token for {identity}: {type(failure).__name__}"
        ) from None
    check = check_roles(token_roles(token.token), kinds, identity=identity)
    logger.info("Graph permission preflight: %s", check.summary())
    return check
