"""YAML read with the line of every key, so a validation error can say where.

Playbooks and scenarios are validated by pydantic models; this module turns a
pydantic error's location (``scoring.signals.high_value_app.weight``) back into
the file and line a person has to edit.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from playbooks.errors import InputError, Location

Loc = tuple[str | int, ...]
ModelT = TypeVar("ModelT", bound=BaseModel)


class YamlDocument:
    """A parsed YAML document: plain data plus the line of each key and item.

    *origins* names, for parts of the data that were replaced after parsing
    (a playbook override), where the replacement came from: a problem found
    there is reported at the override, not at the line it replaced.
    """

    def __init__(
        self,
        data: Any,
        lines: dict[Loc, int],
        file: str,
        origins: dict[Loc, Location] | None = None,
    ) -> None:
        self.data = data
        self.lines = lines
        self.file = file
        self.origins = origins or {}

    def line_of(self, loc: Loc) -> int | None:
        """The line of the deepest part of *loc* the document has."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return None

    def location(self, loc: Loc) -> Location:
        origin = self._origin_of(loc)
        if origin is not None:
            return Location(file=origin.file, line=origin.line, key=dotted(loc) or None)
        return Location(file=self.file, line=self.line_of(loc), key=dotted(loc) or None)

    def _origin_of(self, loc: Loc) -> Location | None:
        # The replaced part itself or anything inside it.
        for end in range(len(loc), 0, -1):
            origin = self.origins.get(tuple(loc[:end]))
            if origin is not None:
                return origin
        # A check over a mapping that holds exactly one replaced part
        # (``medium must be below high`` after ``thresholds.high`` changed).
        inside = [o for key, o in self.origins.items() if loc and key[: len(loc)] == loc]
        return inside[0] if len(inside) == 1 else None

    def validate(
        self,
        model: type[ModelT],
        error: Callable[..., InputError],
        *,
        data: Any = None,
        prefix: Loc = (),
        context: dict[str, Any] | None = None,
    ) -> ModelT:
        """Validate (part of) the document, raising *error* with file and line."""
        try:
            return model.model_validate(self.data if data is None else data, context=context)
        except ValidationError as failure:
            first = failure.errors()[0]
            loc = prefix + tuple(first["loc"])
            raise error(describe(first), source=self.location(loc)) from None


def parse_yaml(text: str, *, file: str, error: Callable[..., InputError]) -> YamlDocument:
    """Parse *text*, refusing duplicate keys and anything that is not plain data."""
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        loaded = yaml.load(text)
    except MarkedYAMLError as failure:
        mark = failure.problem_mark
        line = mark.line + 1 if mark is not None else None
        problem = failure.problem or "invalid YAML"
        raise error(problem, source=Location(file=file, line=line)) from None
    except Exception as failure:  # ruamel raises several unrelated types
        raise error(f"invalid YAML: {failure}", source=Location(file=file)) from None
    lines: dict[Loc, int] = {}
    data = _plain(loaded, (), lines)
    return YamlDocument(data, lines, file)


def read_yaml(path: Path, *, error: Callable[..., InputError]) -> YamlDocument:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as failure:
        raise error(f"cannot read the file: {failure}", source=Location(file=str(path))) from None
    return parse_yaml(text, file=str(path), error=error)


def _plain(node: Any, loc: Loc, lines: dict[Loc, int]) -> Any:
    if isinstance(node, CommentedMap):
        if node.lc.line is not None:
            lines.setdefault(loc, node.lc.line + 1)
        result = {}
        for key, value in node.items():
            line = node.lc.key(key)[0] + 1
            lines[loc + (str(key),)] = line
            result[str(key)] = _plain(value, loc + (str(key),), lines)
        return result
    if isinstance(node, CommentedSeq):
        if node.lc.line is not None:
            lines.setdefault(loc, node.lc.line + 1)
        items = []
        for index, value in enumerate(node):
            lines[loc + (index,)] = node.lc.item(index)[0] + 1
            items.append(_plain(value, loc + (index,), lines))
        return items
    # Round-trip scalars are subclasses that carry formatting; give plain values.
    if isinstance(node, ScalarBoolean):
        return bool(node)
    if isinstance(node, bool | None):
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def dotted(loc: Loc) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts)


def describe(error: Any) -> str:
    """A pydantic error as a sentence that names the offending value."""
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return f"unknown key {error['loc'][-1]!r}"
    if kind == "missing":
        return f"missing required key {error['loc'][-1]!r}"
    message = str(error.get("msg", "invalid value"))
    value = error.get("input")
    if kind in ("tuple_type", "list_type", "set_type", "frozen_set_type"):
        # A Python type name tells a person writing TOML or YAML nothing.
        message = 'should be a list, e.g. ["a", "b"]'
    if kind == "value_error":
        # Our own validators already name the value; drop pydantic's prefix.
        return message.removeprefix("Value error, ")
    if kind.startswith(("enum", "literal")):
        return f"{message}, not {_shown(value)}"
    if value is not None and not isinstance(value, dict | list):
        return f"{message} (got {_shown(value)})"
    return message


def _shown(value: Any) -> str:
    # YAML timestamps arrive as datetime subclasses whose repr is not the text.
    if isinstance(value, datetime | date):
        return repr(value.isoformat())
    return repr(value)
