"""Azure Resource Manager for the emulator: enough to prove the ARM client's
wire contract (api-version, bearer token for the ARM audience).

The Sentinel incident and comment routes are in ``sentinel.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tests.emulator.identity import refuse_unless_audience

if TYPE_CHECKING:
    from tests.emulator.server import Emulator


def install(emulator: Emulator) -> None:
    router = APIRouter()

    @router.get("/subscriptions/{subscription_id}")
    async def subscription(subscription_id: str, request: Request) -> Response:
        refused = refuse_unless_audience(request, emulator.audiences["arm"])
        if refused is not None:
            return refused
        if "api-version" not in request.query_params:
            return JSONResponse(
                {
                    "error": {
                        "code": "MissingApiVersionParameter",
                        "message": "The api-version query parameter (?api-version=) is required for all requests.",
                    }
                },
                status_code=400,
            )
        return JSONResponse(
            {
                "id": f"/subscriptions/{subscription_id}",
                "subscriptionId": subscription_id,
                "displayName": "Emulated subscription",
                "state": "Enabled",
            }
        )

    emulator.app.include_router(router)
