"""A small burst from a second process: every valid delivery once, every bad one a 4xx.

The full figure (1,000 deliveries) comes from the same script run by hand:
``python -m tests.benchmarks.bench_webhook``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_a_concurrent_burst_with_duplicates_and_bad_deliveries_is_processed_exactly_once() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.benchmarks.bench_webhook",
            "--deliveries",
            "40",
            "--concurrency",
            "8",
            "--drain-timeout",
            "120",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The script fails on any 5xx, any bad delivery not refused with a 4xx, and
    # any incident without exactly one run and one recorded comment, and any
    # write to Sentinel (the service runs in dry-run).
    assert "processed exactly once: yes" in done.stdout
    (counts,) = [line for line in done.stdout.splitlines() if line.startswith("status counts")]
    assert not any(item.strip().startswith("5") for item in counts.split(":", 1)[1].split(","))
