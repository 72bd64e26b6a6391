"""Advanced hunting rows come back in the shapes Log Analytics rows have."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.live import live_settings, phished_tenant, run_live


@pytest.mark.parametrize(("keys", "dynamic_as_text"), [("name", False), ("Name", True)])
def test_schema_keys_in_either_case_and_dynamic_cells_either_way_give_the_same_findings(
    emu: Any, audit_log: Any, keys: str, dynamic_as_text: bool
) -> None:
    emu.log_analytics.workspace.load(phished_tenant(2))
    expected = [(f.user_principal_name, f.score) for f in run_live(emu, audit_log).report.findings]
    emu.defender.schema_keys = keys
    emu.defender.dynamic_as_text = dynamic_as_text

    done = run_live(emu, audit_log, mode="defender", settings=live_settings(emu))

    assert [(f.user_principal_name, f.score) for f in done.report.findings] == expected
    (finding,) = done.report.findings[:1]
    # kiota turned these GUID strings into UUIDs; they are text again.
    assert isinstance(finding.user_id, str) and uuid.UUID(finding.user_id)
    assert finding.sign_in_time == datetime(2026, 1, 15, 9, 24, 58, tzinfo=UTC)
    baseline = finding.baseline
    assert baseline is not None and baseline.countries == ("US",)


def test_kiota_conversions_are_undone_per_column_type() -> None:
    from connectors.defender import hunting_rows

    class Column:
        def __init__(self, **data: Any) -> None:
            self.name, self.type, self.additional_data = (
                data.get("name"),
                data.get("type"),
                data.get("extra", {}),
            )

    class Row:
        def __init__(self, values: dict[str, Any]) -> None:
            self.additional_data = values

    class Result:
        schema = [
            Column(extra={"Name": "UserId", "Type": "String"}),
            Column(name="Subject", type="String"),
            Column(name="Timestamp", type="DateTime"),
            Column(name="Extra", type="Object"),
            Column(name="Count", type="Int64"),
        ]
        results = [
            Row(
                {
                    "UserId": uuid.UUID("6F1A7A3E-1C2B-4D8E-9A41-3B7C2D9E0F11"),
                    "Subject": datetime(2026, 1, 1),
                    "Timestamp": datetime(2026, 1, 15, 10, 24, 58),
                    "Extra": {"deviceId": uuid.UUID(int=1), "seen": "x"},
                    "Count": 3,
                }
            )
        ]

    (row,) = hunting_rows(Result())
    assert row["UserId"] == "6f1a7a3e-1c2b-4d8e-9a41-3b7c2d9e0f11"
    assert row["Subject"] == "2026-01-01T00:00:00Z"
    assert row["Timestamp"] == datetime(2026, 1, 15, 10, 24, 58, tzinfo=UTC)
    assert row["Extra"] == {"deviceId": "00000000-0000-0000-0000-000000000001", "seen": "x"}
    assert row["Count"] == 3
