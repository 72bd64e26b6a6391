"""The committed OpenAPI document is the service's own, and describes what it does."""

from __future__ import annotations

import json
from pathlib import Path

from playbooks.server import openapi_document

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def test_the_committed_openapi_document_is_current() -> None:
    committed = json.loads(DOCUMENT.read_text())
    assert committed == json.loads(json.dumps(openapi_document())), (
        "regenerate: python -m playbooks.server > docs/openapi.json"
    )


def test_it_describes_the_webhook_its_auth_schemes_and_every_refusal() -> None:
    document = openapi_document()
    webhook = document["paths"]["/webhooks/sentinel"]["post"]
    assert set(webhook["responses"]) == {"202", "400", "401", "403", "413", "415", "422", "503"}
    assert webhook["requestBody"]["content"]["application/json"]["schema"]["oneOf"] == [
        {"$ref": "#/components/schemas/TriggerBody"},
        {"$ref": "#/components/schemas/Incident"},
    ]
    assert set(document["components"]["securitySchemes"]) == {
        "entraId",
        "hmacSignature",
        "hmacTimestamp",
    }
    assert {
        "/healthz",
        "/readyz",
        "/plans",
        "/plans/{plan_id}",
        "/plans/{plan_id}/approve",
        "/plans/{plan_id}/reject",
    } <= set(document["paths"])
    refs = json.dumps(document)
    for name in ("TriggerBody", "Incident", "IncidentProperties", "RelatedEntity"):
        assert f"#/components/schemas/{name}" in refs and name in document["components"]["schemas"]
