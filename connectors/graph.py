"""Containment through Microsoft Graph: revoke, disable, confirm compromised, read back.

The requests are the plan's own (:mod:`playbooks.actions` built them and an
approver may have approved them): each goes out with exactly the method, path
and body the plan holds, through the msgraph-sdk request adapter, so the
token, TLS trust, kiota middleware and national-cloud base URL are the
client factory's. The typed request builders are not used for writes: the
one for ``PATCH /users/{id}`` adds ``@odata.type`` to the body, and then the
request sent would not be the request approved.

Many calls travel as Graph ``$batch`` requests of at most 20, several in
flight (``graph.concurrency``), as raw JSON through the same adapter:
msgraph-core 1.5.2's batch helpers drop JSON bodies, send ``depends_on`` for
``dependsOn`` and ignore item ids (research/api-seams.md §1.6). One call
alone goes out as itself. Sub-requests succeed or fail one by one; each
user's revoke and disable sit side by side without ``dependsOn``, because a
dependency turns one refused step into a 424 for the other and a refused
disable must not cancel the revoke (B12). Throttled and failing
sub-requests are sent again on their own ``Retry-After`` by the one retry
layer (:func:`connectors.retry.call_each_with_retries`).

Every answer is read as data (status, headers, body): ``200 {"value": true}``
and ``204`` from revokeSignInSessions are success, ``{"value": false}`` is
not confirmed (B01), a 204 from PATCH is success (B10), and every failure
keeps its status, ``error.code``, message, request ids and class (B14).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from kiota_abstractions.headers_collection import HeadersCollection
from kiota_abstractions.method import Method
from kiota_abstractions.native_response_handler import NativeResponseHandler
from kiota_abstractions.request_information import RequestInformation
from kiota_http.middleware.options import ResponseHandlerOption
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.graph_service_client import GraphServiceClient

from connectors.permissions import permission_hint
from connectors.retry import (
    RetryPolicy,
    Settled,
    call_each_with_retries,
    graph_answer_error,
    graph_error,
    header,
)
from playbooks.errors import (
    AuthenticationFailed,
    BadRequest,
    ConnectorError,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    Throttled,
)
from playbooks.identities import graph_user_segment, is_guid, is_upn
from playbooks.models import (
    ActionKind,
    ActionResult,
    ActionStatus,
    DirectoryUser,
    PlannedAction,
    Problem,
    Target,
)
from playbooks.ports import ExecutionContext
from playbooks.times import parse_time

logger = logging.getLogger(__name__)

#: Graph's own limit on sub-requests in one ``$batch``.
BATCH_LIMIT = 20
USER_FIELDS = (
    "id,userPrincipalName,accountEnabled,userType,onPremisesSyncEnabled,"
    "signInSessionsValidFromDateTime"
)
ROLE_FIELDS = "id,displayName,roleTemplateId"
_OPERATIONS = {
    ActionKind.REVOKE_SESSIONS: "revokeSignInSessions",
    ActionKind.DISABLE_ACCOUNT: "disableAccount",
    ActionKind.CONFIRM_COMPROMISED: "confirmCompromised",
}
_SYNCED_REFUSAL = "on-premises mastered"


@dataclass(frozen=True)
class GraphOptions:
    """How the responder spreads its calls (``[graph]`` in the settings)."""

    batch_size: int = BATCH_LIMIT
    concurrency: int = 4
    # Identity protection allows about one request a second per tenant and
    # throttles without Retry-After: never retry confirmCompromised sooner.
    identity_protection_wait: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= BATCH_LIMIT:
            raise ValueError(f"batch_size must be 1 to {BATCH_LIMIT}, not {self.batch_size}")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")


@dataclass(frozen=True)
class Call:
    """One Graph request, its id inside a batch, and what to call it in messages."""

    key: str
    method: str
    # Relative to the versioned base URL, query included: ``/users/{id}?$select=...``.
    path: str
    operation: str
    what: str
    subjects: tuple[str, ...]
    body: dict[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    """A 2xx answer, as data."""

    status: int
    headers: Mapping[str, str]
    body: Any


Sleep = Callable[[float], Awaitable[None]]


class GraphResponder:
    """A :class:`~playbooks.ports.Responder` and
    :class:`~playbooks.ports.DirectoryReader` over Microsoft Graph."""

    description = "Microsoft Graph"
    sends_requests = True

    def __init__(
        self,
        client: GraphServiceClient,
        *,
        policy: RetryPolicy,
        options: GraphOptions | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._adapter = client.request_adapter
        self._policy = policy
        self._options = options or GraphOptions()
        self._sleep = sleep
        self._slots = asyncio.Semaphore(self._options.concurrency)
        # Addresses already resolved to an object id in this run (B27).
        self._by_address: dict[str, str | None] = {}

    # -- reading -----------------------------------------------------------------

    async def read_users(self, targets: Sequence[Target]) -> list[DirectoryUser]:
        """Each target as Graph has it now, with its directory roles.

        A target known only by UPN is read by its percent-encoded UPN (``#EXT#``
        becomes ``%23EXT%23``, B03); one Graph does not know by UPN is looked
        up as a mail address among ``proxyAddresses`` (B27).
        """
        keys = [_key(target) for target in targets]
        readings = await self._read(keys)

        # Addresses that are not a UPN: find the user by proxyAddresses, then read again.
        retry = [
            key
            for key in keys
            if isinstance(readings[key].error_class, str)
            and readings[key].error_class == "not_found"
            and is_upn(key)
        ]
        if retry:
            found = await self._resolve_addresses(retry)
            again = await self._read([oid for key in retry if (oid := found.get(key))])
            for key in retry:
                object_id = found.get(key)
                if object_id and again[object_id].found:
                    readings[key] = again[object_id].model_copy(
                        update={"key": key, "resolved_by": "email->proxyAddresses->objectId"}
                    )
        return [readings[key] for key in keys]

    async def _read(self, keys: Sequence[str]) -> dict[str, DirectoryUser]:
        calls: list[Call] = []
        for index, key in enumerate(keys):
            segment = key if is_guid(key) else graph_user_segment(key)
            calls.append(
                Call(
                    key=f"user-{index}",
                    method="GET",
                    path=f"/users/{segment}?$select={USER_FIELDS}",
                    operation="readUser",
                    what=f"reading {key}",
                    subjects=(key,),
                )
            )
            calls.append(
                Call(
                    key=f"roles-{index}",
                    method="GET",
                    path=(
                        f"/users/{segment}/transitiveMemberOf/microsoft.graph.directoryRole"
                        f"?$select={ROLE_FIELDS}"
                    ),
                    operation="readDirectoryRoles",
                    what=f"reading the directory roles of {key}",
                    subjects=(key,),
                )
            )
        settled = await self._send_all(calls)
        return {
            key: _reading(key, settled[f"user-{i}"], settled[f"roles-{i}"])
            for i, key in enumerate(keys)
        }

    async def _resolve_addresses(self, addresses: Sequence[str]) -> dict[str, str | None]:
        unknown = [item for item in addresses if item not in self._by_address]
        calls = [
            Call(
                key=f"address-{index}",
                method="GET",
                path=(
                    "/users?$filter="
                    + quote(f"proxyAddresses/any(x:x eq 'smtp:{_odata(item)}')", safe="")
                    + "&$count=true&$select=id,userPrincipalName"
                ),
                operation="findUserByAddress",
                what=f"finding the user whose mail address is {item}",
                subjects=(item,),
                # An advanced query: without both, Graph answers 400 (B27).
                headers={"ConsistencyLevel": "eventual"},
            )
            for index, item in enumerate(unknown)
        ]
        settled = await self._send_all(calls) if calls else {}
        for index, item in enumerate(unknown):
            answer = settled[f"address-{index}"].value
            matches = answer.body.get("value", []) if isinstance(answer, Answer) else []
            self._by_address[item] = str(matches[0]["id"]) if len(matches) == 1 else None
        return {item: self._by_address[item] for item in addresses}

    # -- acting ------------------------------------------------------------------

    async def execute(
        self, actions: Sequence[PlannedAction], context: ExecutionContext
    ) -> list[ActionResult]:
        """One result per action, in order; the comment on the incident is not
        this responder's (the incident write-back step posts it)."""
        results: dict[str, ActionResult] = {}

        # Revoke and disable: every user's calls side by side in batches.
        per_user = [
            action
            for action in actions
            if action.action in (ActionKind.REVOKE_SESSIONS, ActionKind.DISABLE_ACCOUNT)
        ]
        by_key = {action.id: action for action in per_user}

        def settled(finished: Mapping[str, Settled]) -> None:
            done = [_result(by_key[key], outcome) for key, outcome in finished.items()]
            results.update({result.action_id: result for result in done})
            context.settled(done)

        if per_user:
            await self._send_all([_call(action) for action in per_user], on_settled=settled)

        # Confirm compromised: one call for all its users, never retried sooner than 1 s.
        policy = self._identity_protection_policy()
        for action in actions:
            if action.action is ActionKind.CONFIRM_COMPROMISED:
                outcome = await self._send_all([_call(action)], policy=policy)
                done = [_result(action, outcome[action.id])]
                results[action.id] = done[0]
                context.settled(done)

        # The incident comment: left to the engine's write-back step.
        for action in actions:
            if action.id not in results:
                results[action.id] = ActionResult(
                    action_id=action.id,
                    status=ActionStatus.SKIPPED,
                    detail="not a Graph call: the incident write-back step posts it",
                )
        return [results[action.id] for action in actions]

    def _identity_protection_policy(self) -> RetryPolicy:
        wait = max(self._policy.wait_initial, self._options.identity_protection_wait)
        return RetryPolicy(
            max_attempts=self._policy.max_attempts,
            wait_initial=wait,
            wait_max=max(self._policy.wait_max, wait),
            deadline=self._policy.deadline,
        )

    # -- sending -----------------------------------------------------------------

    async def _send_all(
        self,
        calls: Sequence[Call],
        *,
        policy: RetryPolicy | None = None,
        on_settled: Callable[[Mapping[str, Settled]], None] | None = None,
    ) -> dict[str, Settled]:
        by_key = {call.key: call for call in calls}
        return await call_each_with_retries(
            [call.key for call in calls],
            lambda keys: self._round([by_key[key] for key in keys]),
            service="graph",
            name=lambda key: by_key[key].operation,
            subjects=lambda key: by_key[key].subjects,
            policy=policy or self._policy,
            on_settled=on_settled,
            sleep=self._sleep,
        )

    async def _round(self, calls: Sequence[Call]) -> dict[str, Answer | ConnectorError]:
        if len(calls) == 1:
            return {calls[0].key: await self._one(calls[0])}
        size = self._options.batch_size
        chunks = [calls[start : start + size] for start in range(0, len(calls), size)]
        answers: dict[str, Answer | ConnectorError] = {}
        for part in await asyncio.gather(*(self._batch(chunk) for chunk in chunks)):
            answers.update(part)
        return answers

    async def _one(self, call: Call) -> Answer | ConnectorError:
        async with self._slots:
            logger.info("Graph %s %s", call.method, call.what)
            try:
                response = await self._send(call.method, call.path, call.body, call.headers)
            except Exception as failure:
                return _translated(failure, what=call.what)
        body = _json(response)
        error = graph_answer_error(response.status_code, response.headers, body, what=call.what)
        return error or Answer(response.status_code, _headers(response), body)

    async def _batch(self, calls: Sequence[Call]) -> dict[str, Answer | ConnectorError]:
        what = f"a $batch of {len(calls)} calls"
        payload = {"requests": [_sub_request(call) for call in calls]}
        async with self._slots:
            logger.info("Graph POST $batch of %d: %s", len(calls), _operations(calls))
            try:
                response = await self._send("POST", "/$batch", payload, {})
            except Exception as failure:
                error = _translated(failure, what=what)
                return {call.key: error for call in calls}
        body = _json(response)
        refused = graph_answer_error(response.status_code, response.headers, body, what=what)
        if refused is not None:
            return {call.key: refused for call in calls}
        batch_request_id = header(response.headers, "request-id")
        items = {
            str(item.get("id")): item
            for item in (body.get("responses", []) if isinstance(body, dict) else [])
            if isinstance(item, dict)
        }
        answers: dict[str, Answer | ConnectorError] = {}
        for call in calls:
            item = items.get(call.key)
            if item is None:
                answers[call.key] = ServiceUnavailable(
                    f"Microsoft Graph's $batch answer has nothing for {call.what}"
                )
                continue
            headers = {str(k): str(v) for k, v in (item.get("headers") or {}).items()}
            if batch_request_id and not header(headers, "request-id"):
                headers["request-id"] = batch_request_id
            status = int(item.get("status", 0))
            answered = graph_answer_error(status, headers, item.get("body"), what=call.what)
            answers[call.key] = answered or Answer(status, headers, item.get("body"))
        return answers

    async def _send(
        self, method: str, path: str, body: dict[str, Any] | None, headers: Mapping[str, str]
    ) -> httpx.Response:
        info = RequestInformation(Method[method])
        info.url = self._adapter.base_url + path
        info.headers = HeadersCollection()
        info.headers.try_add("Accept", "application/json")
        for name, value in headers.items():
            info.headers.try_add(name, value)
        if body is not None:
            info.headers.try_add("Content-Type", "application/json")
            info.content = json.dumps(body).encode()
        # The answer is read as data: statuses are classified here, not raised by kiota.
        info.add_request_options([ResponseHandlerOption(NativeResponseHandler())])
        response: httpx.Response | None = await self._adapter.send_primitive_async(
            info, "bytes", {"XXX": ODataError}
        )
        if response is None:
            raise ServiceUnavailable(f"Microsoft Graph gave no answer to {method} {path}")
        return response


# -- from plan to call, from answer to result -------------------------------------


def _key(target: Target) -> str:
    return target.user_id or target.user_principal_name


def _call(action: PlannedAction) -> Call:
    request = action.request
    operation = _OPERATIONS[action.action]
    label = ", ".join(target.label for target in action.targets)
    return Call(
        key=action.id,
        method=request.method,
        path=request.path,
        body=request.body,
        operation=operation,
        what=f"{operation} for {label}",
        subjects=tuple(target.label for target in action.targets),
    )


def _sub_request(call: Call) -> dict[str, Any]:
    item: dict[str, Any] = {"id": call.key, "method": call.method, "url": call.path}
    headers = dict(call.headers)
    if call.body is not None:
        headers["Content-Type"] = "application/json"
        item["body"] = call.body
    if headers:
        item["headers"] = headers
    return item


def _result(action: PlannedAction, settled: Settled) -> ActionResult:
    value = settled.value
    base: dict[str, Any] = {
        "action_id": action.id,
        "attempts": settled.attempts,
        "duration_ms": settled.elapsed_ms,
    }
    if isinstance(value, ConnectorError):
        return _failure(action, value, base)
    answer: Answer = value
    base |= {"http_status": answer.status, "request_id": header(answer.headers, "request-id")}
    base["client_request_id"] = header(answer.headers, "client-request-id")
    if action.action is ActionKind.REVOKE_SESSIONS:
        confirmed = answer.body.get("value") if isinstance(answer.body, dict) else None
        if confirmed is False:
            # B01: a 2xx that says false is not success.
            return ActionResult(
                **base,
                status=ActionStatus.UNCONFIRMED,
                detail="Graph answered 200 with value false: the revoke was not confirmed",
                problem=Problem.NOT_VERIFIED,
                escalate=True,
            )
        said = "204" if answer.status == 204 else f"{answer.status} value {confirmed}"
        return ActionResult(
            **base,
            status=ActionStatus.SUCCEEDED,
            detail=f"sessions revoked (Graph answered {said})",
        )
    done = {
        ActionKind.DISABLE_ACCOUNT: "account disabled",
        ActionKind.CONFIRM_COMPROMISED: "confirmed compromised in Identity Protection",
    }[action.action]
    return ActionResult(
        **base, status=ActionStatus.SUCCEEDED, detail=f"{done} (Graph answered {answer.status})"
    )


def _failure(action: PlannedAction, error: ConnectorError, base: dict[str, Any]) -> ActionResult:
    problem = _problem(error)
    detail = f"{type(error).__name__}: {error}"
    if problem is Problem.FAILED_PERMISSION:
        hint = permission_hint(action.action)
        detail += f"; {hint}" if hint else ""
        detail += (
            " (for an administrator, also a directory role allowed to act on them, "
            "such as Privileged Authentication Administrator)"
        )
    if problem is Problem.REQUIRES_ONPREM:
        detail += "; the account is synced from on-premises: disable it in AD DS"
    # A request that may have reached Graph without an answer: its effect is unknown.
    status = (
        ActionStatus.UNKNOWN
        if isinstance(error, ServiceUnavailable) and error.status is None
        else ActionStatus.FAILED
    )
    return ActionResult(
        **base,
        status=status,
        detail=detail,
        http_status=error.status,
        error_code=error.code,
        request_id=error.request_id,
        client_request_id=error.client_request_id,
        error_message=error.service_message,
        error_class=error.error_class,
        problem=problem,
        escalate=True,
    )


def _problem(error: ConnectorError) -> Problem:
    if isinstance(error, PermissionDenied | AuthenticationFailed):
        return Problem.FAILED_PERMISSION
    if isinstance(error, BadRequest) and _SYNCED_REFUSAL in str(error):
        return Problem.REQUIRES_ONPREM
    if isinstance(error, BadRequest):
        return Problem.BAD_REQUEST
    if isinstance(error, NotFound):
        return Problem.NOT_FOUND
    if isinstance(error, Throttled):
        return Problem.THROTTLED
    return Problem.TRANSIENT


def _reading(key: str, user: Settled, roles: Settled) -> DirectoryUser:
    if user.error is not None:
        return DirectoryUser(key=key, error=str(user.error), error_class=user.error.error_class)
    body = user.value.body if isinstance(user.value.body, dict) else {}
    role_names: list[str] = []
    if roles.error is None and isinstance(roles.value.body, dict):
        for role in roles.value.body.get("value", []):
            role_names += [
                str(role[name]) for name in ("displayName", "roleTemplateId") if role.get(name)
            ]
    return DirectoryUser(
        key=key,
        id=str(body.get("id") or ""),
        user_principal_name=str(body.get("userPrincipalName") or ""),
        account_enabled=body.get("accountEnabled"),
        user_type=str(body.get("userType") or ""),
        on_premises_sync_enabled=body.get("onPremisesSyncEnabled"),
        sign_in_sessions_valid_from=_instant(body.get("signInSessionsValidFromDateTime")),
        roles=tuple(role_names),
        roles_known=roles.error is None,
        resolved_by="object_id" if is_guid(key) else "upn",
    )


def _translated(failure: BaseException, *, what: str) -> ConnectorError:
    error = graph_error(failure, what=what)
    if error is None:
        raise failure
    return error


def _instant(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return parse_time(str(value)).value
    except ValueError:
        return None


def _json(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _headers(response: httpx.Response) -> dict[str, str]:
    return {key.lower(): value for key, value in response.headers.items()}


def _odata(value: str) -> str:
    """A value inside an OData string literal: quotes doubled."""
    return value.replace("'", "''")


def _operations(calls: Sequence[Call]) -> str:
    counts: dict[str, int] = {}
    for call in calls:
        counts[call.operation] = counts.get(call.operation, 0) + 1
    return ", ".join(f"{count} {name}" for name, count in counts.items())


__all__ = ["BATCH_LIMIT", "GraphOptions", "GraphResponder"]
