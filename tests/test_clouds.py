"""One cloud setting decides every endpoint and scope; contradictions stop tokenward (B16)."""

from __future__ import annotations

import pytest

from playbooks.clouds import Cloud
from playbooks.errors import SettingsError
from playbooks.settings import settings_from_dict


def endpoints(**azure: object):  # type: ignore[no-untyped-def]
    return settings_from_dict({"azure": azure}).azure.endpoints()


def test_us_government_derives_its_own_authority_graph_scope_and_log_analytics() -> None:
    found = endpoints(cloud="USGov")
    assert found.cloud is Cloud.US_GOVERNMENT
    assert found.authority_host == "https://login.microsoftonline.us"
    assert found.graph_base_url == "https://graph.microsoft.us/v1.0"
    assert found.graph_scope == "https://graph.microsoft.us/.default"
    assert found.log_analytics_endpoint == "https://api.loganalytics.us"
    assert found.log_analytics_scope == "https://api.loganalytics.us/.default"
    assert found.arm_scope == "https://management.usgovcloudapi.net/.default"


def test_another_clouds_graph_host_is_refused_at_startup() -> None:
    with pytest.raises(
        SettingsError,
        match=r"at azure.graph_endpoint: graph_endpoint 'https://graph.microsoft.com' is the Microsoft Graph host of AzurePublic, but cloud is AzureUSGovernment",
    ):
        endpoints(cloud="USGov", graph_endpoint="https://graph.microsoft.com")


@pytest.mark.parametrize(
    "given",
    [
        "https://graph.microsoft.us",
        "https://graph.microsoft.us/",
        "https://graph.microsoft.us/v1.0/",
    ],
)
def test_a_graph_endpoint_is_normalised_to_one_version_path_without_a_trailing_slash(
    given: str,
) -> None:
    # kiota joins "/users/..." to the base URL: a trailing slash would send "//users".
    assert (
        endpoints(cloud="AzureUSGovernment", graph_endpoint=given).graph_base_url
        == "https://graph.microsoft.us/v1.0"
    )


def test_china_and_dod_have_their_own_graph_hosts() -> None:
    assert (
        endpoints(cloud="AzureChina").graph_base_url
        == "https://microsoftgraph.chinacloudapi.cn/v1.0"
    )
    assert endpoints(cloud="AzureChina").authority_host == "https://login.chinacloudapi.cn"
    assert (
        endpoints(cloud="AzureChina").log_analytics_endpoint == "https://api.loganalytics.azure.cn"
    )
    assert endpoints(cloud="dod").graph_scope == "https://dod-graph.microsoft.us/.default"


def test_an_emulator_or_proxy_host_keeps_the_production_scopes() -> None:
    found = endpoints(
        graph_endpoint="https://127.0.0.1:8443",
        log_analytics_endpoint="https://127.0.0.1:8443",
        authority_host="https://127.0.0.1:8443",
    )
    assert found.graph_base_url == "https://127.0.0.1:8443/v1.0"
    assert found.graph_scope == "https://graph.microsoft.com/.default"
    assert found.log_analytics_audience == "https://api.loganalytics.io"
    assert found.authority_is_known is False
    assert endpoints().authority_is_known is True


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("graph_endpoint", "http://graph.microsoft.com", "must be an https:// URL"),
        ("graph_endpoint", "https://graph.microsoft.com/beta", "may not have the path '/beta'"),
        (
            "log_analytics_endpoint",
            "https://graph.microsoft.com",
            "is the Microsoft Graph host of AzurePublic",
        ),
        (
            "authority_host",
            "https://login.microsoftonline.us",
            "is the sign-in authority host of AzureUSGovernment",
        ),
        ("arm_endpoint", "https://user:pw@management.azure.com", "plain https://host URL"),
    ],
)
def test_endpoints_that_cannot_be_right_are_refused_naming_the_key(
    key: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=rf"at azure\.{key}: .*{message}"):
        endpoints(**{key: value})


def test_an_unknown_cloud_lists_the_known_ones() -> None:
    with pytest.raises(SettingsError, match="unknown cloud 'Mars' .*AzureUSGovernment"):
        endpoints(cloud="Mars")
