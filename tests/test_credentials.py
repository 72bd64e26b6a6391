"""Each credential kind gets a real token from the emulated Entra ID (B13)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest

from connectors.credentials import build_credential
from playbooks.errors import AuthenticationFailed, SettingsError
from playbooks.settings import settings_from_dict
from tests.emulator import CLIENT_ID, ENVIRON, TENANT_ID, settings_data
from tests.emulator.identity import MSI_HEADER, claims_of
from tests.emulator.tls import make_client_certificate

LOGS_SCOPE = "https://api.loganalytics.io/.default"


def token(
    emu: Any,
    credential: dict[str, Any],
    environ: dict[str, str] | None = None,
    scope: str = LOGS_SCOPE,
) -> str:
    settings = settings_from_dict(
        settings_data(emu, azure={"credential": credential}), environ=environ or {}
    )

    async def get() -> str:
        cred = build_credential(settings.azure)
        try:
            return (await cred.get_token(scope)).token
        finally:
            await cred.close()

    return asyncio.run(get())


def token_requests(emu: Any) -> list[dict[str, str]]:
    return [r.form() for r in emu.requests(r"/oauth2/v2\.0/token$", method="POST")]


def test_a_client_secret_signs_in_for_the_production_scope(emu: Any) -> None:
    emu.identity.secrets[CLIENT_ID] = ENVIRON["TOKENWARD_CLIENT_SECRET"]

    issued = token(emu, {"kind": "client_secret"}, ENVIRON)

    (form,) = token_requests(emu)
    assert form["grant_type"] == "client_credentials"
    assert form["client_id"] == CLIENT_ID
    assert form["scope"] == LOGS_SCOPE
    assert emu.requests(r"/oauth2/")[0].path == f"/{TENANT_ID}/oauth2/v2.0/token"
    assert claims_of(f"Bearer {issued}")["aud"] == "https://api.loganalytics.io"  # type: ignore[index]


def test_a_wrong_client_secret_is_an_authentication_failure_naming_the_service(emu: Any) -> None:
    emu.identity.secrets[CLIENT_ID] = "the-real-one"
    with pytest.raises(AuthenticationFailed) as raised:
        token(emu, {"kind": "client_secret"}, ENVIRON)
    assert f"app {CLIENT_ID} could not get a token for {LOGS_SCOPE}" in str(raised.value)
    assert "AADSTS7000215: Invalid client secret provided" in str(raised.value)
    assert ENVIRON["TOKENWARD_CLIENT_SECRET"] not in str(raised.value)


def test_workload_identity_sends_the_federated_token_as_the_assertion(
    emu: Any, tmp_path: Path
) -> None:
    federated = tmp_path / "azure-identity-token"
    federated.write_text(
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6dG9rZW53YXJkIn0.c2ln"
    )

    token(emu, {"kind": "workload_identity", "federated_token_file": str(federated)})

    (form,) = token_requests(emu)
    assert form["client_assertion"] == federated.read_text()
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "client_secret" not in form


def test_a_client_certificate_signs_an_assertion_instead_of_sending_a_secret(
    emu: Any, tmp_path: Path
) -> None:
    pem = make_client_certificate(tmp_path)

    token(emu, {"kind": "client_certificate", "certificate_path": str(pem)})

    (form,) = token_requests(emu)
    header = json.loads(base64.urlsafe_b64decode(form["client_assertion"].split(".")[0] + "=="))
    assert header["alg"] in ("RS256", "PS256") and ("x5t" in header or "x5t#S256" in header)
    assert "client_secret" not in form


def test_a_pem_with_only_a_private_key_is_refused_before_any_request(
    emu: Any, tmp_path: Path
) -> None:
    key_only = make_client_certificate(tmp_path, with_cert=False)
    with pytest.raises(
        SettingsError,
        match=r"at azure.credential.certificate_path: .*cannot be used as the app's certificate",
    ):
        token(emu, {"kind": "client_certificate", "certificate_path": str(key_only)})
    assert emu.requests() == []


def test_a_managed_identity_uses_the_platform_endpoint_with_its_client_id(
    emu: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What App Service and Container Apps put in the environment.
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{emu.http_url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", MSI_HEADER)
    identity = "6a1f3c2b-0000-4000-8000-00000000abcd"
    emu.identity.user_assigned[:] = [identity, "6a1f3c2b-0000-4000-8000-00000000dcba"]
    emu.identity.system_assigned = False

    issued = token(emu, {"kind": "managed_identity", "client_id": identity})

    (request,) = emu.requests("^/msi/token$")
    query = dict(parse_qsl(request.query))
    assert query["resource"] == "https://api.loganalytics.io"
    assert query["client_id"] == identity
    assert request.scheme == "http" and request.headers["x-identity-header"] == MSI_HEADER
    assert claims_of(f"Bearer {issued}")["appid"] == identity  # type: ignore[index]


def test_a_managed_identity_without_client_id_on_a_host_with_several_fails_with_identity_not_found(
    emu: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{emu.http_url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", MSI_HEADER)
    emu.identity.user_assigned[:] = [
        "6a1f3c2b-0000-4000-8000-00000000abcd",
        "6a1f3c2b-0000-4000-8000-00000000dcba",
    ]
    emu.identity.system_assigned = False

    with pytest.raises(AuthenticationFailed) as raised:
        token(emu, {"kind": "managed_identity", "client_id": ""})
    message = str(raised.value)
    assert "the system-assigned managed identity could not get a token" in message
    assert "Identity not found" in message
    assert "needs azure.credential.client_id set to the one tokenward uses" in message


def test_no_credential_kind_is_a_settings_error_listing_the_kinds(emu: Any) -> None:
    with pytest.raises(
        SettingsError,
        match="no credential is configured: set \\[azure.credential\\] kind to managed_identity, workload_identity",
    ):
        token(emu, {"kind": None})


def test_an_app_credential_without_client_id_names_the_missing_key(emu: Any) -> None:
    with pytest.raises(
        SettingsError, match="credential kind client_secret needs azure.credential.client_id"
    ):
        token(emu, {"kind": "client_secret", "client_id": ""}, ENVIRON)
