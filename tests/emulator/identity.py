"""Microsoft Entra ID for the emulator: OpenID metadata, the v2.0 token endpoint
(client secret, certificate and federated assertions) and an App Service
style managed-identity endpoint.

Tokens are JWT-shaped (unsigned) and carry ``aud``, ``tid``, ``appid`` and
``roles``, so the other emulated services can refuse a token issued for
another audience, and ``tokenward doctor`` can read the roles as it would in
production.

Tokens *for tokenward* (the Logic App's managed identity calling the webhook,
an approver) are real RS256 JWTs: ``emulator.identity.signed_token(...)``
signs with the tenant's key, which ``/{tenant}/discovery/v2.0/keys`` publishes
as Entra ID does; ``rotate()`` publishes a new key.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from jwt.algorithms import RSAAlgorithm

if TYPE_CHECKING:
    from tests.emulator.server import Emulator

MSI_HEADER = "emulator-identity-header"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


@dataclass
class IdentityState:
    """Who may sign in, and what their tokens say."""

    # client id -> the secret it must present (absent: any secret is accepted).
    secrets: dict[str, str] = field(default_factory=dict)
    # audience (https://graph.microsoft.com) -> app roles in tokens for it.
    roles: dict[str, list[str]] = field(default_factory=dict)
    # Managed identities on the emulated host.
    system_assigned: bool = True
    user_assigned: list[str] = field(default_factory=list)
    issued: int = 0
    # kid -> private key; the public halves are published as the tenant's JWKS.
    signing_keys: dict[str, Any] = field(default_factory=dict)
    current_kid: str = ""

    def reset(self) -> None:
        self.secrets.clear()
        self.roles.clear()
        self.system_assigned = True
        self.user_assigned.clear()
        self.issued = 0

    def rotate(self) -> str:
        """Publish a new signing key and sign with it from now on."""
        kid = uuid.uuid4().hex[:16]
        self.signing_keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.current_kid = kid
        return kid

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self.signing_keys.items():
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "kty": "RSA"})
        return {"keys": keys}

    def signed_token(
        self,
        audience: str,
        *,
        oid: str,
        tenant: str = TENANT,
        appid: str = "",
        lifetime: int = 3600,
        issued_ago: int = 0,
        kid: str | None = None,
        **claims: Any,
    ) -> str:
        """An RS256 access token signed with the tenant's key, as Entra ID issues them."""
        now = int(time.time()) - issued_ago
        body = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{tenant}/",
            "tid": tenant,
            "oid": oid,
            "appid": appid or oid,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "ver": "1.0",
            **claims,
        }
        chosen = kid or self.current_kid
        return jwt.encode(
            body, self.signing_keys[chosen], algorithm="RS256", headers={"kid": chosen}
        )


def token_for(audience: str, *, client_id: str, tenant: str, roles: list[str]) -> str:
    """An unsigned JWT with the claims services and doctor read."""
    now = int(time.time())
    claims = {
        "aud": audience,
        "iss": f"https://sts.windows.net/{tenant}/",
        "tid": tenant,
        "appid": client_id,
        "azp": client_id,
        "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, client_id)),
        "idtyp": "app",
        "roles": roles,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": uuid.uuid4().hex,
    }
    return ".".join((_b64({"alg": "none", "typ": "JWT"}), _b64(claims), "emulator-signature"))


def claims_of(authorization: str | None) -> dict[str, Any] | None:
    """The claims of a bearer token the emulator issued; ``None`` for anything else."""
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    parts = authorization.split(" ", 1)[1].split(".")
    if len(parts) != 3:
        return None
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


def refuse_unless_audience(request: Request, audience: str) -> JSONResponse | None:
    """A 401 in the service's style unless the token is for *audience*."""
    claims = claims_of(request.headers.get("authorization"))
    if claims is None:
        return JSONResponse(
            {
                "error": {
                    "code": "AuthorizationRequiredError",
                    "message": "Valid authentication was not provided",
                }
            },
            status_code=401,
        )
    if claims.get("aud") != audience:
        return JSONResponse(
            {
                "error": {
                    "code": "InvalidAuthenticationTokenAudience",
                    "message": f"The access token has been obtained for wrong audience or resource '{claims.get('aud')}'. It should exactly match '{audience}'.",
                }
            },
            status_code=401,
        )
    return None


def install(emulator: Emulator) -> None:
    state = IdentityState()
    state.rotate()
    emulator.services["identity"] = state
    emulator.identity = state
    router = APIRouter()

    @router.get("/{tenant}/v2.0/.well-known/openid-configuration")
    async def openid_configuration(tenant: str, request: Request) -> JSONResponse:
        base = f"{request.url.scheme}://{request.url.netloc}"
        return JSONResponse(
            {
                "issuer": f"{base}/{tenant}/v2.0",
                "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "token"],
                "tenant_region_scope": None,
            }
        )

    @router.get("/{tenant}/discovery/v2.0/keys")
    async def keys(tenant: str) -> JSONResponse:
        return JSONResponse(state.jwks())

    @router.post("/{tenant}/oauth2/v2.0/token")
    async def token(tenant: str, request: Request) -> JSONResponse:
        form = dict(parse_qsl((await request.body()).decode()))
        client_id = form.get("client_id", "")
        scope = form.get("scope", "")
        if form.get("grant_type") != "client_credentials" or not scope.endswith("/.default"):
            return _aad_error(
                400,
                "invalid_request",
                "AADSTS900144: expected client_credentials and a /.default scope",
            )
        expected = state.secrets.get(client_id)
        if "client_secret" in form:
            if expected is not None and form["client_secret"] != expected:
                return _aad_error(
                    401, "invalid_client", "AADSTS7000215: Invalid client secret provided."
                )
        elif "client_assertion" not in form:
            return _aad_error(
                401,
                "invalid_client",
                "AADSTS7000218: the request must contain client_assertion or client_secret",
            )
        audience = scope.split(" ")[0].removesuffix("/.default")
        state.issued += 1
        return JSONResponse(
            {
                "token_type": "Bearer",
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": token_for(
                    audience,
                    client_id=client_id,
                    tenant=tenant,
                    roles=state.roles.get(audience, []),
                ),
            }
        )

    @router.get("/msi/token")
    async def managed_identity(request: Request) -> JSONResponse:
        if request.headers.get("x-identity-header") != MSI_HEADER:
            return JSONResponse(
                {"error": "unauthorized", "error_description": "bad X-IDENTITY-HEADER"},
                status_code=401,
            )
        resource = request.query_params.get("resource", "")
        client_id = request.query_params.get("client_id") or request.query_params.get("clientid")
        if client_id:
            if client_id not in state.user_assigned:
                return JSONResponse(
                    {"error": "invalid_request", "error_description": "Identity not found"},
                    status_code=400,
                )
        elif not state.system_assigned and len(state.user_assigned) != 1:
            return JSONResponse(
                {"error": "invalid_request", "error_description": "Identity not found"},
                status_code=400,
            )
        identity = client_id or (
            state.user_assigned[0] if not state.system_assigned else "system-assigned"
        )
        state.issued += 1
        return JSONResponse(
            {
                "access_token": token_for(
                    resource, client_id=identity, tenant=TENANT, roles=state.roles.get(resource, [])
                ),
                "expires_on": str(int(time.time()) + 3600),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": identity,
            }
        )

    emulator.app.include_router(router)


def _aad_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse(
        {
            "error": error,
            "error_description": description,
            "error_codes": [int(code) for code in re.findall(r"AADSTS(\d+)", description)],
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
        },
        status_code=status,
    )


def _b64(value: dict[str, Any]) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
