"""The Microsoft Sentinel incidents API (Resource Manager) for the emulator.

Served as the REST reference documents it: incidents under a workspace,
``GET``/``PUT`` of an incident with its ``etag`` (a stale etag is refused with
412, ``title``/``severity``/``status`` are required, closing needs a
``classification``), the incident list (``$filter`` on
``properties/createdTimeUtc`` with ``gt``/``ge``/``lt``/``le``, ``$orderby``
on it, ``$top`` and a ``nextLink`` with a ``$skipToken`` to page on), the
``POST .../entities`` action, and comments ``PUT`` by a caller-chosen id (201
created, 200 updated, so the same id never makes a second comment).
Paths are matched without regard to case, as Resource Manager does.

Tests seed incidents with ``emulator.sentinel.add(incident)`` (the ``object``
of a trigger body, or a bare incident resource) and read them back from
``emulator.sentinel.incidents``.
"""

from __future__ import annotations

import copy
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tests.emulator.identity import refuse_unless_audience

if TYPE_CHECKING:
    from tests.emulator.server import Emulator

_PATH = re.compile(
    r"^(?P<incident>/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    r"Microsoft\.OperationalInsights/workspaces/[^/]+/providers/"
    r"Microsoft\.SecurityInsights/incidents(?:/(?P<name>[^/]+))?)"
    r"(?:/comments(?:/(?P<comment>[^/]+))?|/(?P<entities>entities))?$",
    re.IGNORECASE,
)
_FILTER = re.compile(r"^properties/createdTimeUtc (?P<op>gt|ge|lt|le) (?P<at>\S+)$", re.IGNORECASE)
MAX_COMMENT = 30_000


@dataclass
class SentinelState:
    # lower-cased incident resource id -> the incident resource
    incidents: dict[str, dict[str, Any]] = field(default_factory=dict)
    # lower-cased incident resource id -> comment id -> the comment resource
    comments: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # lower-cased incident resource id -> its entities (the entities action)
    entities: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.incidents.clear()
            self.comments.clear()
            self.entities.clear()

    def add(self, incident: dict[str, Any]) -> dict[str, Any]:
        """Seed an incident; it gets a fresh etag. As the service does, the
        listing leaves its ``relatedEntities`` out: the entities action has them."""
        stored = copy.deepcopy(incident)
        stored["etag"] = _etag()
        stored.setdefault("type", "Microsoft.SecurityInsights/Incidents")
        entities = stored.get("properties", {}).pop("relatedEntities", None) or []
        with self.lock:
            self.incidents[stored["id"].lower()] = stored
            self.entities[stored["id"].lower()] = entities
        return stored

    def incident(self, resource_id: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.incidents[resource_id.lower()])

    def comments_of(self, resource_id: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(self.comments.get(resource_id.lower(), {}))

    def touch(self, resource_id: str, **properties: Any) -> None:
        """Change an incident as an analyst would, which changes its etag."""
        with self.lock:
            stored = self.incidents[resource_id.lower()]
            stored["properties"].update(properties)
            stored["etag"] = _etag()


def install(emulator: Emulator) -> None:
    state = SentinelState()
    emulator.services["sentinel"] = state
    emulator.sentinel = state
    router = APIRouter()

    @router.api_route(
        "/subscriptions/{subscription}/resourceGroups/{rest:path}",
        methods=["GET", "PUT", "POST"],
    )
    async def sentinel(request: Request) -> Response:
        refused = refuse_unless_audience(request, emulator.audiences["arm"])
        if refused is not None:
            return refused
        match = _PATH.match(request.url.path)
        if match is None:
            return _error(404, "PathNotFound", f"no such resource: {request.url.path}")
        if "api-version" not in request.query_params:
            return _error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        key = match["incident"].lower()
        if match["entities"]:
            if request.method != "POST" or not match["name"]:
                return _error(405, "MethodNotAllowed", "entities is a POST action")
            with state.lock:
                if key not in state.incidents:
                    return _error(404, "NotFound", "the incident was not found")
                found = copy.deepcopy(state.entities.get(key, []))
            return JSONResponse({"entities": found, "metaData": []})
        if request.method == "POST":
            return _error(405, "MethodNotAllowed", "no such action")
        if match["comment"]:
            if request.method != "PUT":
                return _error(405, "MethodNotAllowed", "comments are written with PUT")
            return await _put_comment(state, key, match["comment"], request)
        if request.url.path.lower().endswith("/comments"):
            with state.lock:
                listed = list(state.comments.get(key, {}).values())
            return JSONResponse({"value": listed})
        if not match["name"]:
            return _list(state, key, request)
        if request.method == "GET":
            with state.lock:
                found = state.incidents.get(key)
                found = copy.deepcopy(found) if found else None
            if found is None:
                return _error(404, "NotFound", f"Incident {match['name']} was not found")
            return JSONResponse(found)
        return await _put_incident(state, key, match["incident"], match["name"], request)

    emulator.app.include_router(router)


def _list(state: SentinelState, key: str, request: Request) -> Response:
    """A page of the workspace's incidents, as ``$filter``/``$orderby``/``$top`` ask."""
    params = request.query_params
    with state.lock:
        prefix = key + "/"
        listed = [copy.deepcopy(i) for k, i in state.incidents.items() if k.startswith(prefix)]
    text = params.get("$filter")
    if text:
        match = _FILTER.match(text.strip())
        if match is None:
            return _error(400, "BadRequest", f"unsupported $filter: {text[:100]}")
        at = _instant(match["at"])
        test = {
            "gt": lambda v: v > at,
            "ge": lambda v: v >= at,
            "lt": lambda v: v < at,
            "le": lambda v: v <= at,
        }[match["op"].lower()]
        listed = [i for i in listed if test(_created(i))]
    order = (params.get("$orderby") or "").strip().lower()
    if order.startswith("properties/createdtimeutc"):
        listed.sort(key=_created, reverse=order.endswith(" desc"))
    skip = int(params.get("$skipToken") or 0)
    top = int(params.get("$top") or 50)
    page = listed[skip : skip + top]
    body: dict[str, Any] = {"value": page}
    if skip + top < len(listed):
        query = {k: v for k, v in params.items() if k != "$skipToken"}
        query["$skipToken"] = str(skip + top)
        body["nextLink"] = str(request.url.replace(query=urlencode(query)))
    return JSONResponse(body)


def _created(incident: dict[str, Any]) -> datetime:
    value = incident.get("properties", {}).get("createdTimeUtc")
    return _instant(value) if isinstance(value, str) else datetime.min.replace(tzinfo=UTC)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


async def _put_incident(
    state: SentinelState, key: str, resource_id: str, name: str, request: Request
) -> Response:
    body = await _json(request)
    if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
        return _error(400, "BadRequest", "the body needs properties")
    properties = body["properties"]
    missing = [k for k in ("title", "severity", "status") if not properties.get(k)]
    if missing:
        return _error(400, "BadRequest", f"missing required properties: {', '.join(missing)}")
    if properties["status"] == "Closed" and not properties.get("classification"):
        return _error(400, "BadRequest", "Classification is required when closing an incident")
    for label in properties.get("labels") or []:
        if not isinstance(label, dict) or not isinstance(label.get("labelName"), str):
            return _error(400, "BadRequest", "labels are objects with a labelName")
    with state.lock:
        known = state.incidents.get(key)
        etag = body.get("etag")
        if known is not None and etag is not None and etag != known["etag"]:
            return _error(
                412,
                "PreconditionFailed",
                "The etag does not match the incident's: it was changed since it was read",
            )
        stored = {
            "id": known["id"] if known else resource_id,
            "name": name,
            "type": "Microsoft.SecurityInsights/Incidents",
            "etag": _etag(),
            "properties": copy.deepcopy(properties),
        }
        state.incidents[key] = stored
        answer = copy.deepcopy(stored)
    return JSONResponse(answer, status_code=200 if known else 201)


async def _put_comment(
    state: SentinelState, key: str, comment_id: str, request: Request
) -> Response:
    body = await _json(request)
    message = body.get("properties", {}).get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message:
        return _error(400, "BadRequest", "properties.message is required")
    if len(message) > MAX_COMMENT:
        return _error(400, "BadRequest", f"the message is longer than {MAX_COMMENT} characters")
    with state.lock:
        if key not in state.incidents:
            return _error(404, "NotFound", "the incident was not found")
        comments = state.comments.setdefault(key, {})
        known = comments.get(comment_id.lower())
        comment = {
            "id": f"{state.incidents[key]['id']}/comments/{comment_id}",
            "name": comment_id,
            "type": "Microsoft.SecurityInsights/incidents/comments",
            "etag": _etag(),
            "properties": {
                "message": message,
                "createdTimeUtc": (known or {}).get("properties", {}).get("createdTimeUtc")
                or "2026-01-15T10:00:00Z",
                "author": {"objectId": "emulated", "name": "tokenward"},
            },
        }
        comments[comment_id.lower()] = comment
    return JSONResponse(comment, status_code=200 if known else 201)


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


def _etag() -> str:
    return f'"{uuid.uuid4()}"'


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
