"""Running the real Graph responder against the emulator, one event loop per call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from connectors.clients import Clients
from connectors.credentials import build_credential
from connectors.graph import GraphOptions, GraphResponder
from connectors.retry import RetryPolicy
from playbooks.settings import Settings, settings_from_dict
from tests.emulator import ENVIRON, settings_data

T = TypeVar("T")


def emulator_settings(emu: Any, **sections: dict[str, object]) -> Settings:
    return settings_from_dict(settings_data(emu, **sections), environ=ENVIRON)


def with_responder(
    emu: Any,
    use: Callable[[GraphResponder], Awaitable[T]],
    *,
    settings: Settings | None = None,
    options: GraphOptions | None = None,
) -> T:
    """Build the clients and the responder inside a fresh loop, use them, close them."""
    chosen = settings or emulator_settings(emu)

    async def run() -> T:
        async with Clients(chosen.azure, build_credential(chosen.azure)) as clients:
            responder = GraphResponder(
                clients.graph(),
                policy=RetryPolicy.from_settings(chosen.retry),
                options=options or GraphOptions(),
            )
            return await use(responder)

    return asyncio.run(run())


# -- running the command line against the emulator ---------------------------------

GRAPH_AUDIENCE = "https://graph.microsoft.com"
ALL_ROLES = [
    "User.RevokeSessions.All",
    "User.EnableDisableAccount.All",
    "User.Read.All",
    "IdentityRiskyUser.ReadWrite.All",
    "RoleManagement.Read.Directory",
]


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML for settings: tables, strings, numbers, bools and lists."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((f"{prefix}{key}", value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for name, table in tables:
        out += f"\n[{name}]\n" + to_toml(table, prefix=f"{name}.")
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def graph_calls(emu: Any, *, writes_only: bool = False) -> list[tuple[str, str, Any]]:
    """Every Graph call the emulator saw, sent alone or inside a ``$batch``:
    ``(method, path as sent, body)``, paths relative to ``/v1.0``."""
    calls: list[tuple[str, str, Any]] = []
    for request in emu.requests(r"^/v1\.0/"):
        if request.path == "/v1.0/$batch":
            for item in request.json()["requests"]:
                calls.append((item["method"], item["url"], item.get("body")))
        else:
            path = request.raw_path.removeprefix("/v1.0")
            query = f"?{request.query}" if request.query else ""
            calls.append((request.method, path + query, request.json()))
    if writes_only:
        return [call for call in calls if call[0] != "GET"]
    return calls
