"""The client factory: production scopes, no SDK retries, one slash, TLS trust from settings."""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any

import pytest
from kiota_abstractions.api_error import APIError

from connectors.clients import Clients
from connectors.credentials import build_credential
from connectors.retry import graph_error
from playbooks.errors import Throttled
from playbooks.settings import settings_from_dict
from tests.emulator import ENVIRON, settings_data
from tests.emulator.identity import claims_of


def graph_call(emu: Any, **azure: Any) -> BaseException | None:
    settings = settings_from_dict(settings_data(emu, azure=azure), environ=ENVIRON)

    async def run() -> None:
        async with Clients(settings.azure, build_credential(settings.azure)) as clients:
            await (
                clients.graph().users.by_user_id("alice@contoso.com").revoke_sign_in_sessions.post()
            )

    try:
        asyncio.run(run())
    except BaseException as failure:  # noqa: BLE001 - the test inspects it
        return failure
    return None


def test_graph_requests_go_to_the_configured_host_with_one_slash_and_a_graph_token(
    emu: Any,
) -> None:
    graph_call(emu)

    (token,) = emu.requests(r"/oauth2/v2\.0/token$")
    assert token.form()["scope"] == "https://graph.microsoft.com/.default"
    (call,) = emu.requests(r"^/v1\.0/")
    assert call.raw_path == "/v1.0/users/alice%40contoso.com/revokeSignInSessions"
    assert claims_of(call.authorization)["aud"] == "https://graph.microsoft.com"  # type: ignore[index]


def test_kiotas_retry_handler_is_off_so_a_429_is_one_request(emu: Any) -> None:
    emu.fault(path=r"^/v1\.0/", status=429, headers={"Retry-After": "1"}, times=None)

    failure = graph_call(emu)

    assert isinstance(failure, APIError)
    assert len(emu.requests(r"^/v1\.0/")) == 1
    error = graph_error(failure, what="revokeSignInSessions for alice@contoso.com")
    assert isinstance(error, Throttled) and error.retry_after == 1


def test_a_graph_error_keeps_code_message_and_request_ids_for_the_audit(emu: Any) -> None:
    # B14: the audit needs status, error.code, request-id and client-request-id.
    emu.fault(
        path=r"^/v1\.0/",
        status=404,
        body={
            "error": {
                "code": "Request_ResourceNotFound",
                "message": None,
                "innerError": {
                    "request-id": "rid-1",
                    "client-request-id": "crid-1",
                    "date": "2026-01-15T09:30:00",
                },
            }
        },
    )

    error = graph_error(graph_call(emu), what="revokeSignInSessions for alice@contoso.com")  # type: ignore[arg-type]

    assert error is not None
    assert (error.status, error.code, error.request_id, error.client_request_id) == (
        404,
        "Request_ResourceNotFound",
        "rid-1",
        "crid-1",
    )
    assert error.error_class == "not_found"
    assert (
        str(error)
        == "Microsoft Graph refused revokeSignInSessions for alice@contoso.com (404 Request_ResourceNotFound: no message)"
    )


def test_without_the_ca_bundle_the_emulator_is_not_trusted(emu: Any) -> None:
    failure = graph_call(emu, ca_bundle=None)
    error = graph_error(failure, what="revokeSignInSessions")  # type: ignore[arg-type]
    assert error is not None and "could not be reached" in str(error)
    assert "CERTIFICATE_VERIFY_FAILED" in str(error)


@pytest.mark.parametrize("cloud", ["AzureUSGovernment", "AzureChina"])
def test_a_national_cloud_asks_for_its_own_graph_scope_even_through_an_override(
    emu: Any, cloud: str
) -> None:
    settings = settings_from_dict(settings_data(emu, azure={"cloud": cloud}), environ=ENVIRON)
    emu.audiences["graph"] = settings.azure.endpoints().graph_scope.removesuffix("/.default")

    graph_call(emu, cloud=cloud)

    (token,) = emu.requests(r"/oauth2/v2\.0/token$")
    assert token.form()["scope"] == settings.azure.endpoints().graph_scope
    assert token.form()["scope"] != "https://graph.microsoft.com/.default"


def test_closing_the_clients_closes_every_connection(emu: Any) -> None:
    # msgraph-core's transport wrapper has no aclose(); the factory closes the
    # pool under it, or a long-running service leaks a socket per run.
    graph_call(emu)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        gc.collect()
