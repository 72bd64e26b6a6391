"""tokenward serve refuses to start unsafe, and says what to fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TOKENWARD = str(Path(sys.executable).with_name("tokenward"))


def serve(
    tmp_path: Path, config: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "t.toml").write_text(config)
    return subprocess.run(
        [TOKENWARD, "--config", str(tmp_path / "t.toml"), "serve", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            '[azure]\ntenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"\n',
            "webhook.audiences is empty",
        ),
        (
            '[azure]\ntenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"\n[webhook]\naudiences = ["api://tokenward"]\n',
            "webhook.allowed_principals is empty",
        ),
        ('[webhook]\nauth = ["hmac"]\n', "TOKENWARD_WEBHOOK_HMAC_SECRET is unset"),
        ("[webhook]\nauth = []\n", "at least one scheme"),
        ('[server]\nhost = "0.0.0.0"\n', "would serve plain HTTP on 0.0.0.0"),
        (
            '[webhook]\nhmac_secret = "inline"\n',
            "belongs in the TOKENWARD_WEBHOOK_HMAC_SECRET variable",
        ),
    ],
    ids=[
        "no-audience",
        "any-principal",
        "hmac-without-secret",
        "no-scheme",
        "plain-http-outside",
        "secret-in-file",
    ],
)
def test_serve_refuses_to_start_unsafe_and_names_the_setting(
    tmp_path: Path, config: str, message: str
) -> None:
    done = serve(tmp_path, config, "--no-worker", env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 1
    assert message in done.stderr


def test_serve_without_a_source_for_its_worker_says_how_to_give_one(tmp_path: Path) -> None:
    config = '[webhook]\nauth = ["hmac"]\n'
    done = serve(
        tmp_path, config, env={"PATH": "/usr/bin:/bin", "TOKENWARD_WEBHOOK_HMAC_SECRET": "s" * 40}
    )
    assert done.returncode == 1
    assert "the worker needs a query source: give --source files:DIR" in done.stderr


def test_an_unknown_source_is_refused(tmp_path: Path) -> None:
    done = serve(
        tmp_path,
        '[webhook]\nauth = ["hmac"]\n',
        "--source",
        "live:x",
        env={"PATH": "/usr/bin:/bin", "TOKENWARD_WEBHOOK_HMAC_SECRET": "s" * 40},
    )
    assert done.returncode == 2, "a bad --source is a usage error, as for tokenward hunt"
    assert "Invalid value for --source" in done.stderr and "use files:DIR" in done.stderr


HMAC_ONLY = '[webhook]\nauth = ["hmac"]\n'
HMAC_ENV = {"PATH": "/usr/bin:/bin", "TOKENWARD_WEBHOOK_HMAC_SECRET": "s" * 40}


def test_host_given_on_the_command_line_is_checked_as_the_file_is(tmp_path: Path) -> None:
    done = serve(tmp_path, HMAC_ONLY, "--no-worker", "--host", "0.0.0.0", env=HMAC_ENV)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(
        "tokenward: SettingsError: --host 0.0.0.0: tokenward would serve plain HTTP"
    )
    assert "Traceback" not in done.stderr


def test_a_store_url_whose_driver_is_missing_names_store_url(tmp_path: Path) -> None:
    done = serve(
        tmp_path,
        HMAC_ONLY + '[store]\nurl = "mysql://u:hunter2@db/x"\n',
        "--no-worker",
        env=HMAC_ENV,
    )
    assert done.returncode == 1
    assert "at store.url" in done.stderr and "driver for 'mysql' is not installed" in done.stderr
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr


def test_a_worker_source_with_no_exports_stops_serve_before_it_listens(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = serve(tmp_path, HMAC_ONLY, "--source", f"files:{tmp_path / 'empty'}", env=HMAC_ENV)
    assert done.returncode == 1
    assert "holds no export files" in done.stderr and "serving on" not in done.stderr


@pytest.mark.parametrize(
    ("config", "source", "why"),
    [
        (HMAC_ONLY, "live", "--source live needs an Azure credential to read the logs"),
        (
            HMAC_ONLY + 'mode = "approve"\n',
            "files:exports",
            "webhook.mode = 'approve' needs an Azure credential to contain through Microsoft Graph",
        ),
    ],
    ids=["live-source", "approve"],
)
def test_a_worker_that_needs_a_credential_it_has_not_stops_serve_and_says_why(
    tmp_path: Path, config: str, source: str, why: str
) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "SigninLogs.json").write_text("[]")
    done = serve(tmp_path, config, "--source", source, env=HMAC_ENV)
    assert done.returncode == 1
    assert why in done.stderr and "but no credential is configured" in done.stderr
    assert "serving on" not in done.stderr


def test_a_certificate_file_that_is_missing_or_no_pem_stops_serve_naming_the_setting(
    tmp_path: Path,
) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    for cert, expected in (
        (tmp_path / "missing.pem", "missing.pem: no such file"),
        (tmp_path / "junk.pem", "are not a PEM certificate chain and its unencrypted private key"),
    ):
        config = HMAC_ONLY + f'[server]\ncertfile = "{cert}"\nkeyfile = "{cert}"\n'
        done = serve(tmp_path, config, "--no-worker", env=HMAC_ENV)
        assert done.returncode == 1
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("tokenward: SettingsError: at server.certfile: ")
        assert expected in line and "serving on" not in done.stderr


def test_a_port_already_in_use_stops_serve_before_it_says_it_serves(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve(
            tmp_path, HMAC_ONLY + f"[server]\nport = {port}\n", "--no-worker", env=HMAC_ENV
        )
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line == (
        f"tokenward: SettingsError: at server.port: cannot listen on 127.0.0.1:{port}: "
        "Address already in use"
    )
