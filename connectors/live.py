"""Live query sources wired from settings: Log Analytics, Defender, or a per-table mix.

``Routing`` is itself a :class:`~playbooks.ports.QuerySource`: it sends each
query to the source its tables live in, all sources of a phase at once, one
batch each. It also answers ``colocated(a, b)``, which the runner asks before
embedding the hunt in a correlation query: a query whose tables live where the
hunt's do embeds it (``let hits = <hunt>``); one that lives elsewhere gets the
hunt's rows as a ``datatable`` literal in a second phase instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from connectors.clients import Clients
from connectors.defender import DefenderSource
from connectors.log_analytics import LogAnalyticsSource
from connectors.retry import RetryPolicy
from playbooks.errors import QueryError
from playbooks.ports import QueryOutcome, QuerySource, RenderedQuery
from playbooks.settings import Settings, SourceKind

logger = logging.getLogger(__name__)

LiveMode = Literal["log_analytics", "defender", "live"]


@dataclass(frozen=True)
class Routing:
    """Queries to the source of their tables."""

    sources: Mapping[SourceKind, QuerySource]
    default: SourceKind
    tables: Mapping[str, SourceKind] = field(default_factory=dict)

    @property
    def description(self) -> str:
        parts = []
        for kind, source in self.sources.items():
            listed = sorted(t for t, k in self.tables.items() if k is kind)
            which = "every other table" if kind is self.default else ", ".join(listed)
            parts.append(f"{which} from {source.description}")
        return "; ".join(parts)

    def kind_for(self, query_name: str, tables: Sequence[str]) -> SourceKind:
        kinds = {self.tables.get(table, self.default) for table in tables}
        if len(kinds) > 1:
            spread = ", ".join(f"{t} ({self.tables.get(t, self.default).value})" for t in tables)
            raise QueryError(
                f"the {query_name} query reads tables from different sources ({spread}); "
                "route them to one source in [sources.tables]",
                query=query_name,
            )
        return kinds.pop()

    def colocated(self, first: Sequence[str], second: Sequence[str]) -> bool:
        """Whether one source holds every table of both lists."""
        kinds = {self.tables.get(table, self.default) for table in (*first, *second)}
        return len(kinds) == 1

    async def run_queries(self, queries: Sequence[RenderedQuery]) -> list[QueryOutcome]:
        groups: dict[SourceKind, list[int]] = {}
        for index, query in enumerate(queries):
            groups.setdefault(self.kind_for(query.name, query.tables), []).append(index)
        for kind in groups:
            if kind not in self.sources:
                raise QueryError(f"no {kind.value} source is configured")

        async def run(kind: SourceKind, indexes: list[int]) -> list[QueryOutcome]:
            return await self.sources[kind].run_queries([queries[i] for i in indexes])

        answers = await asyncio.gather(*(run(kind, indexes) for kind, indexes in groups.items()))
        outcomes: dict[int, QueryOutcome] = {}
        for indexes, answer in zip(groups.values(), answers, strict=True):
            outcomes.update(zip(indexes, answer, strict=True))
        return [outcomes[index] for index in range(len(queries))]


def live_source(settings: Settings, clients: Clients, *, mode: LiveMode) -> QuerySource:
    """The query source for ``--source loganalytics``, ``defender`` or ``live``."""
    policy = RetryPolicy.from_settings(settings.retry)
    endpoints = clients.endpoints

    def log_analytics() -> LogAnalyticsSource:
        return LogAnalyticsSource(
            clients.logs(),
            workspace_id=settings.log_analytics.workspace_id,
            server_timeout=settings.log_analytics.server_timeout,
            policy=policy,
            endpoint=endpoints.log_analytics_endpoint,
        )

    def defender() -> DefenderSource:
        return DefenderSource(
            clients.graph(),
            policy=policy,
            concurrency=settings.defender.concurrency,
            graph_host=endpoints.graph_host,
        )

    if mode == "log_analytics":
        return log_analytics()
    if mode == "defender":
        return defender()
    kinds = {settings.sources.default, *settings.sources.tables.values()}
    sources: dict[SourceKind, QuerySource] = {}
    if SourceKind.LOG_ANALYTICS in kinds:
        sources[SourceKind.LOG_ANALYTICS] = log_analytics()
    if SourceKind.DEFENDER in kinds:
        sources[SourceKind.DEFENDER] = defender()
    return Routing(
        sources=sources,
        default=settings.sources.default,
        tables=dict(settings.sources.tables),
    )
