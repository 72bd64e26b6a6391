"""A local HTTPS emulator of the Microsoft APIs tokenward calls.

See README.md beside this file for what it serves and how to extend it.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from tests.emulator import arm, defender, graph, identity, log_analytics, sentinel
from tests.emulator.server import AUDIENCES, Emulator, Fault, RecordedRequest

#: The route modules mounted, in order: specific routes before catch-alls
#: (Defender's /v1.0/security/... before Graph's /v1.0/...; the Sentinel
#: incidents API before the rest of Resource Manager).
MODULES = [identity, sentinel, arm, log_analytics, defender, graph]


def start_emulator() -> Emulator:
    return Emulator().start(MODULES)


__all__ = [
    "AUDIENCES",
    "MODULES",
    "Emulator",
    "Fault",
    "RecordedRequest",
    "abandoning_requests",
    "start_emulator",
]


@contextmanager
def abandoning_requests() -> Iterator[None]:
    """Around a call whose requests a client timeout abandons mid-answer.

    On Python 3.11 the socket under a TLS connection that aiohttp gave up on
    can outlive its event loop and reach the garbage collector unclosed, at
    a moment that depends on the machine's load (aio-libs/aiohttp#1115). It
    is collected here, beside the call that made it, rather than failing
    whichever test next runs the collector. Any other warning still fails.
    """
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"unclosed (transport|<socket)", ResourceWarning)
            gc.collect()


TENANT_ID = identity.TENANT
CLIENT_ID = "3f1c2a8e-6b7d-4e0a-9c55-1d2e3f4a5b6c"
CLIENT_SECRET = "emulator-client-secret-value"
WORKSPACE_ID = "8b2f0a4c-1d3e-4f56-a789-0b1c2d3e4f50"


def settings_data(emulator: Emulator, **sections: dict[str, object]) -> dict[str, object]:
    """Settings that point every endpoint and the CA bundle at *emulator*.

    Nothing else differs from production: the cloud, and so every scope and
    audience, stays AzurePublic. Retry waits are shortened so faults are fast.
    """
    data: dict[str, dict[str, object]] = {
        "azure": {
            "tenant_id": TENANT_ID,
            "authority_host": emulator.base_url,
            "graph_endpoint": emulator.base_url,
            "log_analytics_endpoint": emulator.base_url,
            "arm_endpoint": emulator.base_url,
            "ca_bundle": str(emulator.ca_file),
            "read_timeout": 30,
            "connect_timeout": 2,
            "credential": {"kind": "client_secret", "client_id": CLIENT_ID},
        },
        "log_analytics": {"workspace_id": WORKSPACE_ID, "server_timeout": 4},
        "retry": {"max_attempts": 4, "wait_initial": 0.01, "wait_max": 30, "deadline": 60},
    }
    for name, values in sections.items():
        merged = dict(data.get(name, {}))
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}  # type: ignore[dict-item]
            else:
                merged[key] = value
        data[name] = merged
    return dict(data)


#: The environment a client-secret run reads its secret from.
ENVIRON = {"TOKENWARD_CLIENT_SECRET": CLIENT_SECRET}
