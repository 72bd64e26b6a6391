"""Loads and checks a playbook definition: a YAML file and its ``.kql`` templates.

Everything is checked before any run: unknown keys, signals and actions, a
template that uses a parameter the YAML does not declare (or the reverse), a
missing query file. Each refusal names the file, the line and the value.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
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
    # What --set or an override file changed, in the order given.
    overrides: tuple[AppliedOverride, ...] = ()

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

    def render_with_hits(
        self, name: str, values: Mapping[str, Any], hits: TrustedQuery | HitsTable
    ) -> str:
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
    path: Path | None = None,
    *,
    overrides: Mapping[str, str] | Sequence[Override] | None = None,
) -> Playbook:
    """Load and check the playbook at *path* (the bundled one by default).

    *overrides* change keys the playbook has: :class:`Override` values (from
    :func:`parse_set` or :func:`read_overrides`), or a mapping of dotted keys to
    YAML text (``{"scoring.thresholds.high": "60"}``). A key the playbook does
    not have is refused, and a value the playbook refuses is reported at the
    override that set it.
    """
    source = path or BUNDLED
    document = read_yaml(source, error=PlaybookError)
    if not isinstance(document.data, dict):
        raise PlaybookError("a playbook is a mapping of keys", source=Location(file=str(source)))
    applied: tuple[AppliedOverride, ...] = ()
    if overrides:
        document, applied = _apply_overrides(document, _as_overrides(overrides))
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
    return Playbook(
        spec=spec, signals=signals, templates=templates, path=str(source), overrides=applied
    )


# -- overrides -------------------------------------------------------------


@dataclass(frozen=True)
class Override:
    """One playbook key set to a new value, and where that was asked for."""

    key: tuple[str, ...]
    value: Any
    source: Location
    # Where each part of the key was written, when it came from a file: a key
    # missing from the playbook is reported at its own line.
    parts: tuple[Location, ...] = ()

    @property
    def dotted(self) -> str:
        return ".".join(self.key)

    def source_of(self, depth: int) -> Location:
        """Where the key's first *depth* + 1 parts were written."""
        return self.parts[depth] if depth < len(self.parts) else self.source


@dataclass(frozen=True)
class AppliedOverride:
    """An override as applied: the key, its value before and after."""

    key: str
    before: Any
    after: Any
    source: Location


def parse_set(item: str) -> Override:
    """``scoring.thresholds.high=60`` (the value is YAML) as an override."""
    key, sep, text = item.partition("=")
    key = key.strip()
    where = Location(file="--set", key=key or None)
    if not sep or not key:
        raise PlaybookError(f"{item!r} is not KEY=VALUE", source=where)
    parts = tuple(key.split("."))
    if any(not part for part in parts):
        raise PlaybookError(
            f"{key!r} is not a dotted key such as scoring.thresholds.high", source=where
        )
    return Override(key=parts, value=_yaml_value(text.strip(), where), source=where)


def read_overrides(path: Path) -> list[Override]:
    """A playbook override file: a YAML mapping in the playbook's own shape.

    Every key in it must exist in the playbook. Mappings are followed key by
    key; any other value (a number, a string, a list) replaces the playbook's.
    """
    document = read_yaml(path, error=PlaybookError)
    if not isinstance(document.data, dict) or not document.data:
        raise PlaybookError(
            "an override file is a mapping of playbook keys, e.g. "
            "scoring: {thresholds: {high: 60}}",
            source=document.location(()),
        )
    found: list[Override] = []

    def walk(node: dict[str, Any], loc: tuple[str, ...]) -> None:
        for key, value in node.items():
            here = (*loc, key)
            if isinstance(value, dict) and value:
                walk(value, here)
            else:
                parts = tuple(document.location(here[: end + 1]) for end in range(len(here)))
                found.append(
                    Override(key=here, value=value, source=document.location(here), parts=parts)
                )

    walk(document.data, ())
    return found


def _as_overrides(overrides: Mapping[str, str] | Sequence[Override]) -> list[Override]:
    if isinstance(overrides, Mapping):
        return [parse_set(f"{key}={value}") for key, value in overrides.items()]
    return list(overrides)


def _apply_overrides(
    document: YamlDocument, overrides: Sequence[Override]
) -> tuple[YamlDocument, tuple[AppliedOverride, ...]]:
    data = copy.deepcopy(document.data)
    origins = dict(document.origins)
    applied: list[AppliedOverride] = []
    for override in overrides:
        node = data
        for depth, part in enumerate(override.key):
            parent = override.key[:depth]
            if isinstance(node, list):
                raise PlaybookError(
                    f"{'.'.join(parent)} is a list: override it whole "
                    f"(e.g. --set '{'.'.join(parent)}=[a, b]'), not item by item",
                    source=override.source,
                )
            if not isinstance(node, dict) or part not in node:
                raise PlaybookError(
                    _no_such_key(document, parent, part, node), source=override.source_of(depth)
                )
            if depth == len(override.key) - 1:
                applied.append(
                    AppliedOverride(
                        key=override.dotted,
                        before=copy.deepcopy(node[part]),
                        after=override.value,
                        source=override.source,
                    )
                )
                node[part] = override.value
                origins[override.key] = override.source
            else:
                node = node[part]
    return YamlDocument(data, document.lines, document.file, origins), tuple(applied)


def _no_such_key(document: YamlDocument, parent: tuple[str, ...], part: str, node: Any) -> str:
    where = ".".join(parent) or "the top level"
    line = document.line_of(parent) if parent else None
    at = f"{document.file}:{line}" if line else document.file
    if isinstance(node, dict):
        keys = ", ".join(sorted(node)) or "none"
        return f"the playbook has no key {part!r} in {where} (keys there: {keys}; see {at})"
    return f"{where} is a single value in the playbook, it has no key {part!r} (see {at})"


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
        configs[name] = document.validate(known.config, PlaybookError, data=raw or {}, prefix=loc)
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


def _yaml_value(text: str, where: Location) -> Any:
    try:
        return YAML(typ="safe").load(text)
    except Exception:  # ruamel raises several unrelated types
        raise PlaybookError(f"the value {text!r} is not valid YAML", source=where) from None


__all__ = [
    "BUNDLED",
    "AppliedOverride",
    "Override",
    "Playbook",
    "PlaybookSpec",
    "load_playbook",
    "parse_set",
    "parse_yaml",
    "read_overrides",
]
