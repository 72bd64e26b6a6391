"""``tokenward hunt --source loganalytics|defender|live`` and ``tokenward doctor``, as a user runs them."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.emulator import ENVIRON, settings_data
from tests.live import phished_tenant, toml_text

TOKENWARD = str(Path(sys.executable).with_name("tokenward"))
WINDOW = [
    "--start",
    "2026-01-15T00:00:00Z",
    "--end",
    "2026-01-15T12:00:00Z",
    "--now",
    "2026-01-15T12:00:00Z",
]


def tokenward(
    tmp_path: Path, emu: Any, *args: str, **sections: Any
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "tokenward.toml"
    config.write_text(toml_text(settings_data(emu, **sections)))
    env = {**os.environ, **ENVIRON}
    return subprocess.run(
        [TOKENWARD, "--config", str(config), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_a_live_hunt_in_log_analytics_reports_the_finding(tmp_path: Path, emu: Any) -> None:
    emu.log_analytics.workspace.load(phished_tenant(1))

    done = tokenward(tmp_path, emu, "hunt", "--source", "loganalytics", *WINDOW, "--json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["source"].startswith("Log Analytics workspace ")
    (finding,) = report["findings"]
    assert finding["tier"] == "high"
    assert finding["follow_on"]["graph_activity"][0]["area"] == "mail"
    assert len(emu.requests(r"^/v1/\$batch$")) == 2


def test_a_live_hunt_with_the_per_table_mix(tmp_path: Path, emu: Any) -> None:
    emu.log_analytics.workspace.load(phished_tenant(1))

    done = tokenward(
        tmp_path,
        emu,
        "hunt",
        "--source",
        "live",
        *WINDOW,
        "--json",
        sources={"tables": {"EmailEvents": "defender", "UrlClickEvents": "defender"}},
    )

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "EmailEvents, UrlClickEvents from Defender XDR advanced hunting" in report["source"]
    assert {q["name"]: q["phase"] for q in report["queries"]}["emails"] == "correlate"


def test_a_failed_live_hunt_exits_non_zero_saying_what_to_check_and_acts_on_nothing(
    tmp_path: Path, emu: Any
) -> None:
    emu.log_analytics.workspace.load(phished_tenant(1))

    done = tokenward(
        tmp_path,
        emu,
        "hunt",
        "--source",
        "loganalytics",
        *WINDOW,
        log_analytics={"workspace_id": "00000000-0000-4000-8000-000000000bad"},
    )

    assert done.returncode == 1
    assert "check log_analytics.workspace_id" in done.stderr
    with sqlite3.connect(tmp_path / "tokenward.db") as db:
        kinds = [kind for (kind,) in db.execute("SELECT kind FROM audit_records ORDER BY seq")]
    assert kinds[-2:] == ["run.failed", "run.finished"]
    assert not [k for k in kinds if k.startswith(("plan.", "action."))]


def test_a_live_hunt_without_a_credential_kind_stops_before_any_request(
    tmp_path: Path, emu: Any
) -> None:
    done = tokenward(
        tmp_path, emu, "hunt", "--source", "defender", *WINDOW, azure={"credential": {"kind": None}}
    )

    assert done.returncode == 1
    assert "no credential is configured: set [azure.credential] kind" in done.stderr
    assert emu.requests() == []


def test_doctor_shows_each_token_with_its_roles_and_each_table_answering(
    tmp_path: Path, emu: Any
) -> None:
    roles = [
        "IdentityRiskyUser.ReadWrite.All",
        "RoleManagement.Read.Directory",
        "ThreatHunting.Read.All",
        "User.EnableDisableAccount.All",
        "User.Read.All",
        "User.RevokeSessions.All",
    ]
    emu.identity.roles["https://graph.microsoft.com"] = roles
    emu.identity.roles["https://api.loganalytics.io"] = ["Data.Read"]

    done = tokenward(tmp_path, emu, "doctor")

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "ok   Graph permission: granted User.RevokeSessions.All" in out
    assert (
        "Log Analytics token: app 3f1c2a8e-6b7d-4e0a-9c55-1d2e3f4a5b6c got a token for https://api.loganalytics.io"
        in out
    )
    assert "roles: Data.Read" in out
    assert "roles: " + ", ".join(roles) in out
    assert "ok   Log Analytics workspace: SigninLogs" in out
    assert "eyJ" not in out + done.stderr


def test_doctor_says_which_service_refused_and_what_to_change(tmp_path: Path, emu: Any) -> None:
    emu.identity.secrets["3f1c2a8e-6b7d-4e0a-9c55-1d2e3f4a5b6c"] = "another secret"

    done = tokenward(tmp_path, emu, "doctor")

    assert done.returncode == 1
    assert (
        "FAIL Log Analytics token: app 3f1c2a8e-6b7d-4e0a-9c55-1d2e3f4a5b6c could not get a token"
        in done.stdout
    )
    assert "AADSTS7000215" in done.stdout
    assert "→ check [azure.credential], azure.tenant_id and azure.authority_host" in done.stdout
    assert "checks failed" in done.stderr


def test_doctor_names_a_table_the_workspace_does_not_have(tmp_path: Path, emu: Any) -> None:
    emu.fault(
        scope="query",
        query="^EmailEvents",
        status=400,
        times=None,
        body={
            "error": {
                "code": "BadArgumentError",
                "message": "'EmailEvents': Failed to resolve table or column expression named 'EmailEvents'",
            }
        },
    )

    done = tokenward(tmp_path, emu, "doctor")

    assert done.returncode == 1
    assert "FAIL Log Analytics workspace: EmailEvents" in done.stdout
    assert "route it to the other source in [sources.tables]" in done.stdout


def test_doctor_catches_a_misspelt_table_in_the_routing(tmp_path: Path, emu: Any) -> None:
    done = tokenward(tmp_path, emu, "doctor", sources={"tables": {"EmailEvent": "defender"}})

    assert done.returncode == 1
    assert (
        "FAIL sources.tables.EmailEvent: the playbook reads no table named EmailEvent"
        in done.stdout
    )
