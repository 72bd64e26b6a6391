"""Only Sentinel gets in: signed bodies and Entra ID tokens, nothing else."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from connectors.entra_keys import SigningKeys
from playbooks.webhook_auth import (
    CheckedTokens,
    TokenPolicy,
    Unauthorized,
    sign,
    validate_bearer,
    verify_signature,
)

SECRET = b"s" * 32
BODY = b'{"object": {"id": "x"}}'
TENANT = "72f988bf-0000-4000-8000-000000000001"
ISSUER = f"https://sts.windows.net/{TENANT}/"
AUDIENCE = "api://tokenward"
LOGIC_APP = "0b0b0b0b-0000-4000-8000-000000000007"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
POLICY = TokenPolicy(
    audiences=(AUDIENCE,), issuers=(ISSUER,), allowed_principals=frozenset({LOGIC_APP})
)


def headers(timestamp: int, signature: str) -> dict[str, str]:
    return {"X-Tokenward-Timestamp": str(timestamp), "X-Tokenward-Signature": signature}


def test_a_fresh_signed_body_is_accepted() -> None:
    now = int(time.time())
    verify_signature(
        BODY,
        headers(now, sign(BODY, secret=SECRET, timestamp=now)),
        secret=SECRET,
        now=now,
        tolerance_s=300,
    )


@pytest.mark.parametrize(
    ("make_headers", "reason"),
    [
        (lambda now: {}, "no signature or timestamp header"),
        (
            lambda now: headers(now, sign(BODY, secret=b"wrong" * 8, timestamp=now)),
            "does not match",
        ),
        (
            lambda now: headers(now, sign(BODY + b" ", secret=SECRET, timestamp=now)),
            "does not match",
        ),
        (
            lambda now: headers(now - 3600, sign(BODY, secret=SECRET, timestamp=now - 3600)),
            "a replay",
        ),
        (lambda now: headers(now, sign(BODY, secret=SECRET, timestamp=now - 1)), "does not match"),
        (lambda now: headers(now, "sha256="), "does not match"),
        (
            lambda now: {"X-Tokenward-Timestamp": "soon", "X-Tokenward-Signature": "sha256=00"},
            "not Unix seconds",
        ),
    ],
    ids=["unsigned", "forged", "tampered-body", "replayed", "re-stamped", "empty", "bad-timestamp"],
)
def test_unsigned_forged_tampered_and_replayed_bodies_are_refused(
    make_headers: Any, reason: str
) -> None:
    now = int(time.time())
    with pytest.raises(Unauthorized, match=reason):
        verify_signature(BODY, make_headers(now), secret=SECRET, now=now, tolerance_s=300)


def token(key: Any = KEY, kid: str = "k1", alg: str = "RS256", **changes: Any) -> str:
    now = int(time.time())
    claims = {
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "oid": LOGIC_APP,
        "tid": TENANT,
        "appid": "a1",
    }
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return "Bearer " + jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def keys(kid: str) -> Any:
    if kid == "k1":
        return KEY.public_key()
    raise KeyError(kid)


def test_the_logic_apps_managed_identity_token_is_accepted() -> None:
    caller = validate_bearer(token(), policy=POLICY, key_for=keys, now=time.time())
    assert caller.principal_id == LOGIC_APP and caller.tenant_id == TENANT


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("", "no bearer token"),
        ("Basic dXNlcjpwYXNz", "no bearer token"),
        ("Bearer not-a-jwt", "not a JWT"),
        (token(aud="api://someone-else"), "another audience"),
        (token(iss="https://sts.windows.net/evil/"), "another issuer"),
        (token(exp=int(time.time()) - 7200), "expired"),
        (token(nbf=int(time.time()) + 7200), "not valid yet"),
        (token(key=OTHER_KEY), "invalid"),
        (token(kid="unknown"), "key the tenant does not publish"),
        (token(oid="99999999-0000-4000-8000-000000000009", appid="other"), "may not call"),
        (token(exp=None), "invalid"),
    ],
    ids=[
        "missing",
        "basic",
        "garbage",
        "audience",
        "issuer",
        "expired",
        "early",
        "forged-signature",
        "unknown-kid",
        "wrong-principal",
        "no-expiry",
    ],
)
def test_forged_expired_and_foreign_tokens_are_refused(header: str, reason: str) -> None:
    with pytest.raises(Unauthorized, match=reason):
        validate_bearer(header, policy=POLICY, key_for=keys, now=time.time())


@pytest.mark.parametrize(
    "claims",
    [{"iat": "yesterday"}, {"exp": float("nan")}, {"exp": float("inf")}, {"nbf": "0"}],
    ids=["text-iat", "nan-exp", "infinite-exp", "text-nbf"],
)
def test_a_token_whose_times_are_no_times_is_refused_not_crashed_on(claims: Any) -> None:
    with pytest.raises(Unauthorized, match="claim is not a time"):
        validate_bearer(token(**claims), policy=POLICY, key_for=keys, now=time.time())


# -- a token seen before ------------------------------------------------------------


class CountingKeys:
    """The tenant's published keys, counting how often a signature was checked."""

    def __init__(self) -> None:
        self.published = {"k1": KEY.public_key()}
        self.lookups = 0

    def __call__(self, kid: str) -> Any:
        self.lookups += 1
        return self.published[kid]


def test_a_reused_token_is_not_verified_again_while_it_lives() -> None:
    checked, published = CheckedTokens(), CountingKeys()
    bearer, now = token(), time.time()

    first = validate_bearer(bearer, policy=POLICY, key_for=published, now=now, checked=checked)
    with_cache = [
        validate_bearer(bearer, policy=POLICY, key_for=published, now=now + n, checked=checked)
        for n in range(100)
    ]

    assert {caller.principal_id for caller in with_cache} == {first.principal_id} == {LOGIC_APP}
    assert len(checked) == 1
    # Each reuse only asks whether its key is still published: no jwt.decode.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jwt, "decode", lambda *a, **k: pytest.fail("verified again"))
        validate_bearer(bearer, policy=POLICY, key_for=published, now=now, checked=checked)


def test_a_remembered_token_is_refused_once_it_expires_as_a_new_one_would_be() -> None:
    checked, now = CheckedTokens(), time.time()
    bearer = token(exp=int(now) + 120)
    validate_bearer(bearer, policy=POLICY, key_for=keys, now=now, checked=checked)

    with pytest.raises(Unauthorized, match="expired"):
        validate_bearer(bearer, policy=POLICY, key_for=keys, now=now + 600, checked=checked)
    assert len(checked) == 0


def test_a_remembered_token_is_refused_once_its_key_is_no_longer_published() -> None:
    checked, published = CheckedTokens(), CountingKeys()
    bearer, now = token(), time.time()
    validate_bearer(bearer, policy=POLICY, key_for=published, now=now, checked=checked)

    del published.published["k1"]

    with pytest.raises(Unauthorized, match="key the tenant does not publish"):
        validate_bearer(bearer, policy=POLICY, key_for=published, now=now, checked=checked)


def test_a_tampered_copy_of_a_remembered_token_is_verified_and_refused() -> None:
    checked, now = CheckedTokens(), time.time()
    bearer = token()
    validate_bearer(bearer, policy=POLICY, key_for=keys, now=now, checked=checked)
    head, payload, signature = bearer.removeprefix("Bearer ").split(".")
    forged = f"Bearer {head}.{payload}.{signature[:-4]}AAAA"

    with pytest.raises(Unauthorized, match="invalid"):
        validate_bearer(forged, policy=POLICY, key_for=keys, now=now, checked=checked)


def test_a_token_remembered_under_one_policy_is_checked_under_another() -> None:
    checked, now = CheckedTokens(), time.time()
    bearer = token()
    validate_bearer(bearer, policy=POLICY, key_for=keys, now=now, checked=checked)
    approvers = TokenPolicy(audiences=("api://elsewhere",), issuers=(ISSUER,))

    with pytest.raises(Unauthorized, match="another audience"):
        validate_bearer(bearer, policy=approvers, key_for=keys, now=now, checked=checked)


def test_refusals_are_not_remembered_and_the_oldest_tokens_go_first() -> None:
    checked, now = CheckedTokens(max_tokens=3), time.time()
    with pytest.raises(Unauthorized):
        validate_bearer(token(aud="x"), policy=POLICY, key_for=keys, now=now, checked=checked)
    assert len(checked) == 0

    bearers = [token(jti=str(n)) for n in range(5)]
    for bearer in bearers:
        validate_bearer(bearer, policy=POLICY, key_for=keys, now=now, checked=checked)

    assert len(checked) == 3
    assert checked.caller(POLICY, bearers[0].split()[1], key_for=keys, now=now) is None
    assert checked.caller(POLICY, bearers[-1].split()[1], key_for=keys, now=now) is not None


def test_a_token_signed_with_a_shared_secret_algorithm_is_refused() -> None:
    forged = "Bearer " + jwt.encode(
        {"aud": AUDIENCE, "iss": ISSUER}, "k" * 32, algorithm="HS256", headers={"kid": "k1"}
    )
    with pytest.raises(Unauthorized, match="not RS256"):
        validate_bearer(forged, policy=POLICY, key_for=keys, now=time.time())


def test_signing_keys_are_fetched_once_and_refreshed_for_a_new_kid() -> None:
    fetched: list[str] = []
    published = {"k1": KEY}

    def handler(request: httpx.Request) -> httpx.Response:
        fetched.append(request.url.path)
        if request.url.path.endswith("openid-configuration"):
            return httpx.Response(200, json={"jwks_uri": "https://login.example/keys"})
        jwks = [
            json.loads(RSAAlgorithm.to_jwk(key.public_key())) | {"kid": kid}
            for kid, key in published.items()
        ]
        return httpx.Response(200, json={"keys": jwks})

    store = SigningKeys(
        metadata_url="https://login.example/t/v2.0/.well-known/openid-configuration",
        transport=httpx.MockTransport(handler),
        min_refresh_s=0,
    )

    async def scenario() -> None:
        await store.ensure("k1")
        await store.ensure("k1")
        assert len(fetched) == 2
        published["k2"] = OTHER_KEY
        await store.ensure("k2")
        assert len(fetched) == 4
        validate_bearer(
            token(key=OTHER_KEY, kid="k2"), policy=POLICY, key_for=store.key, now=time.time()
        )

    asyncio.run(scenario())
