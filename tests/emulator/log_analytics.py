"""The Log Analytics query API (v1): ``/v1/workspaces/{id}/query`` and ``/v1/$batch``.

Answers in the service's wire format: ``tables[].columns[]/rows[]``, dynamic
cells as JSON text, datetimes with seven fractional digits, partial results as
a 200 whose body also carries ``error.code = "PartialError"``, semantic errors
as 400 ``BadArgumentError`` with the engine's message innermost, an unknown
workspace as 404 ``WorkspaceNotFoundError``.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tests.emulator.identity import refuse_unless_audience
from tests.emulator.workspace import QueryFailed, Workspace, parse_timespan, wire_value

if TYPE_CHECKING:
    from tests.emulator.server import Emulator, Fault


@dataclass
class LogAnalyticsState:
    workspace: Workspace = field(default_factory=Workspace)
    workspaces: set[str] = field(default_factory=set)

    def reset(self) -> None:
        from tests.emulator import WORKSPACE_ID

        self.workspace.reset()
        self.workspaces = {WORKSPACE_ID}


def error_body(code: str, message: str, inner: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "correlationId": str(uuid.uuid4())}
    if inner:
        error["innererror"] = inner
    return {"error": error}


def install(emulator: Emulator) -> None:
    state = LogAnalyticsState()
    state.reset()
    emulator.services["log_analytics"] = state
    emulator.log_analytics = state
    router = APIRouter()

    async def answer(
        workspace_id: str, body: dict[str, Any], path: str
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """One query's status, headers and body, faults applied."""
        query = str(body.get("query", ""))
        rule = emulator.take_fault("POST", path, query, scope="query")
        if rule is not None and rule.delay:
            await asyncio.sleep(rule.delay)
        if rule is not None and rule.status is not None:
            return rule.status, dict(rule.headers), _fault_body(rule)
        if workspace_id.lower() not in state.workspaces:
            return (
                404,
                {},
                error_body(
                    "WorkspaceNotFoundError",
                    f"Workspace {workspace_id} could not be found",
                ),
            )
        try:
            start, end = parse_timespan(body.get("timespan"), now=datetime.now(UTC))
            result = state.workspace.run(query, start=start, end=end)
        except (QueryFailed, ValueError) as failure:
            return (
                400,
                {},
                error_body(
                    "BadArgumentError",
                    "The request had some invalid properties",
                    {
                        "code": "SemanticError",
                        "message": "A semantic error occurred.",
                        "innererror": {"code": "SEM0100", "message": str(failure)},
                    },
                ),
            )
        rows = [
            [
                wire_value(column.type, value, dynamic_as_text=True)
                for column, value in zip(result.columns, row, strict=True)
            ]
            for row in result.rows
        ]
        payload: dict[str, Any] = {
            "tables": [
                {
                    "name": "PrimaryResult",
                    "columns": [{"name": c.name, "type": c.type} for c in result.columns],
                    "rows": rows,
                }
            ]
        }
        if rule is not None and rule.partial_rows is not None:
            payload["tables"][0]["rows"] = rows[: rule.partial_rows]
            payload["error"] = {
                "code": "PartialError",
                "message": "There were some errors when processing your query.",
                "details": [
                    {
                        "code": "EngineError",
                        "message": "Something went wrong processing your query on the server.",
                        "innererror": {
                            "code": "-2133196797",
                            "message": "Query result set has exceeded the internal data size limit 67108864 (E_QUERY_RESULT_SET_TOO_LARGE).",
                            "severity": 2,
                            "severityName": "Error",
                        },
                    }
                ],
            }
        return 200, {}, payload

    @router.post("/v1/workspaces/{workspace_id}/query")
    async def query(workspace_id: str, request: Request) -> Response:
        refused = refuse_unless_audience(request, emulator.audiences["log_analytics"])
        if refused is not None:
            return refused
        status, headers, body = await answer(workspace_id, await request.json(), request.url.path)
        return JSONResponse(body, status_code=status, headers=headers)

    @router.post("/v1/$batch")
    async def batch(request: Request) -> Response:
        refused = refuse_unless_audience(request, emulator.audiences["log_analytics"])
        if refused is not None:
            return refused
        responses = []
        for item in (await request.json()).get("requests", []):
            workspace_id = str(item.get("workspace", ""))
            status, headers, body = await answer(
                workspace_id, item.get("body") or {}, f"/v1/workspaces/{workspace_id}/query"
            )
            responses.append(
                {
                    "id": item.get("id"),
                    "status": status,
                    "headers": {"Content-Type": "application/json; charset=utf-8", **headers},
                    "body": body,
                }
            )
        return JSONResponse({"responses": responses})

    emulator.app.include_router(router)


def _fault_body(rule: Fault) -> dict[str, Any]:
    if isinstance(rule.body, dict):
        return rule.body
    codes = {429: "ThrottledError", 504: "GatewayTimeout", 403: "InsufficientAccessError"}
    status = rule.status or 500
    return error_body(codes.get(status, "ServiceError"), f"emulated {status}")
