"""Defender XDR advanced hunting through Graph: ``POST /v1.0/security/runHuntingQuery``.

The SDK posts to the namespace-qualified path
(``/security/microsoft.graph.security.runHuntingQuery``); the docs show the
short one; both are served. Results come as ``schema`` (``name``/``type``, or
``Name``/``Type`` as one documented example has it) and ``results`` objects
with ISO datetimes and string GUIDs, which kiota then converts on its own.
The data is the same emulated workspace Log Analytics reads, so a hunt can be
split across the two services over one set of rows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tests.emulator.identity import refuse_unless_audience
from tests.emulator.workspace import QueryFailed, parse_timespan, wire_value

if TYPE_CHECKING:
    from tests.emulator.server import Emulator

_TYPES = {
    "string": "String",
    "datetime": "DateTime",
    "dynamic": "Object",
    "bool": "Boolean",
    "int": "Int32",
    "long": "Int64",
    "real": "Double",
}
PATHS = (
    "/v1.0/security/runHuntingQuery",
    "/v1.0/security/microsoft.graph.security.runHuntingQuery",
)


@dataclass
class DefenderState:
    # "name" or "Name": the casing of the schema's keys.
    schema_keys: str = "name"
    # Defender's dynamic columns as nested JSON (False) or JSON text (True).
    dynamic_as_text: bool = False

    def reset(self) -> None:
        self.schema_keys = "name"
        self.dynamic_as_text = False


def graph_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": "emulated-request-id",
                },
            }
        },
        status_code=status,
    )


def install(emulator: Emulator) -> None:
    state = DefenderState()
    emulator.services["defender"] = state
    emulator.defender = state
    router = APIRouter()

    async def run_hunting_query(request: Request) -> Response:
        refused = refuse_unless_audience(request, emulator.audiences["graph"])
        if refused is not None:
            return graph_error(
                401, "InvalidAuthenticationToken", "Access token validation failure."
            )
        body = await request.json()
        query = str(body.get("query") or body.get("Query") or "")
        rule = emulator.take_fault("POST", request.url.path, query, scope="query")
        if rule is not None and rule.delay:
            await asyncio.sleep(rule.delay)
        if rule is not None and rule.status is not None:
            return rule.response()
        workspace = emulator.log_analytics.workspace
        try:
            start, end = parse_timespan(
                body.get("timespan") or body.get("Timespan"), now=datetime.now(UTC)
            )
            result = workspace.run(query, start=start, end=end)
        except (QueryFailed, ValueError) as failure:
            return graph_error(400, "BadRequest", f"Query could not be parsed or run: {failure}")
        key, kind = ("Name", "Type") if state.schema_keys == "Name" else ("name", "type")
        schema = [{key: c.name, kind: _TYPES.get(c.type, "String")} for c in result.columns]
        results = [
            {
                c.name: wire_value(c.type, value, dynamic_as_text=state.dynamic_as_text)
                for c, value in zip(result.columns, row, strict=True)
            }
            for row in result.rows
        ]
        if rule is not None and rule.partial_rows is not None:
            results = results[: rule.partial_rows]
        return JSONResponse(
            {
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.security.huntingQueryResults",
                "schema": schema,
                "results": results,
            }
        )

    for path in PATHS:
        router.add_api_route(path, run_hunting_query, methods=["POST"])
    emulator.app.include_router(router)


__all__ = ["PATHS", "DefenderState", "install"]
