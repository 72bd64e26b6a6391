"""Who may call the webhook: an HMAC signature or an Entra ID bearer token. Pure.

Two schemes, either or both enabled in settings:

* **HMAC-SHA256.** The sender signs ``<timestamp>.<raw body>`` with a shared
  secret and sends ``X-Tokenward-Timestamp`` (Unix seconds) and
  ``X-Tokenward-Signature: sha256=<hex>``. A timestamp outside the tolerance
  is refused, so a captured request cannot be replayed later.
* **Entra ID bearer token**, as a Logic App's managed identity sends it: RS256,
  signed by one of the tenant's keys, for the configured audience and issuer,
  within its lifetime, and (when configured) from an allowed principal.

Every refusal raises :class:`Unauthorized` with a reason for the audit; the
HTTP answer never repeats it. Comparisons are constant-time.

A managed identity sends the same token with every call for as long as it
lives (hours); :class:`CheckedTokens` remembers the tokens that passed, so a
burst of deliveries is not paying for an RSA verification each.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

SIGNATURE_HEADER = "x-tokenward-signature"
TIMESTAMP_HEADER = "x-tokenward-timestamp"
_PREFIX = "sha256="


class Unauthorized(Exception):
    """The request is not from a sender tokenward trusts; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sign(body: bytes, *, secret: bytes, timestamp: int) -> str:
    """The signature header value a sender puts on *body*."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return _PREFIX + digest.hexdigest()


def verify_signature(
    body: bytes,
    headers: Mapping[str, str],
    *,
    secret: bytes,
    now: float,
    tolerance_s: int,
) -> None:
    """Accept *body* only if it carries a fresh, valid signature."""
    lowered = {key.lower(): value for key, value in headers.items()}
    signature = lowered.get(SIGNATURE_HEADER, "")
    stamp = lowered.get(TIMESTAMP_HEADER, "")
    if not signature or not stamp:
        raise Unauthorized("no signature or timestamp header")
    if not stamp.isdigit() or len(stamp) > 12:
        raise Unauthorized("the timestamp is not Unix seconds")
    if abs(now - int(stamp)) > tolerance_s:
        raise Unauthorized(
            f"the timestamp is {int(now - int(stamp))} s off (a replay or a skewed clock)"
        )
    expected = sign(body, secret=secret, timestamp=int(stamp))
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise Unauthorized("the signature does not match the body")


@dataclass(frozen=True)
class TokenPolicy:
    """What a bearer token must say to be accepted."""

    audiences: tuple[str, ...]
    issuers: tuple[str, ...]
    # Object ids of the principals allowed to call (e.g. the Logic App's
    # managed identity); empty accepts any principal of the tenant.
    allowed_principals: frozenset[str] = frozenset()
    leeway_s: int = 60


@dataclass(frozen=True)
class Caller:
    """Who a valid token says called, as the audit records it."""

    principal_id: str
    app_id: str
    tenant_id: str
    name: str
    # App roles granted to the caller (the token's roles claim).
    roles: tuple[str, ...] = ()
    # True for a person's (delegated) token, False for an app's or a managed identity's.
    is_user: bool = False
    scheme: str = "bearer"

    @property
    def label(self) -> str:
        return self.name or self.principal_id or self.app_id


KeyLookup = Callable[[str], Any]


@dataclass(frozen=True)
class _Lifetime:
    """When a token may be used, from its ``nbf``, ``exp`` and ``iat`` claims."""

    not_before: float
    expires: float
    issued: float

    @classmethod
    def of(cls, claims: Mapping[str, Any]) -> _Lifetime:
        times = {name: claims[name] for name in ("nbf", "exp", "iat")}
        for name, value in times.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise Unauthorized(f"the token's {name} claim is not a time")
            if not math.isfinite(value):  # JSON as Python reads it allows NaN and Infinity
                raise Unauthorized(f"the token's {name} claim is not a time")
        return cls(not_before=times["nbf"], expires=times["exp"], issued=times["iat"])

    def check(self, now: float, leeway: float) -> None:
        """Raise :class:`Unauthorized` unless the token may be used at *now*."""
        if self.expires <= now - leeway:
            raise Unauthorized("the token has expired")
        if self.not_before > now + leeway:
            raise Unauthorized("the token is not valid yet")
        if abs(now - self.issued) > 86400 + leeway:
            raise Unauthorized("the token was issued more than a day ago")


@dataclass(frozen=True)
class _Passed:
    caller: Caller
    kid: str
    lifetime: _Lifetime


class CheckedTokens:
    """Bearer tokens that passed :func:`validate_bearer`, under one policy each.

    Only a token identical byte for byte to one that passed is found (the
    entry is keyed by its SHA-256), and finding it spares only the signature
    and claims check: its lifetime is checked against the clock on every
    use, and it is checked in full again once its signing key is no longer
    one the tenant publishes. Refusals are never remembered. The oldest
    entries go first past *max_tokens*.
    """

    def __init__(self, max_tokens: int = 256) -> None:
        self.max_tokens = max_tokens
        self._passed: OrderedDict[tuple[TokenPolicy, bytes], _Passed] = OrderedDict()

    def __len__(self) -> int:
        return len(self._passed)

    def caller(
        self, policy: TokenPolicy, token: str, *, key_for: KeyLookup, now: float
    ) -> Caller | None:
        """The remembered caller of *token*; ``None`` if it must be checked in full.

        Raises :class:`Unauthorized` (and forgets the token) once it has expired.
        """
        entry = (policy, hashlib.sha256(token.encode()).digest())
        passed = self._passed.get(entry)
        if passed is None:
            return None
        try:
            key_for(passed.kid)
        except KeyError:
            del self._passed[entry]
            return None
        try:
            passed.lifetime.check(now, policy.leeway_s)
        except Unauthorized:
            del self._passed[entry]
            raise
        return passed.caller

    def remember(
        self, policy: TokenPolicy, token: str, kid: str, lifetime: _Lifetime, caller: Caller
    ) -> None:
        entry = (policy, hashlib.sha256(token.encode()).digest())
        self._passed[entry] = _Passed(caller=caller, kid=kid, lifetime=lifetime)
        while len(self._passed) > self.max_tokens:
            self._passed.popitem(last=False)


def validate_bearer(
    authorization: str,
    *,
    policy: TokenPolicy,
    key_for: KeyLookup,
    now: float,
    checked: CheckedTokens | None = None,
) -> Caller:
    """The caller of a valid ``Authorization: Bearer`` header, else :class:`Unauthorized`.

    *key_for* maps a token's ``kid`` to its public key, or raises ``KeyError``;
    it is where the tenant's signing keys are cached and rotated. With
    *checked*, a token that passed before is not verified again while it is
    in its lifetime and its key is published (see :class:`CheckedTokens`).
    """
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("no bearer token")
    if checked is not None:
        known = checked.caller(policy, token, key_for=key_for, now=now)
        if known is not None:
            return known
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthorized("the bearer token is not a JWT") from None
    if header.get("alg") != "RS256":
        raise Unauthorized(f"the token is signed with {header.get('alg')!r}, not RS256")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Unauthorized("the token names no signing key")
    try:
        key = key_for(kid)
    except KeyError:
        raise Unauthorized("the token is signed by a key the tenant does not publish") from None

    try:
        claims = jwt.decode(
            token,
            key=key,
            algorithms=["RS256"],
            audience=list(policy.audiences),
            issuer=list(policy.issuers),
            # The lifetime is checked below, against the caller's clock.
            options={
                "require": ["exp", "nbf", "iat", "aud", "iss"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidAudienceError:
        raise Unauthorized("the token is for another audience") from None
    except jwt.InvalidIssuerError:
        raise Unauthorized("the token is from another issuer") from None
    except jwt.PyJWTError as failure:
        raise Unauthorized(f"the token is invalid ({type(failure).__name__})") from None
    lifetime = _Lifetime.of(claims)
    lifetime.check(now, policy.leeway_s)

    roles = claims.get("roles")
    caller = Caller(
        principal_id=str(claims.get("oid", "")),
        app_id=str(claims.get("appid") or claims.get("azp") or ""),
        tenant_id=str(claims.get("tid", "")),
        name=str(
            claims.get("xms_mirid") or claims.get("upn") or claims.get("preferred_username") or ""
        )[:256],
        roles=tuple(str(role) for role in roles) if isinstance(roles, list) else (),
        # Delegated tokens carry scopes (scp); app-only tokens carry only roles.
        is_user="scp" in claims or claims.get("idtyp") == "user",
    )
    if policy.allowed_principals and not _allowed(caller, policy.allowed_principals):
        raise Unauthorized(
            f"principal {caller.principal_id or caller.app_id!r} may not call the webhook"
        )
    if checked is not None:
        checked.remember(policy, token, kid, lifetime, caller)
    return caller


def _allowed(caller: Caller, allowed: Collection[str]) -> bool:
    names = {caller.principal_id.lower(), caller.app_id.lower()} - {""}
    return bool(names & {item.lower() for item in allowed})
