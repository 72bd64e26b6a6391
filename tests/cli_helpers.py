"""Run the ``tokenward`` command in-process, as a user would, in a scratch folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from playbooks.cli import main


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def settings_file(folder: Path) -> Path:
    """A settings file whose state database lives in *folder*, not the cwd."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenward.toml"
    path.write_text(f'[store]\nurl = "sqlite:///{folder / "state.db"}"\n', encoding="utf-8")
    return path


def run_tokenward(args: list[str], folder: Path, capsys: pytest.CaptureFixture[str]) -> CliResult:
    """``tokenward --config … ARGS``; the exit code, stdout and stderr."""
    capsys.readouterr()
    code = 0
    try:
        main(["--config", str(settings_file(folder)), *args])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return CliResult(code=code, out=captured.out, err=captured.err)
