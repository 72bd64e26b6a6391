"""The webhook body: raw bytes to a checked JSON document. Pure.

A delivery is refused before anything is stored when it is not what Sentinel
sends: not JSON, JSON that different parsers would read differently
(duplicate keys, lone surrogates), text a database cannot hold (NUL), nesting
deeper than any incident has, or a document whose fields tokenward reads have
the wrong type. The schema is loose where Sentinel varies (unknown fields are
kept, most fields are optional) and strict on what the hunt depends on: the
incident's resource id, entity lists and kinds, times and numbers.

Every refusal is a :class:`PayloadError` whose message names the place
(``object.properties.relatedEntities[2].kind``) and the problem, never the
offending value, which may be hostile.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
)

from playbooks.errors import InputError
from playbooks.times import parse_time

MAX_DEPTH = 32
MAX_ENTITIES = 2_000
_KIND = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,63}$")


class PayloadError(InputError):
    """The body is not a Sentinel incident delivery; ``status`` is the HTTP answer."""

    def __init__(self, message: str, *, status: int = 422, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.problems = problems


def parse_body(body: bytes) -> Any:
    """*body* as JSON, refusing what would be read two ways or cannot be stored."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as failure:
        raise PayloadError(f"the body is not UTF-8 (byte {failure.start})", status=400) from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _Duplicate as duplicate:
        raise PayloadError(
            f"the body repeats the key {duplicate.key!r} in one object", status=400
        ) from None
    except json.JSONDecodeError as failure:
        raise PayloadError(
            f"the body is not JSON: {failure.msg} at line {failure.lineno}, column {failure.colno}",
            status=400,
        ) from None
    except RecursionError:
        raise PayloadError(
            f"the body is not JSON tokenward can read: it nests deeper than {MAX_DEPTH} levels",
            status=400,
        ) from None
    except ValueError:
        # What json.loads refuses beyond syntax: integers of thousands of digits.
        raise PayloadError(
            "the body is not JSON tokenward can read: it holds a number too long to be one",
            status=400,
        ) from None
    # The walk that names where a bad string is costs more than the parse;
    # it is needed only when an escape could have made one, or for depth.
    if _ESCAPED_NUL_OR_SURROGATE.search(text) or not _within_depth(value, MAX_DEPTH):
        _check_text(value, "", 0)
    return value


# A NUL or a lone surrogate reaches a parsed string only through an escape:
# JSON refuses raw control characters, and the text decoded as UTF-8. (That
# holds for CPython's C scanner, which json uses wherever it is built; the
# pure-Python fallback is laxer about what follows \u.)
_ESCAPED_NUL_OR_SURROGATE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def _within_depth(value: Any, limit: int) -> bool:
    if limit < 0:
        return False
    if isinstance(value, dict):
        return all(_within_depth(item, limit - 1) for item in value.values())
    if isinstance(value, list):
        return all(_within_depth(item, limit - 1) for item in value)
    return True


def check_delivery(payload: Any) -> str:
    """Check *payload* against the delivery schema; returns which shape it is."""
    if not isinstance(payload, dict):
        raise PayloadError(f"the body is {_json_kind(payload)}, not a JSON object")
    model: type[BaseModel]
    if "object" in payload:
        shape, model = "trigger", TriggerBody
    elif "responses" in payload:
        shape, model = "example", ExampleBody
    elif "id" in payload and "properties" in payload:
        shape, model = "resource", Incident
    else:
        raise PayloadError(
            "the body holds no incident: expected the automation rule's trigger body "
            "(objectSchemaType, object) or an incident resource (id, properties)"
        )
    try:
        model.model_validate(payload)
    except ValidationError as failure:
        problems = tuple(_problem(error) for error in failure.errors(include_input=False)[:10])
        more = len(failure.errors()) - len(problems)
        message = "; ".join(problems) + (f"; and {more} more" if more > 0 else "")
        raise PayloadError(
            f"the {shape} body does not match the schema: {message}", problems=problems
        ) from None
    return shape


# -- the schema -----------------------------------------------------------------


def _timestamp(value: str) -> str:
    try:
        parse_time(value)
    except ValueError:
        raise ValueError("is not a timestamp (ISO 8601, e.g. 2026-01-15T09:24:58Z)") from None
    return value


def _kind(value: str) -> str:
    if not _KIND.match(value):
        raise ValueError("is not an entity kind (letters, digits and hyphens, e.g. Account)")
    return value


Timestamp = Annotated[StrictStr, AfterValidator(_timestamp)]
Kind = Annotated[StrictStr, AfterValidator(_kind)]


class Loose(BaseModel):
    # Sentinel adds fields over time; what tokenward does not read is kept as is.
    model_config = ConfigDict(extra="allow", strict=True)


class Entity(Loose):
    """An entity of an incident (relatedEntities) or of an alert (Type, not kind)."""

    kind: Kind | None = None
    Type: Kind | None = None
    properties: dict[str, Any] | None = None


class RelatedEntity(Entity):
    kind: Kind


class AlertProperties(Loose):
    # SecurityAlert.Entities arrives as JSON text or as a list.
    entities: StrictStr | list[Entity | dict[str, Any]] | None = None


class Alert(Loose):
    properties: AlertProperties | None = None


class Label(Loose):
    labelName: StrictStr


class IncidentProperties(Loose):
    title: StrictStr = Field(min_length=1, max_length=4096)
    description: StrictStr | None = None
    severity: StrictStr | None = None
    status: StrictStr | None = None
    incidentNumber: StrictInt | None = None
    firstActivityTimeUtc: Timestamp | None = None
    lastActivityTimeUtc: Timestamp | None = None
    createdTimeUtc: Timestamp | None = None
    lastModifiedTimeUtc: Timestamp | None = None
    labels: list[Label] | None = None
    relatedAnalyticRuleIds: list[StrictStr] | None = None
    relatedEntities: list[RelatedEntity] | None = Field(default=None, max_length=MAX_ENTITIES)
    alerts: list[Alert] | None = Field(default=None, max_length=MAX_ENTITIES)


class Incident(Loose):
    """A Sentinel incident resource, as the REST API and the trigger carry it."""

    id: StrictStr = Field(min_length=1, max_length=1024)
    name: StrictStr | None = None
    etag: StrictStr | None = None
    type: StrictStr | None = None
    properties: IncidentProperties


class WorkspaceInfo(Loose):
    SubscriptionId: StrictStr | None = None
    ResourceGroupName: StrictStr | None = None
    WorkspaceName: StrictStr | None = None


class TriggerBody(Loose):
    """The body a Logic App's Microsoft Sentinel incident trigger receives."""

    eventUniqueId: StrictStr | None = None
    objectSchemaType: Literal["Incident", "incident"] = "Incident"
    objectEventType: Literal["Create", "Update", "create", "update"] | None = None
    workspaceId: StrictStr | None = None
    workspaceInfo: WorkspaceInfo | None = None
    object: Incident


class ExampleResponse(Loose):
    body: Incident


class ExampleBody(Loose):
    """The REST reference's example wrapper (``responses["200"].body``)."""

    responses: dict[str, ExampleResponse]


# -- text checks ------------------------------------------------------------------


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key[:64]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _Duplicate(key)
        found[key] = value
    return found


def _json_kind(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words."""
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, bool):
        return f"JSON {str(value).lower()}"
    if isinstance(value, int | float):
        return "a JSON number"
    return "JSON null"


def _no_constant(name: str) -> Any:
    raise PayloadError(f"the body uses {name}, which is not JSON", status=400)


def _check_text(value: Any, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise PayloadError(
            f"the body nests deeper than {MAX_DEPTH} levels (at {where or 'the top'})",
            status=400,
        )
    if isinstance(value, str):
        _check_string(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_string(key, f"{where} (a key)")
            _check_text(item, f"{where}.{key}" if where else key, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_text(item, f"{where}[{index}]", depth + 1)


def _check_string(text: str, where: str) -> None:
    if "\x00" in text:
        raise PayloadError(f"{where or 'the body'} holds a NUL character", status=400)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(
            f"{where or 'the body'} holds a lone surrogate (invalid Unicode)",
            status=400,
        ) from None


# pydantic's type errors in JSON's words (the sender wrote JSON, not Python).
_JSON_TYPES = {
    "list_type": "an array",
    "tuple_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
}


def _problem(error: Any) -> str:
    place = ""
    for part in error["loc"]:
        place += f"[{part}]" if isinstance(part, int) else (f".{part}" if place else str(part))
    message = str(error["msg"])
    if error["type"] == "missing":
        message = "is missing"
    elif error["type"] == "extra_forbidden":
        message = "is not allowed"
    elif error["type"].endswith("_type"):
        wanted = _JSON_TYPES.get(error["type"])
        message = f"has the wrong type ({f'it should be {wanted}' if wanted else message.lower()})"
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    return f"{place or 'the body'} {message}"


def delivery_schema() -> dict[str, Any]:
    """The JSON schema of what the webhook accepts, for the OpenAPI document."""
    return {
        "oneOf": [
            {"$ref": "#/components/schemas/TriggerBody"},
            {"$ref": "#/components/schemas/Incident"},
        ]
    }


def schema_components() -> dict[str, Any]:
    """The named schemas :func:`delivery_schema` refers to."""
    components: dict[str, Any] = {}
    for model in (TriggerBody, Incident):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return components
