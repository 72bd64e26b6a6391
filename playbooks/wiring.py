"""Concrete connectors built from settings, for both faces (the CLI and the service).

``tokenward hunt`` and the runs of ``tokenward serve``/``watch`` hunt the same
sources and contain through the same Graph responder; this module is the one
place that builds them, so a source or a preflight never differs between the
command line and the service. With :mod:`playbooks.cli` and
:mod:`playbooks.server` it is the only part of ``playbooks/`` that imports
``connectors/``.

Clients are made inside the event loop that uses them and closed with it
(B15). A responder that writes is handed out only after the permission
preflight found every Graph permission the configured actions need (B13).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from connectors.clients import Clients
from connectors.credentials import build_credential
from connectors.graph import GraphOptions, GraphResponder
from connectors.live import LiveMode, live_source
from connectors.permissions import PermissionCheck, check_graph_permissions
from connectors.retry import RetryPolicy
from connectors.sentinel import SentinelIncidents
from playbooks.errors import PermissionDenied, SettingsError
from playbooks.models import ActionKind, Mode
from playbooks.playbook import Playbook
from playbooks.ports import QuerySource
from playbooks.settings import Settings
from playbooks.times import utcnow
from playbooks.worker import RunTools

logger = logging.getLogger(__name__)

#: ``--source`` names of the live sources.
LIVE_SOURCES: dict[str, LiveMode] = {
    "loganalytics": "log_analytics",
    "log_analytics": "log_analytics",
    "defender": "defender",
    "live": "live",
}
SOURCE_HELP = "use files:DIR (a directory of exported logs), loganalytics, defender or live"


@dataclass(frozen=True)
class SourceSpec:
    """Where runs hunt: ``files:DIR``, ``loganalytics``, ``defender`` or ``live``."""

    kind: LiveMode | Literal["files"]
    argument: str = ""
    # A pinned clock (exports of a past day); None: the wall clock.
    now: datetime | None = None

    @classmethod
    def parse(cls, text: str, *, now: datetime | None = None) -> SourceSpec:
        if text in LIVE_SOURCES:
            return cls(kind=LIVE_SOURCES[text], now=now)
        kind, _, argument = text.partition(":")
        if kind != "files" or not argument:
            raise SettingsError(f"--source {text!r}: {SOURCE_HELP}")
        return cls(kind="files", argument=argument, now=now)

    @property
    def live(self) -> LiveMode | None:
        return None if self.kind == "files" else self.kind


def action_kinds(playbook: Playbook) -> list[ActionKind]:
    """Every action any tier of *playbook* may take."""
    return [kind for tier in playbook.spec.tiers.values() for kind in tier.actions]


def writes_back(settings: Settings) -> bool:
    """Whether incident runs comment on and label their incidents: a dry-run never does."""
    return settings.sentinel.write_back and settings.webhook.mode != Mode.DRY_RUN.value


def writing_modes(settings: Settings) -> list[str]:
    """The service's settings that run in a mode which reads or writes Graph."""
    chosen = [("webhook.mode", settings.webhook.mode)]
    if settings.schedule.hunt:
        chosen.append(("schedule.mode", settings.schedule.mode))
    return [f"{key} = {mode!r}" for key, mode in chosen if mode != Mode.DRY_RUN.value]


def credential_needs(settings: Settings, spec: SourceSpec) -> list[str]:
    """Why the service's runs need an Azure credential, one phrase each; empty: they do not."""
    needs = []
    if spec.live is not None:
        needs.append(f"--source {spec.kind} needs an Azure credential to read the logs")
    modes = writing_modes(settings)
    if modes:
        needs.append(
            f"{', '.join(modes)} needs an Azure credential to contain through Microsoft Graph"
        )
    if writes_back(settings):
        needs.append("sentinel.write_back = true needs an Azure credential to comment on incidents")
    if settings.schedule.reconcile:
        needs.append(
            "schedule.reconcile = true needs an Azure credential to list Sentinel incidents"
        )
    return needs


def require_credential(settings: Settings, spec: SourceSpec) -> None:
    """Refuse to start (:class:`SettingsError`, saying what needs it) if the runs
    need a credential that cannot be built.

    Runs its own event loop: call it before the face starts its own.
    """
    needs = credential_needs(settings, spec)
    if not needs:
        return
    try:
        asyncio.run(build_credential(settings.azure).close())
    except SettingsError as failure:
        raise SettingsError(
            f"{'; '.join(needs)}, but {failure.message}", source=failure.source
        ) from None


def require_source(spec: SourceSpec) -> None:
    """Refuse to start (:class:`~playbooks.errors.ExportError`) if ``files:DIR``
    holds no exports; the files themselves are read when the worker starts."""
    if spec.kind == "files":
        from connectors.exports.loader import export_files

        export_files(Path(spec.argument))


async def permission_check(settings: Settings, kinds: Sequence[ActionKind]) -> PermissionCheck:
    """The Graph token's roles against *kinds*, with a credential of its own."""
    credential = build_credential(settings.azure)
    async with credential:
        return await check_graph_permissions(
            credential,
            scope=settings.azure.endpoints().graph_scope,
            kinds=list(kinds),
            identity=credential.identity,
        )


def require_permissions(settings: Settings, playbook: Playbook, *, why: str) -> None:
    """Refuse to start (:class:`PermissionDenied`) without the Graph permissions.

    Runs its own event loop: call it before the face starts its own.
    """
    check = asyncio.run(permission_check(settings, action_kinds(playbook)))
    if not check.ok:
        raise PermissionDenied(
            f"{check.summary()}; {why} refuses to start (tokenward doctor lists them)"
        )


async def graph_responder(
    settings: Settings,
    playbook: Playbook,
    credential: Any,
    clients: Clients,
    *,
    kinds: Sequence[ActionKind] | None = None,
) -> GraphResponder:
    """The Graph responder, once the token shows every permission it needs."""
    check = await check_graph_permissions(
        credential,
        scope=settings.azure.endpoints().graph_scope,
        kinds=list(kinds) if kinds is not None else action_kinds(playbook),
        identity=credential.identity,
    )
    if not check.ok:
        raise PermissionDenied(f"{check.summary()}; nothing was done (tokenward doctor lists them)")
    return GraphResponder(
        clients.graph(),
        policy=RetryPolicy.from_settings(settings.retry),
        options=GraphOptions(
            batch_size=settings.graph.batch_size,
            concurrency=settings.graph.concurrency,
            identity_protection_wait=settings.graph.identity_protection_wait,
        ),
    )


def sentinel_incidents(settings: Settings, clients: Clients) -> SentinelIncidents:
    """Incident comments, labels and listings through Resource Manager."""
    return SentinelIncidents(
        clients.arm(),
        api_version=settings.sentinel.api_version,
        policy=RetryPolicy.from_settings(settings.retry),
        label_prefix=settings.sentinel.label_prefix,
    )


class ServiceTools:
    """The connectors of every run the service makes: the worker's tools factory.

    One per worker process. Exports (``files:DIR``) are loaded when it is
    made, so a bad export stops the service at once; everything that talks
    to Microsoft is made by :meth:`start` in the worker's event loop and
    closed by :meth:`aclose`: the credential, the clients, the live source,
    the Graph responder (approve and auto, after the permission preflight),
    and the Sentinel client that lists incidents and, outside dry-run, writes back.
    """

    def __init__(self, settings: Settings, playbook: Playbook, spec: SourceSpec) -> None:
        self._settings = settings
        self._playbook = playbook
        self._spec = spec
        self._con: Any = None
        if spec.kind == "files":
            self._con = _load_exports(Path(spec.argument))
        self._clients: Clients | None = None
        self._live: QuerySource | None = None
        self._responder: GraphResponder | None = None
        self._sentinel: SentinelIncidents | None = None

    @property
    def needs_graph(self) -> bool:
        return bool(writing_modes(self._settings))

    async def start(self) -> None:
        """Make the clients in this event loop; :class:`PermissionDenied` if the
        Graph token lacks what approve or auto needs."""
        settings = self._settings
        if not credential_needs(settings, self._spec) or self._clients is not None:
            return
        credential = build_credential(settings.azure)
        self._clients = Clients(settings.azure, credential)
        try:
            if self._spec.live is not None:
                self._live = live_source(settings, self._clients, mode=self._spec.live)
            if self.needs_graph:
                self._responder = await graph_responder(
                    settings, self._playbook, credential, self._clients
                )
            if writes_back(settings) or settings.schedule.reconcile:
                self._sentinel = sentinel_incidents(settings, self._clients)
        except BaseException:
            await self.aclose()
            raise

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[RunTools]:
        await self.start()
        now = self._spec.now
        yield RunTools(
            source=self._source(now),
            responder=self._responder,
            writer=self._sentinel if writes_back(self._settings) else None,
            now=now,
            incidents=self._sentinel,
        )

    def _source(self, now: datetime | None) -> QuerySource:
        if self._live is not None:
            return self._live
        from connectors.exports.local import LocalKqlSource

        # Each run reads the loaded exports through its own cursor.
        return LocalKqlSource(
            self._con.cursor(),
            now=now or utcnow(),
            origin=f"exported files in {self._spec.argument}",
        )

    async def aclose(self) -> None:
        clients, self._clients = self._clients, None
        if clients is not None:
            await clients.close()
        self._live = self._responder = self._sentinel = None
        if self._con is not None:
            self._con.close()
            self._con = None


def _load_exports(directory: Path) -> Any:
    import duckdb_kql

    from connectors.exports.loader import ExportLoader

    con = duckdb_kql.connect()
    # DuckDB takes every core by default; on a host shared with the webhook
    # one thread per query keeps acknowledgements from queueing behind a run.
    con.execute("SET threads TO 1")
    ExportLoader(con).load_directory(directory)
    return con


__all__ = [
    "LIVE_SOURCES",
    "ServiceTools",
    "SourceSpec",
    "action_kinds",
    "credential_needs",
    "graph_responder",
    "permission_check",
    "require_credential",
    "require_permissions",
    "require_source",
    "sentinel_incidents",
    "writes_back",
    "writing_modes",
]
