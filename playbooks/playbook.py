"""Loads and checks a playbook definition: a YAML file and its ``.kql`` templates.

Everything is checked before any run: unknown keys, signals and actions, a
template that uses a parameter the YAML does not declare (or the reverse), a
missing query file. Each refusal names the file, the line and the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from ruamel.yaml import YAML

from playbooks.errors import Location, PlaybookError
from playbooks.kql import (
    HitsTable,
    ParamType,
    TrustedQuery,
    kql_identifier,
    placeholders,
    render,
)
from playbooks.models import ActionKind, Tier
from playbooks.scoring import SIGNALS, SignalConfig
from playbooks.settings import SanctionedUse
from playbooks.times import parse_duration
from playbooks.yamlsource import YamlDocument, parse_yaml, read_yaml

BUNDLED = Path(str(files("playbooks") / "device_code" / "playbook.yaml"))
REQUIRED_QUERIES = ("hunt", "url_clicks", "emails", "baseline")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuerySpec(Strict):
    file: str
    tables: tuple[str, ...] = Field(min_length=1)
    parameters: dict[str, ParamType] = {}
    description: str = ""

    @field_validator("tables")
    @classmethod
    def _plain_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            kql_identifier(name)
        return value


def _duration(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


class CorrelationSpec(Strict):
    before: timedelta = timedelta(minutes=60)
    after: timedelta = timedelta(minutes=5)

    _parse = field_validator("before", "after", mode="before")(_duration)


class BaselineSpec(Strict):
    days: int = Field(default=30, ge=1, le=90)


class ThreatIntelSpec(Strict):
    lookback: timedelta = timedelta(days=30)

    _parse = field_validator("lookback", mode="before")(_duration)


class FollowOnSpec(Strict):
    """Queries run after scoring, for findings of these tiers, given their sign-ins."""

    tiers: tuple[Tier, ...] = (Tier.HIGH,)
    queries: tuple[str, ...] = ()


class Thresholds(Strict):
    high: int = Field(ge=1, le=100)
    medium: int = Field(ge=1, le=100)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.medium >= self.high:
            raise ValueError(f"medium ({self.medium}) must be below high ({self.high})")
        return self


class ScoringSpec(Strict):
    thresholds: Thresholds
    signals: dict[str, dict[str, Any]]


class TierSpec(Strict):
    actions: tuple[ActionKind, ...] = ()
    unattended: bool = False


class PlaybookSpec(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    name: str
    description: str = ""
    queries: dict[str, QuerySpec]
    correlation: CorrelationSpec = CorrelationSpec()
    baseline: BaselineSpec = BaselineSpec()
    threat_intel: ThreatIntelSpec = ThreatIntelSpec()
    follow_on: FollowOnSpec = FollowOnSpec()
    scoring: ScoringSpec
    tiers: dict[Tier, TierSpec]
    sanctioned_use: tuple[SanctionedUse, ...] = ()


@dataclass(frozen=True)
class Playbook:
    """A checked playbook, ready to render its queries and score its findings."""

    spec: PlaybookSpec
    signals: dict[str, SignalConfig]
    templates: dict[str, str]
    path: str

    @property
    def id(self) -> str:
        return self.spec.id

    def tier(self, tier: Tier) -> TierSpec:
        return self.spec.tiers.get(tier, TierSpec())

    def render(self, name: str, values: Mapping[str, Any]) -> str:
        """The text of query *name* with every parameter quoted by its type."""
        spec = self.spec.queries[name]
        return render(self.templates[name], spec.parameters, values)

    @property
    def correlation_queries(self) -> tuple[str, ...]:
        """The queries run with the hunt: every one but the hunt and the follow-on ones."""
        later = set(self.spec.follow_on.queries)
        return tuple(name for name in self.spec.queries if name != "hunt" and name not in later)

    def render_with_hits(self, name: str, values: Mapping[str, Any], hits: TrustedQuery | HitsTable) -> str:
        """Query *name* given the hunt as ``hits``: its text, or its rows as a datatable."""
        spec = self.spec.queries[name]
        given = {**values, "hits": hits}
        return self.render(name, {key: given[key] for key in spec.parameters if key in given})

    def render_all(self, values: Mapping[str, Any]) -> dict[str, str]:
        """The hunt and every correlation query, each given the hunt as ``hits``."""
        hunt = self.render("hunt", values)
        texts = {"hunt": hunt}
        for name in self.correlation_queries:
            texts[name] = self.render_with_hits(name, values, TrustedQuery(hunt))
        return texts


def load_playbook(
    path: Path | None = None, *, overrides: Mapping[str, str] | None = None
) -> Playbook:
    """Load and check the playbook at *path* (the bundled one by default).

    *overrides* maps dotted keys to YAML values (``scoring.thresholds.high=60``);
    a key the playbook does not have is refused.
    """
    source = path or BUNDLED
    document = read_yaml(source, error=PlaybookError)
    if overrides:
        document = _apply_overrides(document, overrides)
    if not isinstance(document.data, dict):
        raise PlaybookError("a playbook is a mapping of keys", source=Location(file=str(source)))
    spec = document.validate(PlaybookSpec, PlaybookError)

    signals = _signals(document, spec)
    templates = _templates(document, spec, source.parent)
    for name in REQUIRED_QUERIES:
        if name not in spec.queries:
            raise PlaybookError(
                f"the playbook has no {name!r} query, which the engine runs",
                source=document.location(("queries",)),
            )
    for name in spec.follow_on.queries:
        if name not in spec.queries or name in REQUIRED_QUERIES:
            raise PlaybookError(
                f"follow_on names {name!r}, which is not one of the playbook's own queries",
                source=document.location(("follow_on", "queries")),
            )
    return Playbook(spec=spec, signals=signals, templates=templates, path=str(source))


def _signals(document: YamlDocument, spec: PlaybookSpec) -> dict[str, SignalConfig]:
    configs: dict[str, SignalConfig] = {}
    for name, raw in spec.scoring.signals.items():
        loc = ("scoring", "signals", name)
        known = SIGNALS.get(name)
        if known is None:
            raise PlaybookError(
                f"unknown signal {name!r} (known: {', '.join(sorted(SIGNALS))})",
                source=document.location(loc),
            )
        configs[name] = document.validate(
            known.config, PlaybookError, data=raw or {}, prefix=loc
        )
    return configs


def _templates(document: YamlDocument, spec: PlaybookSpec, directory: Path) -> dict[str, str]:
    templates: dict[str, str] = {}
    for name, query in spec.queries.items():
        loc = ("queries", name, "file")
        path = (directory / query.file).resolve()
        if directory.resolve() not in path.parents:
            raise PlaybookError(
                f"query file {query.file!r} is outside the playbook's folder",
                source=document.location(loc),
            )
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            raise PlaybookError(
                f"query file {query.file!r} cannot be read", source=document.location(loc)
            ) from None
        used, declared = placeholders(text), set(query.parameters)
        if used - declared:
            raise PlaybookError(
                f"{query.file} uses undeclared parameters: {', '.join(sorted(used - declared))}",
                source=document.location(("queries", name, "parameters")),
            )
        if declared - used:
            raise PlaybookError(
                f"{query.file} never uses declared parameters: "
                f"{', '.join(sorted(declared - used))}",
                source=document.location(("queries", name, "parameters")),
            )
        templates[name] = text
    return templates


def _apply_overrides(document: YamlDocument, overrides: Mapping[str, str]) -> YamlDocument:
    data = document.data
    for dotted_key, raw_value in overrides.items():
        parts = dotted_key.split(".")
        node = data
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[: depth + 1])
                raise PlaybookError(
                    f"cannot override {dotted_key!r}: the playbook has no key {where!r}",
                    source=Location(file=document.file, key=dotted_key),
                )
            if depth == len(parts) - 1:
                node[part] = _yaml_value(raw_value, dotted_key, document.file)
            else:
                node = node[part]
    return YamlDocument(data, document.lines, document.file)


def _yaml_value(text: str, key: str, file: str) -> Any:
    try:
        return YAML(typ="safe").load(text)
    except Exception:
        raise PlaybookError(
            f"the value {text!r} for {key!r} is not valid YAML", source=Location(file=file, key=key)
        ) from None


__all__ = ["BUNDLED", "Playbook", "PlaybookSpec", "load_playbook", "parse_yaml"]
