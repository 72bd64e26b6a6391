"""The azure-identity credential tokenward signs in with, built from settings.

The kind is chosen explicitly in ``[azure.credential]``; there is no
DefaultAzureCredential chain, which in a service silently picks up a
developer's ``az`` login or the wrong managed identity (field case B13).
Every credential is the ``aio`` variant, because the Graph and Log Analytics
clients are async, and each is built inside the event loop that uses it.

Problems visible before any request (a missing client id, a certificate file
without a certificate) are :class:`~playbooks.errors.SettingsError` naming the
key; problems only the token endpoint can tell are found by ``tokenward
doctor`` and at the start of a live run.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity.aio import (
    CertificateCredential,
    ClientSecretCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)

from playbooks.errors import (
    AuthenticationFailed,
    Location,
    ServiceUnavailable,
    SettingsError,
)
from playbooks.settings import (
    ENV_CERTIFICATE_PASSWORD,
    ENV_CLIENT_SECRET,
    AzureSettings,
    CredentialKind,
)

logger = logging.getLogger(__name__)


class SigningIn:
    """An azure-identity credential whose failures are tokenward errors.

    A token is fetched inside an SDK call, so without this a refused sign-in
    would surface as the service's own error. Here it becomes
    :class:`~playbooks.errors.AuthenticationFailed` saying which identity could
    not get a token for which service, and an unreachable authority becomes a
    retryable :class:`~playbooks.errors.ServiceUnavailable`.
    """

    def __init__(self, inner: Any, *, identity: str, hint: str = "") -> None:
        self._inner = inner
        self.identity = identity
        self._hint = hint
        # Concurrent calls for the same scope wait for one token request
        # instead of each sending its own before the cache holds the token.
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}

    def _lock(self, scopes: tuple[str, ...]) -> asyncio.Lock:
        return self._locks.setdefault(scopes, asyncio.Lock())

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        try:
            async with self._lock(scopes):
                token: AccessToken = await self._inner.get_token(
                    *scopes,
                    claims=claims,
                    tenant_id=tenant_id,
                    enable_cae=enable_cae,
                    **kwargs,
                )
                return token
        except Exception as failure:
            raise self._translated(failure, scopes) from failure

    async def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        try:
            async with self._lock(scopes):
                info: AccessTokenInfo = await self._inner.get_token_info(*scopes, options=options)
        except Exception as failure:
            raise self._translated(failure, scopes) from failure
        return info

    async def close(self) -> None:
        await self._inner.close()

    async def __aenter__(self) -> SigningIn:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._inner.__aexit__(*exc)

    def _translated(self, failure: Exception, scopes: tuple[str, ...]) -> Exception:
        scope = " ".join(scopes)
        reason = _first_line(failure)
        if isinstance(failure, ServiceRequestError | ServiceResponseError):
            return ServiceUnavailable(
                f"the sign-in service could not be reached for a {scope} token "
                f"as {self.identity}: {reason}"
            )
        if isinstance(failure, ClientAuthenticationError | ValueError):
            hint = ""
            if self._hint and "identity not found" in reason.lower():
                hint = f"; {self._hint}"
            return AuthenticationFailed(
                f"{self.identity} could not get a token for {scope}: {reason}{hint}"
            )
        return failure


def build_credential(azure: AzureSettings) -> SigningIn:
    """The credential ``[azure.credential]`` describes, ready to ask for tokens."""
    credential, identity, hint = _azure_identity_credential(azure)
    return SigningIn(credential, identity=identity, hint=hint)


def _azure_identity_credential(
    azure: AzureSettings,
) -> tuple[AsyncTokenCredential, str, str]:
    settings = azure.credential
    kind = settings.kind
    if kind is None:
        raise SettingsError(
            "no credential is configured: set [azure.credential] kind to "
            + ", ".join(item.value for item in CredentialKind),
            source=Location(key="azure.credential.kind"),
        )
    transport = _transport(azure)

    if kind is CredentialKind.MANAGED_IDENTITY:
        logger.info(
            "signing in with a managed identity (%s)",
            f"client id {settings.client_id}" if settings.client_id else "system-assigned",
        )
        identity = (
            f"managed identity {settings.client_id}"
            if settings.client_id
            else "the system-assigned managed identity"
        )
        hint = (
            ""
            if settings.client_id
            else "a host with several user-assigned identities needs "
            "azure.credential.client_id set to the one tokenward uses"
        )
        return (
            ManagedIdentityCredential(client_id=settings.client_id or None, **transport),
            identity,
            hint,
        )

    _require(azure, "tenant_id", "client_id")
    endpoints = azure.endpoints()
    sign_in: dict[str, Any] = {
        "authority": endpoints.authority_host,
        # Instance discovery asks login.microsoftonline.com about the authority;
        # for a host it does not know (an emulator, a proxy) that cannot work.
        "disable_instance_discovery": not endpoints.authority_is_known,
        **transport,
    }
    if kind is CredentialKind.CLIENT_SECRET:
        if settings.client_secret is None:
            raise SettingsError(
                f"credential kind client_secret needs the secret in {ENV_CLIENT_SECRET}",
                source=Location(key="azure.credential.client_secret"),
            )
        logger.info("signing in as app %s with a client secret", settings.client_id)
        return (
            ClientSecretCredential(
                azure.tenant_id,
                settings.client_id,
                settings.client_secret.get_secret_value(),
                **sign_in,
            ),
            f"app {settings.client_id}",
            "",
        )
    if kind is CredentialKind.CLIENT_CERTIFICATE:
        path = _readable(settings.certificate_path, "azure.credential.certificate_path")
        password = settings.certificate_password
        logger.info("signing in as app %s with certificate %s", settings.client_id, path)
        try:
            certificate = CertificateCredential(
                azure.tenant_id,
                settings.client_id,
                certificate_path=str(path),
                password=password.get_secret_value() if password else None,
                send_certificate_chain=settings.send_certificate_chain,
                **sign_in,
            )
        except (ValueError, TypeError) as failure:
            raise SettingsError(
                f"{path} cannot be used as the app's certificate: {_first_line(failure)} "
                "(the file needs the certificate and its private key, PEM or PKCS#12"
                f"{'' if password else f'; a protected file needs {ENV_CERTIFICATE_PASSWORD}'})",
                source=Location(key="azure.credential.certificate_path"),
            ) from None
        return certificate, f"app {settings.client_id}", ""
    token_file = _readable(settings.federated_token_file, "azure.credential.federated_token_file")
    logger.info("signing in as app %s with workload identity", settings.client_id)
    workload = WorkloadIdentityCredential(
        tenant_id=azure.tenant_id,
        client_id=settings.client_id,
        token_file_path=str(token_file),
        **sign_in,
    )
    return workload, f"app {settings.client_id} (workload identity)", ""


def _transport(azure: AzureSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "connection_timeout": azure.connect_timeout,
        "read_timeout": azure.read_timeout,
        # Token requests are retried by tokenward's callers, not here.
        "retry_total": 0,
    }
    if azure.ca_bundle is not None:
        options["connection_verify"] = str(_readable(azure.ca_bundle, "azure.ca_bundle"))
    return options


def _require(azure: AzureSettings, *keys: str) -> None:
    values = {"tenant_id": azure.tenant_id, "client_id": azure.credential.client_id}
    missing = [key for key in keys if not values[key]]
    if missing:
        where = {
            "tenant_id": "azure.tenant_id",
            "client_id": "azure.credential.client_id",
        }
        kind = azure.credential.kind.value if azure.credential.kind else "?"
        raise SettingsError(
            f"credential kind {kind} needs {' and '.join(where[key] for key in missing)}",
            source=Location(key=where[missing[0]]),
        )


def _readable(path: Path | None, key: str) -> Path:
    if path is None:
        raise SettingsError(f"{key} is not set", source=Location(key=key))
    if not path.is_file():
        raise SettingsError(f"{path} does not exist or is not a file", source=Location(key=key))
    return path


def _first_line(failure: BaseException) -> str:
    lines = str(failure).strip().splitlines()
    return lines[0] if lines else type(failure).__name__
