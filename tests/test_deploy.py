"""The deployment templates are valid and match the service they call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb_kql

from playbooks.deploy import analytic_rule, rule_query
from playbooks.exercises import find_scenario, load_scenario
from playbooks.playbook import load_playbook
from playbooks.times import parse_time

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "sentinel"


def test_the_committed_analytic_rule_is_the_one_generated_from_the_hunt() -> None:
    committed = json.loads((DEPLOY / "analytic-rule.json").read_text())
    assert committed == analytic_rule(load_playbook()), "regenerate: python -m playbooks.deploy"


def test_the_rule_maps_accounts_and_ips_to_columns_its_query_projects(load_tables: Any) -> None:
    rule = analytic_rule(load_playbook())["resources"][0]["properties"]
    columns = {
        mapping["columnName"]
        for entity in rule["entityMappings"]
        for mapping in entity["fieldMappings"]
    }
    assert {entity["entityType"] for entity in rule["entityMappings"]} == {"Account", "IP"}

    scenario = load_scenario(find_scenario("seed-true-positive"))
    con = load_tables({table: rows for table, rows in scenario.tables().items() if rows})
    now = parse_time("2026-01-15T09:50:00Z").value
    result = duckdb_kql.kql(con, rule_query(load_playbook()), allow_write=False, query_now=now)
    assert columns <= set(result.columns)
    (values,) = result.fetchall()
    row = dict(zip(result.columns, values, strict=True))
    assert (row["AccountName"], row["AccountUPNSuffix"]) == ("target.user", "contoso.com")
    assert row["UserId"] == "6f1a7a3e-1c2b-4d8e-9a41-3b7c2d9e0f11"


def test_the_logic_app_posts_the_trigger_body_to_the_webhook_with_a_managed_identity_token() -> (
    None
):
    template = json.loads((DEPLOY / "incident-to-tokenward.json").read_text())
    workflow = next(r for r in template["resources"] if r["type"] == "Microsoft.Logic/workflows")
    assert workflow["identity"] == {"type": "SystemAssigned"}
    post = workflow["properties"]["definition"]["actions"]["Post_incident_to_tokenward"]["inputs"]
    assert post["method"] == "POST"
    assert post["uri"].endswith("'/webhooks/sentinel')]")
    assert post["body"] == "@triggerBody()"
    assert post["authentication"] == {
        "type": "ManagedServiceIdentity",
        "audience": "[parameters('tokenwardAudience')]",
    }
    trigger = workflow["properties"]["definition"]["triggers"]["Microsoft_Sentinel_incident"]
    assert trigger["inputs"]["path"] == "/incident-creation"


def test_the_automation_rule_runs_the_logic_app_for_the_tokenward_rule_only() -> None:
    template = json.loads((DEPLOY / "incident-to-tokenward.json").read_text())
    automation = next(r for r in template["resources"] if r["type"].endswith("automationRules"))
    logic = automation["properties"]["triggeringLogic"]
    assert (logic["triggersOn"], logic["triggersWhen"]) == ("Incidents", "Created")
    (condition,) = logic["conditions"]
    assert condition["conditionProperties"]["propertyName"] == "IncidentRelatedAnalyticRuleIds"
    assert template["parameters"]["analyticRuleId"]["defaultValue"] in json.dumps(
        analytic_rule(load_playbook())
    )
    (action,) = automation["properties"]["actions"]
    assert action["actionType"] == "RunPlaybook"


def test_the_templates_and_docs_name_the_services_real_endpoint_and_settings() -> None:
    import re

    from playbooks.server import WEBHOOK_PATH, openapi_document
    from playbooks.settings import Settings

    template = json.loads((DEPLOY / "incident-to-tokenward.json").read_text())
    workflow = next(r for r in template["resources"] if r["type"] == "Microsoft.Logic/workflows")
    post = workflow["properties"]["definition"]["actions"]["Post_incident_to_tokenward"]["inputs"]
    assert f"'{WEBHOOK_PATH}'" in post["uri"]
    assert WEBHOOK_PATH in openapi_document()["paths"]
    assert "entraId" in json.dumps(openapi_document()["paths"][WEBHOOK_PATH]["post"]["security"])

    # Every [section] key the deployment docs and template tell an operator to set exists.
    readme = (DEPLOY.parent / "README.md").read_text() + json.dumps(template)
    named = set(re.findall(r"\[(\w+)\] (\w+)", readme))
    fields = Settings.model_fields
    for section, key in named:
        assert section in fields, section
        assert key in fields[section].annotation.model_fields, f"[{section}] {key}"  # type: ignore[union-attr]
    assert ("webhook", "allowed_principals") in named and ("webhook", "audiences") in named
