"""The Azure clouds tokenward can work in, and the endpoints each one implies.

One ``cloud`` setting decides the sign-in authority, the Graph base URL and
scope, the Log Analytics endpoint and audience, and the Resource Manager
endpoint. Each endpoint may be overridden (a private link, a proxy, a test
emulator), but never with another cloud's host: a GCC High tenant whose Graph
calls go to graph.microsoft.com, or whose token is issued for it, fails every
call with 401 or "invalid audience" (field case B16). Scopes and audiences
always follow the cloud, so an overridden endpoint still gets a production
token.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

GRAPH_VERSION = "v1.0"


class Cloud(StrEnum):
    PUBLIC = "AzurePublic"
    US_GOVERNMENT = "AzureUSGovernment"
    US_GOVERNMENT_DOD = "AzureUSGovernmentDoD"
    CHINA = "AzureChina"


#: Other spellings people and tools use for the same clouds.
CLOUD_ALIASES = {
    "azurepublic": Cloud.PUBLIC,
    "azurecloud": Cloud.PUBLIC,
    "azurepubliccloud": Cloud.PUBLIC,
    "public": Cloud.PUBLIC,
    "global": Cloud.PUBLIC,
    "azureusgovernment": Cloud.US_GOVERNMENT,
    "azureusgovernmentcloud": Cloud.US_GOVERNMENT,
    "usgov": Cloud.US_GOVERNMENT,
    "gcchigh": Cloud.US_GOVERNMENT,
    "azureusgovernmentdod": Cloud.US_GOVERNMENT_DOD,
    "usgovdod": Cloud.US_GOVERNMENT_DOD,
    "dod": Cloud.US_GOVERNMENT_DOD,
    "azurechina": Cloud.CHINA,
    "azurechinacloud": Cloud.CHINA,
    "china": Cloud.CHINA,
}


class Service(StrEnum):
    """Each service by the name of the setting that overrides its endpoint."""

    AUTHORITY = "authority_host"
    GRAPH = "graph_endpoint"
    LOG_ANALYTICS = "log_analytics_endpoint"
    ARM = "arm_endpoint"

    @property
    def label(self) -> str:
        return _TITLES[self]


_TITLES = {
    Service.AUTHORITY: "sign-in authority",
    Service.GRAPH: "Microsoft Graph",
    Service.LOG_ANALYTICS: "Log Analytics",
    Service.ARM: "Resource Manager",
}


# The canonical host first; later ones are accepted spellings of the same service.
_HOSTS: dict[Cloud, dict[Service, tuple[str, ...]]] = {
    Cloud.PUBLIC: {
        Service.AUTHORITY: (
            "login.microsoftonline.com",
            "login.microsoft.com",
            "login.windows.net",
        ),
        Service.GRAPH: ("graph.microsoft.com",),
        Service.LOG_ANALYTICS: ("api.loganalytics.io", "api.loganalytics.azure.com"),
        Service.ARM: ("management.azure.com",),
    },
    Cloud.US_GOVERNMENT: {
        Service.AUTHORITY: ("login.microsoftonline.us",),
        Service.GRAPH: ("graph.microsoft.us",),
        Service.LOG_ANALYTICS: ("api.loganalytics.us",),
        Service.ARM: ("management.usgovcloudapi.net",),
    },
    Cloud.US_GOVERNMENT_DOD: {
        Service.AUTHORITY: ("login.microsoftonline.us",),
        Service.GRAPH: ("dod-graph.microsoft.us",),
        Service.LOG_ANALYTICS: ("api.loganalytics.us",),
        Service.ARM: ("management.usgovcloudapi.net",),
    },
    Cloud.CHINA: {
        Service.AUTHORITY: (
            "login.chinacloudapi.cn",
            "login.partner.microsoftonline.cn",
        ),
        Service.GRAPH: ("microsoftgraph.chinacloudapi.cn",),
        Service.LOG_ANALYTICS: ("api.loganalytics.azure.cn",),
        Service.ARM: ("management.chinacloudapi.cn",),
    },
}


@dataclass(frozen=True)
class AzureEndpoints:
    """Every URL and scope tokenward uses in one cloud, consistent by construction."""

    cloud: Cloud
    # https://login.microsoftonline.com
    authority_host: str
    # https://graph.microsoft.com/v1.0, never with a trailing slash: kiota
    # joins its path templates with "/" and would send "/v1.0//users/...".
    graph_base_url: str
    graph_scope: str
    log_analytics_endpoint: str
    log_analytics_audience: str
    arm_endpoint: str
    arm_scope: str
    # False when the authority is not a Microsoft host (an emulator, ADFS):
    # instance discovery would then ask login.microsoftonline.com about it.
    authority_is_known: bool

    @property
    def log_analytics_scope(self) -> str:
        return self.log_analytics_audience + "/.default"

    @property
    def graph_host(self) -> str:
        return urlsplit(self.graph_base_url).hostname or ""


class EndpointConflict(ValueError):
    """An endpoint setting names a host that belongs to another cloud or service."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def parse_cloud(value: str) -> Cloud:
    """A cloud by its name or a common alias, case and punctuation ignored."""
    cleaned = "".join(char for char in value.lower() if char.isalnum())
    cloud = CLOUD_ALIASES.get(cleaned)
    if cloud is None:
        known = ", ".join(item.value for item in Cloud)
        raise ValueError(f"unknown cloud {value!r} (known: {known})")
    return cloud


def derive_endpoints(
    cloud: Cloud,
    *,
    authority_host: str = "",
    graph_endpoint: str = "",
    log_analytics_endpoint: str = "",
    arm_endpoint: str = "",
) -> AzureEndpoints:
    """The cloud's endpoints with any overrides applied; refuses contradictions."""
    hosts = _HOSTS[cloud]
    authority = _endpoint(cloud, Service.AUTHORITY, authority_host)
    graph = _endpoint(cloud, Service.GRAPH, graph_endpoint, allowed_paths=("", "/v1.0"))
    logs = _endpoint(
        cloud, Service.LOG_ANALYTICS, log_analytics_endpoint, allowed_paths=("", "/v1")
    )
    arm = _endpoint(cloud, Service.ARM, arm_endpoint)

    graph_audience = f"https://{hosts[Service.GRAPH][0]}"
    logs_audience = f"https://{hosts[Service.LOG_ANALYTICS][0]}"
    arm_audience = f"https://{hosts[Service.ARM][0]}"
    authority_known = (urlsplit(authority).hostname or "") in _all_hosts(Service.AUTHORITY)
    return AzureEndpoints(
        cloud=cloud,
        authority_host=authority,
        graph_base_url=f"{graph}/{GRAPH_VERSION}",
        graph_scope=f"{graph_audience}/.default",
        log_analytics_endpoint=logs,
        log_analytics_audience=logs_audience,
        arm_endpoint=arm,
        arm_scope=f"{arm_audience}/.default",
        authority_is_known=authority_known,
    )


def _endpoint(
    cloud: Cloud,
    service: Service,
    override: str,
    *,
    allowed_paths: tuple[str, ...] = ("",),
) -> str:
    """``https://host[:port]`` for *service*, from the override or the cloud."""
    if not override.strip():
        return f"https://{_HOSTS[cloud][service][0]}"
    key = service.value
    parts = urlsplit(override.strip())
    if parts.scheme != "https" or not parts.hostname:
        raise EndpointConflict(key, f"{key} must be an https:// URL, not {override!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise EndpointConflict(key, f"{key} must be a plain https://host URL, not {override!r}")
    path = parts.path.rstrip("/")
    if path not in allowed_paths:
        shown = " or ".join(repr(p) for p in allowed_paths if p) or "none"
        raise EndpointConflict(key, f"{key} may not have the path {path!r} (allowed: {shown})")

    host = parts.hostname.lower()
    own = _HOSTS[cloud][service]
    if host not in own:
        for other_cloud, services in _HOSTS.items():
            for other_service, other_hosts in services.items():
                if host in other_hosts:
                    raise EndpointConflict(
                        key,
                        f"{key} {override!r} is the {other_service.label} host of "
                        f"{other_cloud.value}, but cloud is {cloud.value} "
                        f"(expected {own[0]}); tokens and requests would go to "
                        "different clouds",
                    )
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return f"https://{netloc}"


def _all_hosts(service: Service) -> set[str]:
    return {host for services in _HOSTS.values() for host in services[service]}
