"""The Sentinel analytic rule that raises incidents for tokenward, from the hunt.

The rule's query is the playbook's own hunt with its window set to the rule's
lookback, plus the columns Sentinel's entity mapping needs, so the rule and
tokenward never disagree about what a device code sign-in is. Regenerate the
committed template after changing the hunt::

    python -m playbooks.deploy > deploy/sentinel/analytic-rule.json
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from typing import Any

from playbooks.kql import kql_timespan, placeholders
from playbooks.playbook import Playbook, load_playbook

RULE_ID = "b7c4f0e2-5d1a-4c8e-9f3b-2a6d8e1c0f47"
FREQUENCY = timedelta(minutes=15)
# Sign-in logs arrive minutes late; a lookback longer than the frequency sees
# a late row on a later run. Alerts are grouped per account, so overlap does
# not raise a second incident.
LOOKBACK = timedelta(hours=1)

# Constant text, not data: the only values put into the template here.
_WINDOW = {
    "start": f"ago({kql_timespan(LOOKBACK)})",
    "end": "now()",
    "users": "dynamic([])",
}
_ENTITY_COLUMNS = """
| where ResultType == "0"
| extend
    AccountName = tostring(split(UserPrincipalName, "@")[0]),
    AccountUPNSuffix = tostring(split(UserPrincipalName, "@")[1])"""


def rule_query(playbook: Playbook) -> str:
    """The hunt with the rule's window, successful sign-ins only, entity columns added."""
    template = playbook.templates["hunt"]
    unknown = placeholders(template) - set(_WINDOW)
    if unknown:
        raise ValueError(f"the hunt has parameters the rule cannot fill: {sorted(unknown)}")
    text = template
    for name, value in _WINDOW.items():
        text = text.replace("{{" + name + "}}", value)
    return text.rstrip() + _ENTITY_COLUMNS + "\n"


def analytic_rule(playbook: Playbook) -> dict[str, Any]:
    """An ARM template with one scheduled rule and its Account and IP mappings."""
    rule = {
        "type": "Microsoft.OperationalInsights/workspaces/providers/alertRules",
        "apiVersion": "2024-09-01",
        "name": "[concat(parameters('workspaceName'), '/Microsoft.SecurityInsights/', '"
        + RULE_ID
        + "')]",
        "kind": "Scheduled",
        "properties": {
            "displayName": "tokenward: device code sign-in",
            "description": (
                "A successful Entra ID device code authentication, or a token from a "
                "device code flow redeemed in a non-interactive sign-in. Incidents "
                "are sent to tokenward, which scores them against mail and Safe Links "
                "evidence and contains the account when the evidence is strong."
            ),
            "severity": "Medium",
            "enabled": True,
            "query": rule_query(playbook),
            "queryFrequency": _iso(FREQUENCY),
            "queryPeriod": _iso(LOOKBACK),
            "triggerOperator": "GreaterThan",
            "triggerThreshold": 0,
            "suppressionDuration": "PT1H",
            "suppressionEnabled": False,
            "tactics": ["InitialAccess", "CredentialAccess"],
            "techniques": ["T1566", "T1528"],
            "entityMappings": [
                {
                    "entityType": "Account",
                    "fieldMappings": [
                        {"identifier": "AadUserId", "columnName": "UserId"},
                        {"identifier": "Name", "columnName": "AccountName"},
                        {"identifier": "UPNSuffix", "columnName": "AccountUPNSuffix"},
                    ],
                },
                {
                    "entityType": "IP",
                    "fieldMappings": [{"identifier": "Address", "columnName": "IPAddress"}],
                },
            ],
            "eventGroupingSettings": {"aggregationKind": "AlertPerResult"},
            "incidentConfiguration": {
                "createIncident": True,
                "groupingConfiguration": {
                    "enabled": True,
                    "reopenClosedIncident": False,
                    "lookbackDuration": "PT5H",
                    "matchingMethod": "Selected",
                    "groupByEntities": ["Account"],
                    "groupByAlertDetails": [],
                    "groupByCustomDetails": [],
                },
            },
            "customDetails": {
                "AppDisplayName": "AppDisplayName",
                "SourceTable": "SourceTable",
                "UserAgent": "UserAgent",
            },
        },
    }
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {
            "workspaceName": {
                "type": "string",
                "metadata": {"description": "The Log Analytics workspace Sentinel runs on."},
            }
        },
        "resources": [rule],
    }


def _iso(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return f"PT{minutes // 60}H" if minutes % 60 == 0 else f"PT{minutes}M"


def main() -> None:
    json.dump(analytic_rule(load_playbook()), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
