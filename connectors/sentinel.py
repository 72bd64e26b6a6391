"""Microsoft Sentinel incidents: comments, labels and listings, through Resource Manager.

A plain azure-core pipeline (:func:`connectors.clients.arm_client`) rather
than ``azure-mgmt-securityinsight``, whose only stable release speaks a 2021
api-version through the retired ``msrest``. The api-version is a setting.

* A comment is a ``PUT …/incidents/{id}/comments/{commentId}`` with an id the
  caller picks: the same id updates the comment (200) instead of adding one
  (201), so a retried write, or a run repeated after a crash, never leaves a
  second comment. The PUT is therefore safe to retry even after a timeout.
* Labels are part of the incident: ``GET`` it, change the labels tokenward owns
  (those with its prefix) and nothing else, and ``PUT`` the writable
  properties back with the ``etag`` read. Someone else's change in between is
  refused with 412 (or 409); tokenward then reads the incident again and
  retries, a bounded number of times.

* The incident list (for reconciliation) is read a page at a time,
  filtered and ordered by creation time, following ``nextLink``; an
  incident's entities come from its ``entities`` action, as the list does
  not carry them.

Every call goes through the one retry layer; failures leave this module as
:mod:`playbooks.errors` types that say which incident and what was refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from azure.core import AsyncPipelineClient
from azure.core.exceptions import HttpResponseError
from azure.core.rest import AsyncHttpResponse, HttpRequest

from connectors.retry import (
    REQUEST_ID_HEADERS,
    RetryPolicy,
    azure_error,
    call_with_retries,
    header,
)
from playbooks.errors import BadRequest, ConnectorError, ServiceUnavailable
from playbooks.identities import is_guid
from playbooks.incidents import INCIDENT_ID, WORKSPACE_ID
from playbooks.ports import CallAttempt, IncidentPage, IncidentWrite, report_attempt

logger = logging.getLogger(__name__)

SERVICE = "Microsoft Sentinel"
# The properties an incident PUT may carry (the REST reference's request body);
# read-only ones such as incidentNumber or additionalData are left out.
WRITABLE = (
    "title",
    "description",
    "severity",
    "status",
    "classification",
    "classificationReason",
    "classificationComment",
    "owner",
    "labels",
    "firstActivityTimeUtc",
    "lastActivityTimeUtc",
    "providerName",
    "providerIncidentId",
)
# Sentinel's comment limit.
MAX_COMMENT = 30_000


class SentinelIncidents:
    """An :class:`~playbooks.ports.IncidentWriter` over the Sentinel REST API."""

    def __init__(
        self,
        client: AsyncPipelineClient[Any, Any],
        *,
        api_version: str,
        policy: RetryPolicy,
        label_prefix: str = "tokenward:",
        max_conflicts: int = 5,
    ) -> None:
        self._client = client
        self._api_version = api_version
        self._policy = policy
        self._prefix = label_prefix
        self._max_conflicts = max_conflicts

    async def comment(self, *, incident_id: str, comment_id: str, message: str) -> IncidentWrite:
        path = f"{_incident_path(incident_id)}/comments/{_comment_id(comment_id)}"
        if len(message) > MAX_COMMENT:
            raise BadRequest(
                f"the comment for incident {_name(incident_id)} is {len(message)} characters; "
                f"Sentinel takes at most {MAX_COMMENT}"
            )
        what = f"the comment on incident {_name(incident_id)}"
        response, attempts = await self._send(
            "PUT",
            path,
            {"properties": {"message": message}},
            what=what,
            operation="comment",
            subject=_name(incident_id),
        )
        created = response.status_code == 201
        logger.info(
            "%s comment %s on incident %s (%d)",
            "created" if created else "updated",
            comment_id,
            _name(incident_id),
            response.status_code,
        )
        return IncidentWrite(
            http_status=response.status_code,
            attempts=attempts,
            request_id=header(dict(response.headers), *REQUEST_ID_HEADERS),
            created=created,
            detail="comment created" if created else "comment updated (same id, no duplicate)",
        )

    async def label(self, *, incident_id: str, labels: Sequence[str]) -> IncidentWrite:
        path = _incident_path(incident_id)
        name = _name(incident_id)
        wanted = list(dict.fromkeys(labels))
        stray = [label for label in wanted if not label.startswith(self._prefix)]
        if stray:
            raise BadRequest(f"labels {stray!r} do not start with {self._prefix!r}")

        attempts = 0
        for _conflict in range(self._max_conflicts):
            # Read the incident and its etag; change only tokenward's labels.
            current, tries = await self._send(
                "GET",
                path,
                what=f"incident {name}",
                operation="get_incident",
                subject=name,
            )
            attempts += tries
            incident = _json(current, what=f"incident {name}")
            properties = incident.get("properties") or {}
            existing = [
                label for label in properties.get("labels") or [] if isinstance(label, dict)
            ]
            kept = [
                label
                for label in existing
                if not str(label.get("labelName", "")).startswith(self._prefix)
            ]
            ours = {str(label.get("labelName")) for label in existing} - {
                str(k.get("labelName")) for k in kept
            }
            if ours == set(wanted):
                return IncidentWrite(
                    http_status=current.status_code,
                    attempts=attempts,
                    detail="labels already set",
                )
            body = {
                "etag": incident.get("etag"),
                "properties": {
                    **{key: properties[key] for key in WRITABLE if key in properties},
                    "labels": kept
                    + [{"labelName": label, "labelType": "User"} for label in wanted],
                },
            }

            # Write them back under the etag; a change in between means read again.
            try:
                written, tries = await self._send(
                    "PUT",
                    path,
                    body,
                    what=f"the labels of incident {name}",
                    operation="label",
                    subject=name,
                )
            except ConnectorError as failure:
                attempts += 1
                if failure.status in (409, 412):
                    logger.info("incident %s changed while labelling it; reading it again", name)
                    continue
                raise
            attempts += tries
            logger.info("labelled incident %s: %s", name, ", ".join(wanted) or "(none)")
            return IncidentWrite(
                http_status=written.status_code,
                attempts=attempts,
                request_id=header(dict(written.headers), *REQUEST_ID_HEADERS),
                detail="labels set: " + (", ".join(wanted) or "none"),
            )
        raise ServiceUnavailable(
            f"incident {name} changed {self._max_conflicts} times while tokenward labelled it "
            "(412 each time); its labels were left as they were"
        )

    # -- listing, for reconciliation ------------------------------------------------

    async def incidents_created_after(
        self,
        *,
        workspace: str,
        after: datetime,
        page_size: int,
        next_link: str | None = None,
    ) -> IncidentPage:
        """One page of *workspace*'s incidents created after *after*, oldest first.

        The first page is asked for with ``$filter`` on
        ``properties/createdTimeUtc``, ``$orderby`` and ``$top``; later ones by
        the ``nextLink`` the service returned, which must point at the same
        Resource Manager host (the token goes nowhere else).
        """
        name = _name(workspace)
        url: str | None = None
        params: dict[str, str] = {}
        if next_link:
            url = self._same_host(next_link)
        else:
            params = {
                "$filter": f"properties/createdTimeUtc gt {_odata_time(after)}",
                "$orderby": "properties/createdTimeUtc asc",
                "$top": str(page_size),
            }
        response, _ = await self._send(
            "GET",
            f"{_workspace_path(workspace)}/providers/Microsoft.SecurityInsights/incidents",
            what=f"the incidents of workspace {name}",
            operation="list_incidents",
            subject=name,
            url=url,
            params=params,
        )
        page = _json(response, what=f"the incidents of workspace {name}")
        listed = [item for item in page.get("value") or [] if isinstance(item, dict)]
        link = page.get("nextLink")
        logger.info("listed %d incident(s) of workspace %s", len(listed), name)
        return IncidentPage(
            incidents=listed, next_link=link if isinstance(link, str) and link else None
        )

    async def entities(self, *, incident_id: str) -> list[dict[str, Any]]:
        """The incident's entities (``POST …/incidents/{id}/entities``)."""
        name = _name(incident_id)
        response, _ = await self._send(
            "POST",
            f"{_incident_path(incident_id)}/entities",
            {},
            what=f"the entities of incident {name}",
            operation="list_entities",
            subject=name,
        )
        answer = _json(response, what=f"the entities of incident {name}")
        return [item for item in answer.get("entities") or [] if isinstance(item, dict)]

    def _same_host(self, link: str) -> str:
        base = urlsplit(self._client.format_url("/"))
        given = urlsplit(link)
        if (given.scheme, given.netloc.lower()) != (base.scheme, base.netloc.lower()):
            raise ServiceUnavailable(
                f"{SERVICE} answered with a nextLink to another host "
                f"({given.netloc[:80]!r}); the listing was stopped there"
            )
        return link

    async def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        what: str,
        operation: str,
        subject: str,
        url: str | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[AsyncHttpResponse, int]:
        attempts = 0

        def counted(attempt: CallAttempt) -> None:
            nonlocal attempts
            attempts = attempt.number
            report_attempt(attempt)

        async def once() -> AsyncHttpResponse:
            # A nextLink carries its own api-version and skip token.
            request = HttpRequest(
                method,
                url or self._client.format_url(path),
                params={} if url else {"api-version": self._api_version, **(params or {})},
                json=body,
            )
            # Not streamed: the body is read before send_request returns.
            response: AsyncHttpResponse = await self._client.send_request(request, stream=False)
            if response.status_code >= 400:
                raise HttpResponseError(response=response)
            return response

        answered = await call_with_retries(
            once,
            service="arm",
            name=f"sentinel.{operation}",
            classify=lambda failure: azure_error(failure, service=SERVICE, what=what),
            policy=self._policy,
            subjects=(subject,),
            on_attempt=counted,
        )
        return answered, max(attempts, 1)


def _incident_path(incident_id: str) -> str:
    # The id came from a webhook body: it is used as a URL path only in the
    # shape that is safe as one.
    if not INCIDENT_ID.match(incident_id):
        raise BadRequest(f"{incident_id[:200]!r} is not a Sentinel incident resource id")
    return incident_id


def _workspace_path(workspace: str) -> str:
    if not WORKSPACE_ID.match(workspace):
        raise BadRequest(f"{workspace[:200]!r} is not a Log Analytics workspace resource id")
    return workspace.rstrip("/")


def _odata_time(moment: datetime) -> str:
    """An OData datetime literal (UTC, milliseconds)."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _comment_id(comment_id: str) -> str:
    if not is_guid(comment_id):
        raise BadRequest(f"comment id {comment_id[:80]!r} is not a GUID")
    return comment_id


def _name(incident_id: str) -> str:
    return incident_id.rstrip("/").rsplit("/", 1)[-1][:64]


def _json(response: AsyncHttpResponse, *, what: str) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ServiceUnavailable(
            f"{SERVICE} answered {what} with something that is not an incident"
        )
    return value
