"""One factory for every SDK client tokenward uses, built from settings and a credential.

Everything environment-specific lives in the settings: the cloud's endpoints
(or their overrides), the CA bundle, the timeouts. The same code therefore
runs in any national cloud and against the test emulator, where only the
endpoint and CA settings differ. The clients are the real SDKs over their
real HTTP stacks:

* Log Analytics: ``azure.monitor.query.aio.LogsQueryClient`` (aiohttp), with
  the cloud's audience so the token is for the real service even when the
  endpoint is overridden;
* Microsoft Graph: ``GraphServiceClient`` over httpx with kiota's default
  middleware (redirects, the ``/me`` rewrite, telemetry) but its
  RetryHandler switched off, a base URL without a trailing slash, and the
  token sent only to the configured Graph host;
* Azure Resource Manager: an azure-core ``AsyncPipelineClient`` with a bearer
  policy and no retry policy.

No client retries on its own: :mod:`connectors.retry` is the one retry layer.
Clients are created inside the event loop that uses them and closed with
:meth:`Clients.close` (B15: an async client outliving its loop fails later
with "Event loop is closed").
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from typing import Any

import httpx
from azure.core import AsyncPipelineClient
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.pipeline.policies import (
    AsyncBearerTokenCredentialPolicy,
    HeadersPolicy,
    RequestIdPolicy,
    UserAgentPolicy,
)
from azure.monitor.query.aio import LogsQueryClient
from kiota_authentication_azure.azure_identity_authentication_provider import (
    AzureIdentityAuthenticationProvider,
)
from kiota_http.middleware.options import RetryHandlerOption
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph.graph_request_adapter import options as msgraph_default_options
from msgraph.graph_service_client import GraphServiceClient
from msgraph_core import GraphClientFactory

from playbooks.clouds import AzureEndpoints
from playbooks.settings import AzureSettings

logger = logging.getLogger(__name__)

USER_AGENT = "tokenward/0.1"


def logs_client(azure: AzureSettings, credential: AsyncTokenCredential) -> LogsQueryClient:
    """The async Log Analytics query client for the configured cloud."""
    endpoints = azure.endpoints()
    options: dict[str, Any] = {
        "endpoint": endpoints.log_analytics_endpoint,
        # Without it the SDK asks for a token for the endpoint's own host.
        "audience": endpoints.log_analytics_audience,
        "retry_total": 0,
        "connection_timeout": azure.connect_timeout,
        "read_timeout": azure.read_timeout,
        "user_agent": USER_AGENT,
    }
    if azure.ca_bundle is not None:
        options["connection_verify"] = str(azure.ca_bundle)
    return LogsQueryClient(credential, **options)


def graph_http_client(azure: AzureSettings) -> httpx.AsyncClient:
    """The httpx client under the Graph client: TLS trust and timeouts from settings.

    Close it with :func:`close_graph_http_client`: msgraph-core 1.5.2 wraps the
    transport in an ``AsyncGraphTransport`` without ``aclose``, so
    ``client.aclose()`` alone leaves the connection pool open.
    """
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(verify=_ssl_context(azure)),
        timeout=httpx.Timeout(azure.read_timeout, connect=azure.connect_timeout),
        headers={"User-Agent": USER_AGENT},
    )


async def close_graph_http_client(http: httpx.AsyncClient) -> None:
    """Close the client and the pool msgraph-core's transport wrapper hides."""
    transport = http._transport  # the wrapper installed by GraphClientFactory
    await http.aclose()
    inner = getattr(transport, "transport", None)
    if isinstance(inner, httpx.AsyncBaseTransport):
        await inner.aclose()


def graph_client(
    azure: AzureSettings,
    credential: AsyncTokenCredential,
    *,
    http: httpx.AsyncClient | None = None,
) -> GraphServiceClient:
    """A Graph client whose only retries are tokenward's own.

    The caller owns *http* (made by :func:`graph_http_client` when not given)
    and closes it; :class:`Clients` does both.
    """
    endpoints = azure.endpoints()
    http = http or graph_http_client(azure)
    # Passing options replaces msgraph's defaults, so they are carried over.
    options = {
        **msgraph_default_options,
        RetryHandlerOption.get_key(): RetryHandlerOption(max_retries=0, should_retry=False),
    }
    http = GraphClientFactory.create_with_default_middleware(client=http, options=options)
    auth = AzureIdentityAuthenticationProvider(
        credential,
        scopes=[endpoints.graph_scope],
        # The token goes to the configured Graph host and nowhere else.
        allowed_hosts=[endpoints.graph_host],
    )
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = endpoints.graph_base_url
    return GraphServiceClient(request_adapter=adapter)


def arm_client(
    azure: AzureSettings, credential: AsyncTokenCredential
) -> AsyncPipelineClient[Any, Any]:
    """A bare azure-core client for Resource Manager (Sentinel incidents and comments).

    ``send_request`` does not prefix the base URL: build URLs with
    ``client.format_url(path)``.
    """
    endpoints = azure.endpoints()
    options: dict[str, Any] = {
        "connection_timeout": azure.connect_timeout,
        "read_timeout": azure.read_timeout,
    }
    if azure.ca_bundle is not None:
        options["connection_verify"] = str(azure.ca_bundle)
    policies = [
        RequestIdPolicy(),
        HeadersPolicy(),
        UserAgentPolicy(base_user_agent=USER_AGENT),
        AsyncBearerTokenCredentialPolicy(credential, endpoints.arm_scope),
    ]
    return AsyncPipelineClient(base_url=endpoints.arm_endpoint, policies=policies, **options)


@dataclass
class Clients:
    """Every client of one run, made on first use and closed together.

    ``async with Clients(settings.azure, credential) as clients:`` inside the
    run's event loop; the credential is closed with the clients.
    """

    azure: AzureSettings
    credential: AsyncTokenCredential
    _logs: LogsQueryClient | None = field(default=None, init=False)
    _graph: GraphServiceClient | None = field(default=None, init=False)
    _graph_http: httpx.AsyncClient | None = field(default=None, init=False)
    _arm: AsyncPipelineClient[Any, Any] | None = field(default=None, init=False)

    @property
    def endpoints(self) -> AzureEndpoints:
        return self.azure.endpoints()

    def logs(self) -> LogsQueryClient:
        if self._logs is None:
            self._logs = logs_client(self.azure, self.credential)
        return self._logs

    def graph(self) -> GraphServiceClient:
        if self._graph is None:
            self._graph_http = graph_http_client(self.azure)
            self._graph = graph_client(self.azure, self.credential, http=self._graph_http)
        return self._graph

    def arm(self) -> AsyncPipelineClient[Any, Any]:
        if self._arm is None:
            self._arm = arm_client(self.azure, self.credential)
        return self._arm

    async def close(self) -> None:
        if self._logs is not None:
            await self._logs.close()
        if self._graph_http is not None:
            await close_graph_http_client(self._graph_http)
        if self._arm is not None:
            await self._arm.close()
        await self.credential.close()

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _ssl_context(azure: AzureSettings) -> ssl.SSLContext | bool:
    if azure.ca_bundle is None:
        return True
    return ssl.create_default_context(cafile=str(azure.ca_bundle))
