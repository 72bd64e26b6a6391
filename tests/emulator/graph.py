"""Microsoft Graph v1.0 for the emulator: the users tokenward contains.

Served directly and inside ``POST /v1.0/$batch`` (at most 20 sub-requests,
relative or absolute URLs, ``dependsOn`` honoured), with one dispatcher, so a
sub-request behaves exactly as the same request sent on its own:

* ``GET /users/{id or UPN}`` — without ``$select`` only the default
  properties (no ``accountEnabled``, as Graph does: B10); with it, exactly the
  selected ones;
* ``GET /users?$filter=proxyAddresses/any(...)`` — 400
  ``Request_UnsupportedQuery`` unless ``ConsistencyLevel: eventual`` and
  ``$count=true`` are sent (B27);
* ``GET /users/{id}/transitiveMemberOf/microsoft.graph.directoryRole``;
* ``POST /users/{id}/revokeSignInSessions`` — moves
  ``signInSessionsValidFromDateTime`` and answers ``200 {"value": true}``, or
  ``204``, or ``200 {"value": false}`` without a change (B01), or 403 for a
  user whose revoke the app may not do (an admin, B12);
* ``PATCH /users/{id}`` — 204; a user synced from on-premises refuses
  ``accountEnabled`` with 400 ``Request_BadRequest`` (B12);
* ``POST /identityProtection/riskyUsers/confirmCompromised`` — 204; about one
  call a second per tenant, throttled with no ``Retry-After`` when faster.

Faults: ``emulator.fault(...)`` with ``scope="request"`` answers whole HTTP
requests (a direct call or a whole ``$batch``); ``scope="query"`` answers one
Graph call wherever it arrives, on its own or as a sub-request (``path`` is
searched in the sub-request's decoded path, e.g. ``/users/u-3/revokeSignIn``).
``graph.throttle_rate`` throttles that share of calls with 429s (and
``batch_throttle_rate`` that share of whole ``$batch`` requests), chosen by a
hash of the call and how often it was seen, so a run is repeatable whatever
order concurrent batches arrive in.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tests.emulator.identity import refuse_unless_audience

if TYPE_CHECKING:
    from tests.emulator.server import Emulator

BATCH_LIMIT = 20
DEFAULT_PROPERTIES = (
    "id",
    "displayName",
    "userPrincipalName",
    "mail",
    "givenName",
    "surname",
    "jobTitle",
)
SYNCED_MESSAGE = (
    "Unable to update the specified properties for on-premises mastered Directory Sync "
    "objects or objects currently undergoing migration."
)
REVOKE_DENIED_MESSAGE = "Access to invalidate refresh tokens operation is denied."


@dataclass
class GraphUser:
    """One directory user and how the emulated Graph answers for it."""

    id: str
    user_principal_name: str
    display_name: str = ""
    account_enabled: bool = True
    user_type: str = "Member"
    on_premises_sync_enabled: bool | None = None
    sign_in_sessions_valid_from: str = "2025-01-01T00:00:00Z"
    mail: str = ""
    proxy_addresses: list[str] = field(default_factory=list)
    # directoryRole objects: {"id", "displayName", "roleTemplateId"}.
    roles: list[dict[str, str]] = field(default_factory=list)
    # "true": 200 {"value": true}; "204": no content; "false": 200 {"value": false}.
    revoke_answer: str = "true"
    # The app may not revoke this user's sessions (an admin without the role).
    revoke_denied: bool = False

    def resource(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "displayName": self.display_name or self.user_principal_name.split("@")[0],
            "userPrincipalName": self.user_principal_name,
            "mail": self.mail or None,
            "givenName": None,
            "surname": None,
            "jobTitle": None,
            "accountEnabled": self.account_enabled,
            "userType": self.user_type,
            "onPremisesSyncEnabled": self.on_premises_sync_enabled,
            "signInSessionsValidFromDateTime": self.sign_in_sessions_valid_from,
            "proxyAddresses": list(self.proxy_addresses),
        }


@dataclass
class GraphState:
    users: dict[str, GraphUser] = field(default_factory=dict)
    confirmed_compromised: list[list[str]] = field(default_factory=list)
    # Share of calls (alone or inside a batch) answered with a 429 (0 to 1).
    throttle_rate: float = 0.0
    # Share of whole $batch requests answered with a 429.
    batch_throttle_rate: float = 0.0
    throttle_retry_after: str | None = "0.01"
    # confirmCompromised faster than this many seconds apart is throttled.
    confirm_min_interval: float = 0.0
    _last_confirm: float = 0.0
    _seen: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        self.users.clear()
        self.confirmed_compromised.clear()
        self.throttle_rate = 0.0
        self.batch_throttle_rate = 0.0
        self.throttle_retry_after = "0.01"
        self.confirm_min_interval = 0.0
        self._last_confirm = 0.0
        self._seen.clear()

    def add_user(self, upn: str, user_id: str | None = None, **values: Any) -> GraphUser:
        user = GraphUser(
            id=user_id or str(uuid.uuid5(uuid.NAMESPACE_DNS, upn.lower())),
            user_principal_name=upn,
            **values,
        )
        self.users[user.id] = user
        return user

    def find(self, key: str) -> GraphUser | None:
        if key in self.users:
            return self.users[key]
        lowered = key.lower()
        for user in self.users.values():
            if user.id.lower() == lowered or user.user_principal_name.lower() == lowered:
                return user
        return None

    def throttled(self, what: str, rate: float | None = None) -> bool:
        """Whether this occurrence of *what* is one of the throttled share."""
        share = self.throttle_rate if rate is None else rate
        if share <= 0:
            return False
        self._seen[what] += 1
        digest = hashlib.sha256(f"{what}#{self._seen[what]}".encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32 < share

    def throttled_batch(self) -> bool:
        return self.throttled("POST /v1.0/$batch", self.batch_throttle_rate)


Answer = tuple[int, dict[str, str], Any]


def graph_error(status: int, code: str, message: str | None, **headers: str) -> Answer:
    request_id = str(uuid.uuid4())
    return (
        status,
        {"request-id": request_id, "client-request-id": request_id, **headers},
        {
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": request_id,
                    "client-request-id": request_id,
                },
            }
        },
    )


def _throttle_answer(state: GraphState) -> Answer:
    extra = {"Retry-After": state.throttle_retry_after} if state.throttle_retry_after else {}
    return graph_error(
        429,
        "TooManyRequests",
        "Too many requests. Retry after the value specified in the Retry-After header.",
        **extra,
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Dispatcher:
    """Answers one Graph call, sent on its own or inside a batch."""

    def __init__(self, emulator: Emulator, state: GraphState) -> None:
        self.emulator = emulator
        self.state = state

    def answer(
        self, method: str, path: str, query: str, body: Any, headers: dict[str, str]
    ) -> Answer:
        method = method.upper()
        path = re.sub(r"/{2,}", "/", path)
        rule = self.emulator.take_fault(
            method, path, json.dumps(body) if body is not None else "", scope="query"
        )
        if rule is not None and rule.status is not None:
            rule_body = rule.body
            if rule_body is None and rule.status >= 400:
                return graph_error(rule.status, "UnknownError", None, **rule.headers)
            return rule.status, dict(rule.headers), rule_body
        if self.state.throttled(f"{method} {path}"):
            return _throttle_answer(self.state)
        params = {key: values[-1] for key, values in parse_qs(query).items()}
        return self._route(method, path, params, body, headers)

    def _route(
        self, method: str, path: str, params: dict[str, str], body: Any, headers: dict[str, str]
    ) -> Answer:
        if path == "/v1.0/identityProtection/riskyUsers/confirmCompromised" and method == "POST":
            return self._confirm(body)
        if path == "/v1.0/users" and method == "GET":
            return self._list_users(params, headers)
        match = re.fullmatch(r"/v1\.0/users/([^/]+)(/.*)?", path)
        if match is None:
            return graph_error(400, "BadRequest", f"Resource not found for the segment '{path}'.")
        key, rest = match.group(1), match.group(2) or ""
        user = self.state.find(key)
        if user is None:
            return graph_error(
                404,
                "Request_ResourceNotFound",
                f"Resource '{key}' does not exist or one of its queried reference-property "
                "objects are not present.",
            )
        if rest == "" and method == "GET":
            return 200, {}, _selected(user, params.get("$select"))
        if rest == "" and method == "PATCH":
            return self._patch(user, body)
        if rest == "/revokeSignInSessions" and method == "POST":
            return self._revoke(user)
        if rest == "/transitiveMemberOf/microsoft.graph.directoryRole" and method == "GET":
            roles = [{"@odata.type": "#microsoft.graph.directoryRole", **r} for r in user.roles]
            return 200, {}, {"value": roles}
        return graph_error(405, "Request_BadRequest", f"{method} {rest or '/'} is not supported")

    def _revoke(self, user: GraphUser) -> Answer:
        if user.revoke_denied:
            return graph_error(403, "Authorization_RequestDenied", REVOKE_DENIED_MESSAGE)
        if user.revoke_answer == "false":
            return 200, {}, {"@odata.context": _context("Edm.Boolean"), "value": False}
        user.sign_in_sessions_valid_from = _now()
        if user.revoke_answer == "204":
            return 204, {}, None
        return 200, {}, {"@odata.context": _context("Edm.Boolean"), "value": True}

    def _patch(self, user: GraphUser, body: Any) -> Answer:
        if not isinstance(body, dict) or not body:
            return graph_error(400, "Request_BadRequest", "The request body is empty or not JSON.")
        if "accountEnabled" in body and user.on_premises_sync_enabled:
            return graph_error(400, "Request_BadRequest", SYNCED_MESSAGE)
        if "accountEnabled" in body:
            user.account_enabled = bool(body["accountEnabled"])
        return 204, {}, None

    def _confirm(self, body: Any) -> Answer:
        ids = body.get("userIds") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids:
            return graph_error(400, "BadRequest", "userIds is required.")
        moment = time.monotonic()
        if self.state.confirm_min_interval and (
            moment - self.state._last_confirm < self.state.confirm_min_interval
        ):
            # Identity protection: about 1 request/s per tenant, and no Retry-After.
            return graph_error(429, "TooManyRequests", "Too many requests.")
        self.state._last_confirm = moment
        for item in ids:
            if self.state.find(str(item)) is None:
                return graph_error(404, "Request_ResourceNotFound", f"User '{item}' not found.")
        self.state.confirmed_compromised.append([str(item) for item in ids])
        return 204, {}, None

    def _list_users(self, params: dict[str, str], headers: dict[str, str]) -> Answer:
        wanted = params.get("$filter", "")
        match = re.fullmatch(r"proxyAddresses/any\(x:x eq '([^']+)'\)", wanted)
        if match is None:
            return graph_error(400, "Request_UnsupportedQuery", "Unsupported query.")
        advanced = headers.get("consistencylevel", "").lower() == "eventual"
        if not advanced or params.get("$count", "").lower() != "true":
            return graph_error(
                400,
                "Request_UnsupportedQuery",
                "Unsupported or invalid query filter clause specified for property "
                "'proxyAddresses' of resource 'User'.",
            )
        address = match.group(1).lower()
        found = [
            _selected(user, params.get("$select"))
            for user in self.state.users.values()
            if address in (item.lower() for item in user.proxy_addresses)
        ]
        return 200, {}, {"@odata.count": len(found), "value": found}


def _selected(user: GraphUser, select: str | None) -> dict[str, Any]:
    resource = user.resource()
    names = [name.strip() for name in select.split(",")] if select else DEFAULT_PROPERTIES
    picked = {name: resource.get(name) for name in names if name in resource}
    return {"@odata.context": _context("users/$entity"), **picked}


def _context(what: str) -> str:
    return f"https://graph.microsoft.com/v1.0/$metadata#{what}"


def install(emulator: Emulator) -> None:
    state = GraphState()
    emulator.services["graph"] = state
    emulator.graph = state
    dispatcher = Dispatcher(emulator, state)
    router = APIRouter()

    @router.post("/v1.0/$batch")
    async def batch(request: Request) -> Response:
        refused = refuse_unless_audience(request, emulator.audiences["graph"])
        if refused is not None:
            return refused
        if state.throttled_batch():
            return _response(_throttle_answer(state))
        try:
            payload = json.loads(await request.body())
            items = payload["requests"]
        except (ValueError, KeyError, TypeError):
            return _response(graph_error(400, "BadRequest", "Invalid batch payload."))
        if len(items) > BATCH_LIMIT:
            return _response(
                graph_error(
                    400,
                    "BadRequest",
                    f"The number of requests in a batch exceeds the maximum of {BATCH_LIMIT}.",
                )
            )
        responses: list[dict[str, Any]] = []
        statuses: dict[str, int] = {}
        for item in items:
            depends = item.get("dependsOn") or []
            if any(statuses.get(str(d), 0) >= 400 for d in depends):
                status, headers, body = 424, {}, {"error": {"code": "FailedDependency"}}
            else:
                url = urlsplit(str(item.get("url", "")))
                path = "/v1.0" + unquote(re.sub(r"^/?(v1\.0/)?", "/", url.path))
                status, headers, body = dispatcher.answer(
                    str(item.get("method", "GET")),
                    path,
                    url.query,
                    item.get("body"),
                    {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()},
                )
            statuses[str(item.get("id"))] = status
            entry: dict[str, Any] = {"id": item.get("id"), "status": status, "headers": headers}
            if body is not None:
                entry["body"] = body
            responses.append(entry)
        return JSONResponse({"responses": responses}, headers={"request-id": str(uuid.uuid4())})

    @router.api_route("/v1.0/users", methods=["GET"])
    @router.api_route("/v1.0/users/{rest:path}", methods=["GET", "POST", "PATCH"])
    @router.api_route("/v1.0/identityProtection/riskyUsers/confirmCompromised", methods=["POST"])
    async def direct(request: Request) -> Response:
        refused = refuse_unless_audience(request, emulator.audiences["graph"])
        if refused is not None:
            return refused
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return _response(graph_error(400, "BadRequest", "The body is not JSON."))
        headers = {key.lower(): value for key, value in request.headers.items()}
        return _response(
            dispatcher.answer(
                request.method, request.scope["path"], request.url.query, body, headers
            )
        )

    emulator.app.include_router(router)


def _response(answer: Answer) -> Response:
    status, headers, body = answer
    headers = {"request-id": str(uuid.uuid4()), **headers}
    if body is None:
        return Response(status_code=status, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)
