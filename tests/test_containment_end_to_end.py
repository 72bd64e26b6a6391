"""Containment end to end: the command line, the real SDKs, the emulator's Graph.

Each test runs ``tokenward`` the way an analyst does (``main([...])`` in this
process, one event loop per command) over exported logs, with a settings file
that points every Microsoft endpoint at the emulator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from playbooks.cli import main
from playbooks.exercises import find_scenario, load_scenario
from playbooks.times import isoformat_z
from tests.emulator import ENVIRON, settings_data
from tests.graph_helpers import ALL_ROLES, GRAPH_AUDIENCE, graph_calls, to_toml

SEED = load_scenario(find_scenario("seed-true-positive"))
TARGET_ID = "6f1a7a3e-1c2b-4d8e-9a41-3b7c2d9e0f11"
TARGET = "target.user@contoso.com"


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    folder = tmp_path / "exports"
    folder.mkdir()
    for table, rows in SEED.tables().items():
        if rows:
            (folder / f"{table}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.fixture
def graph(emu: Any) -> Any:
    emu.identity.roles[GRAPH_AUDIENCE] = list(ALL_ROLES)
    emu.graph.add_user(TARGET, TARGET_ID)
    return emu


def config(tmp_path: Path, emu: Any, **sections: dict[str, Any]) -> Path:
    data = settings_data(
        emu,
        store={"url": f"sqlite:///{tmp_path / 'state.db'}"},
        threat_intel={"ip_ranges": ["185.220.101.0/24"]},
        graph={"verify_delay": 0, "identity_protection_wait": 0},
        **sections,
    )
    path = tmp_path / "tokenward.toml"
    path.write_text(to_toml(data))
    return path


def tokenward(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)
    try:
        main(list(args))
        code = 0
    except SystemExit as stop:
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def hunt(cfg: Path, exports: Path, *extra: str) -> list[str]:
    return [
        "--config", str(cfg), "hunt", "--source", f"files:{exports}",
        "--now", isoformat_z(SEED.clock), "--since", "24h", *extra,
    ]


def test_auto_mode_revokes_and_disables_the_seed_user_exactly_once_over_two_runs(
    tmp_path: Path, exports: Path, graph: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    cfg = config(tmp_path, graph)

    first = tokenward(monkeypatch, capsys, *hunt(cfg, exports, "--mode", "auto", "--json"))
    second = tokenward(monkeypatch, capsys, *hunt(cfg, exports, "--mode", "auto", "--json"))

    assert first[0] == 0, first[2]
    assert second[0] == 0, second[2]
    writes = graph_calls(graph, writes_only=True)
    assert writes == [
        ("POST", f"/users/{TARGET_ID}/revokeSignInSessions", None),
        ("PATCH", f"/users/{TARGET_ID}", {"accountEnabled": False}),
        ("POST", "/identityProtection/riskyUsers/confirmCompromised", {"userIds": [TARGET_ID]}),
    ]
    report = json.loads(first[1])
    assert report["containment"] == "contained"
    steps = {a["action"]: a for a in report["actions"]}
    assert steps["revoke_sessions"]["status"] == "succeeded"
    assert steps["revoke_sessions"]["verified"] is True
    assert steps["disable_account"]["status"] == "succeeded"
    again = {a["action"]: a for a in json.loads(second[1])["actions"]}
    assert {again[kind]["status"] for kind in ("revoke_sessions", "disable_account")} == {"skipped"}
    assert "already done for this sign-in" in again["revoke_sessions"]["detail"]
    assert graph.graph.find(TARGET_ID).account_enabled is False
