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
        "--config",
        str(cfg),
        "hunt",
        "--source",
        f"files:{exports}",
        "--now",
        isoformat_z(SEED.clock),
        "--since",
        "24h",
        *extra,
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


def test_approve_mode_writes_nothing_until_approved_then_sends_exactly_the_plan(
    tmp_path: Path, exports: Path, graph: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    cfg = config(tmp_path, graph)

    code, out, err = tokenward(
        monkeypatch,
        capsys,
        *hunt(cfg, exports, "--mode", "approve", "--requested-by", "ana", "--json"),
    )
    assert code == 0, err
    report = json.loads(out)
    plan_id = report["plan_id"]
    assert f"plan stored for approval: {plan_id}" in err
    assert graph_calls(graph, writes_only=True) == []
    approved_requests = [
        (a["request"]["method"], a["request"]["path"], a["request"]["body"])
        for a in report["actions"]
        if a["request"]["service"] == "graph"
    ]

    # Not approved yet, approved by the requester, approved: only the last executes.
    code, _, err = tokenward(monkeypatch, capsys, "--config", str(cfg), "plans", "execute", plan_id)
    assert code == 1 and "only an approved plan is executed" in err
    code, _, err = tokenward(
        monkeypatch, capsys, "--config", str(cfg), "plans", "approve", plan_id, "--by", "ana"
    )
    assert code == 1 and "may not approve it too" in err
    assert graph_calls(graph, writes_only=True) == []
    code, out, err = tokenward(
        monkeypatch,
        capsys,
        "--config",
        str(cfg),
        "plans",
        "approve",
        plan_id,
        "--by",
        "ben",
        "--reason",
        "phish",
    )
    assert code == 0, err
    assert f"plan {plan_id} approved by ben" in out

    code, out, err = tokenward(
        monkeypatch, capsys, "--config", str(cfg), "plans", "execute", plan_id, "--json"
    )
    assert code == 0, err
    assert graph_calls(graph, writes_only=True) == approved_requests
    assert json.loads(out)["containment"] == "contained"

    # Executed once: a second execute is refused and sends nothing.
    code, _, err = tokenward(monkeypatch, capsys, "--config", str(cfg), "plans", "execute", plan_id)
    assert code == 1 and "already executed" in err
    assert len(graph_calls(graph, writes_only=True)) == len(approved_requests)


def test_a_plan_edited_after_approval_is_refused(
    tmp_path: Path, exports: Path, graph: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from sqlalchemy import update

    from playbooks.store import open_store, plans

    cfg = config(tmp_path, graph)
    _, out, _ = tokenward(monkeypatch, capsys, *hunt(cfg, exports, "--mode", "approve", "--json"))
    plan_id = json.loads(out)["plan_id"]
    tokenward(monkeypatch, capsys, "--config", str(cfg), "plans", "approve", plan_id, "--by", "ben")

    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    body = store.plan(plan_id)["body"]  # type: ignore[index]
    with store.engine.begin() as connection:
        connection.execute(
            update(plans)
            .where(plans.c.id == plan_id)
            .values(body=body.replace(TARGET_ID, "aaaaaaaa-0000-4000-8000-00000000dead"))
        )

    code, _, err = tokenward(monkeypatch, capsys, "--config", str(cfg), "plans", "execute", plan_id)
    assert code == 1 and "changed after it was stored" in err
    assert graph_calls(graph, writes_only=True) == []


def test_an_expired_plan_cannot_be_approved(
    tmp_path: Path, exports: Path, graph: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # The seed's clock is in the past: its plan, stored "then", expires within a minute.
    cfg = config(tmp_path, graph, approvals={"expire_after_hours": 0.0001})
    _, out, _ = tokenward(monkeypatch, capsys, *hunt(cfg, exports, "--mode", "approve", "--json"))
    plan_id = json.loads(out)["plan_id"]
    import time

    time.sleep(0.5)
    code, _, err = tokenward(
        monkeypatch, capsys, "--config", str(cfg), "plans", "approve", plan_id, "--by", "ben"
    )
    assert code == 1 and "expired" in err


def test_dry_run_sends_no_request_at_all(
    tmp_path: Path, exports: Path, graph: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    cfg = config(tmp_path, graph)
    code, out, err = tokenward(monkeypatch, capsys, *hunt(cfg, exports, "--json"))
    assert code == 0, err
    assert {a["status"] for a in json.loads(out)["actions"]} <= {"would_send", "skipped"}
    # Only the permission preflight's token request reached the emulator; no Graph call.
    assert [r.path for r in graph.requests() if not r.path.endswith("/oauth2/v2.0/token")] == []
    assert [
        r for r in graph.requests() if r.method not in ("GET", "POST") or "/v1.0/" in r.path
    ] == []


@pytest.mark.parametrize("mode", ["auto", "approve"])
def test_a_protected_account_is_never_written_to_in_any_mode(
    tmp_path: Path,
    exports: Path,
    graph: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    mode: str,
) -> None:
    # Protected by object id, while the sign-in names the user by UPN.
    cfg = config(tmp_path, graph, guardrails={"protected_accounts": [TARGET_ID]})
    code, out, err = tokenward(monkeypatch, capsys, *hunt(cfg, exports, "--mode", mode, "--json"))
    assert code == 0, err
    assert graph_calls(graph, writes_only=True) == []
    statuses = {a["action"]: a["status"] for a in json.loads(out)["actions"]}
    assert statuses["revoke_sessions"] == statuses["disable_account"] == "blocked"


def test_a_privileged_user_waits_for_approval_in_auto_mode_whatever_the_score(
    tmp_path: Path, exports: Path, graph: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    graph.graph.find(TARGET_ID).roles = [
        {
            "id": "r-1",
            "displayName": "Global Administrator",
            "roleTemplateId": "62e90394-69f5-4237-9190-012177145e10",
        }
    ]
    cfg = config(tmp_path, graph)
    code, out, err = tokenward(monkeypatch, capsys, *hunt(cfg, exports, "--mode", "auto", "--json"))
    assert code == 0, err
    report = json.loads(out)
    assert report["findings"][0]["score"] == 100
    assert graph_calls(graph, writes_only=True) == []
    revoke = next(a for a in report["actions"] if a["action"] == "revoke_sessions")
    assert revoke["status"] == "awaiting_approval"
    assert [d["guardrail"] for d in revoke["decisions"]] == ["privileged_account"]

    # With an informed approval it goes out.
    plan_id = report["plan_id"]
    tokenward(monkeypatch, capsys, "--config", str(cfg), "plans", "approve", plan_id, "--by", "ben")
    code, _, err = tokenward(monkeypatch, capsys, "--config", str(cfg), "plans", "execute", plan_id)
    assert code == 0, err
    assert ("POST", f"/users/{TARGET_ID}/revokeSignInSessions", None) in graph_calls(
        graph, writes_only=True
    )


def test_the_kill_switch_stops_every_write_even_an_approved_plan(
    tmp_path: Path, exports: Path, graph: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    cfg = config(tmp_path, graph)
    _, out, _ = tokenward(monkeypatch, capsys, *hunt(cfg, exports, "--mode", "approve", "--json"))
    plan_id = json.loads(out)["plan_id"]
    tokenward(monkeypatch, capsys, "--config", str(cfg), "plans", "approve", plan_id, "--by", "ben")
    monkeypatch.setenv("TOKENWARD_KILL_SWITCH", "1")

    code, out, err = tokenward(
        monkeypatch, capsys, "--config", str(cfg), "plans", "execute", plan_id, "--json"
    )

    assert code == 0, err
    assert graph_calls(graph, writes_only=True) == []
    assert {
        a["status"] for a in json.loads(out)["actions"] if a["action"] != "comment_on_incident"
    } == {"blocked"}


def test_missing_permissions_refuse_auto_mode_and_only_warn_in_dry_run(
    tmp_path: Path, exports: Path, graph: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # B13 (b): a token with only User.Read.All.
    graph.identity.roles[GRAPH_AUDIENCE] = ["User.Read.All"]
    cfg = config(tmp_path, graph)

    code, _, err = tokenward(monkeypatch, capsys, *hunt(cfg, exports, "--mode", "auto"))
    assert code == 1
    assert "User.RevokeSessions.All" in err and "User.EnableDisableAccount.All" in err
    assert "IdentityRiskyUser.ReadWrite.All" in err and "RoleManagement.Read.Directory" in err
    assert [r for r in graph.requests() if r.path.startswith("/v1.0/")] == []

    code, _, err = tokenward(monkeypatch, capsys, *hunt(cfg, exports))
    assert code == 0
    assert "warning:" in err and "User.RevokeSessions.All" in err

    code, out, _ = tokenward(monkeypatch, capsys, "--config", str(cfg), "doctor")
    assert code == 1
    assert "missing User.RevokeSessions.All" in " ".join(out.split())


def test_b15_revoke_and_disable_twice_in_one_process_from_the_command_line(
    tmp_path: Path, exports: Path, graph: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # Two runs with their own state: each revokes and disables, each in its own loop.
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        code, _, err = tokenward(
            monkeypatch, capsys, *hunt(config(folder, graph), exports, "--mode", "auto")
        )
        assert code == 0, err
        assert "Event loop is closed" not in err
        graph.graph.find(TARGET_ID).account_enabled = True
        graph.graph.find(TARGET_ID).sign_in_sessions_valid_from = "2025-01-01T00:00:00Z"
    kinds = [(m, p) for m, p, _ in graph_calls(graph, writes_only=True) if p.startswith("/users/")]
    assert (
        kinds
        == [("POST", f"/users/{TARGET_ID}/revokeSignInSessions"), ("PATCH", f"/users/{TARGET_ID}")]
        * 2
    )


def test_no_token_or_secret_reaches_a_log_line_or_an_audit_record(
    tmp_path: Path, exports: Path, graph: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from tests.emulator import CLIENT_SECRET

    cfg = config(tmp_path, graph)
    code, out, err = tokenward(monkeypatch, capsys, "-vv", *hunt(cfg, exports, "--mode", "auto"))
    assert code == 0, err

    tokens = {
        r.authorization.split(" ", 1)[1] for r in graph.requests(r"^/v1\.0/") if r.authorization
    }
    assert tokens
    database = (tmp_path / "state.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("state.db-*")
    )
    assert "Graph POST $batch" in err  # the run did log at INFO and DEBUG
    for secret in (*tokens, CLIENT_SECRET):
        assert secret not in out and secret not in err
        assert secret.encode() not in database
        for part in secret.split(".")[:2] if "." in secret else ():
            assert part.encode() not in database


def test_a_mail_address_that_is_not_the_upn_is_found_by_proxy_address(emu: Any) -> None:
    # B27: GET /users/{mail} is 404 when the mail address differs from the UPN.
    from playbooks.models import Target
    from tests.graph_helpers import with_responder

    emu.graph.add_user(
        "Megan.Bowen@contoso.com",
        "aaaaaaaa-0000-4000-8000-000000000002",
        proxy_addresses=["SMTP:mbowen@fabrikam.com"],
    )

    (found,) = with_responder(
        emu, lambda r: r.read_users([Target(user_principal_name="mbowen@fabrikam.com")])
    )

    assert (found.id, found.resolved_by) == (
        "aaaaaaaa-0000-4000-8000-000000000002",
        "email->proxyAddresses->objectId",
    )
    (lookup,) = emu.requests(r"^/v1\.0/users$")
    assert lookup.headers["consistencylevel"] == "eventual"
    assert "%24count=true" in lookup.query or "$count=true" in lookup.query
