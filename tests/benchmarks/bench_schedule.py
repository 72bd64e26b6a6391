"""Sign-in to containment on the scheduled path: tokenward watch against the emulator.

Each run starts from a fresh store and a fresh emulator state: the seed phish
is put in the emulator's workspace with its device code sign-in timed *now*
(T0) but held back by an ingestion delay, as sign-in logs reach a real
workspace late. ``tokenward watch`` (APScheduler, the inbox worker, the real
Log Analytics and Graph SDKs, auto mode) hunts every ``--every`` seconds; the
run ends when Graph receives the revocation.

Two clocks are read for each run and both are printed:

* **audit**: ``finding.contained``'s ``sign_in_to_containment_seconds``, what
  tokenward itself reports (and ``/metrics`` exposes): from the sign-in's
  ``TimeGenerated`` to the run's clock when the containment took effect;
* **wire**: from T0 to the moment the emulator received the
  ``revokeSignInSessions`` call (monotonic clock of this process).

    python -m tests.benchmarks.bench_schedule [--runs 5] [--every 5] [--ingestion-delay 3]

Prints each run and the median; exits 1 if a run did not contain exactly once.
The figure is ingestion delay + the wait for the next cycle (up to one
interval) + one cycle; with the emulator's delay in seconds rather than the
minutes of a real workspace, it shows tokenward's own share.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from playbooks.times import utcnow
from tests.emulator import Emulator, start_emulator
from tests.scheduled import (
    phish_tables,
    records,
    revokes,
    scheduled_settings,
    tenant,
    wait_for,
    watching,
)


def one_run(
    emu: Emulator, directory: Path, *, every: float, delay: float
) -> tuple[float, float, int]:
    """(audit seconds, wire seconds, revocations) of one run."""
    emu.reset()
    tenant(emu)
    settings = scheduled_settings(
        emu, directory, schedule={"hunt_every_seconds": every, "jitter_seconds": 0}
    )
    started = time.monotonic()
    others, phish = phish_tables(utcnow())
    workspace = emu.log_analytics.workspace
    workspace.load(others)
    workspace.add_later({"SigninLogs": [phish]}, after_seconds=delay)
    with watching(settings) as failures:
        wait_for(lambda: revokes(emu) or failures, timeout=120 + every, what="a revocation")
        if failures:
            raise failures[0]
        (request,) = [
            r
            for r in emu.requests(r"^/v1\.0/")
            if b"revokeSignInSessions" in r.body or "revokeSignInSessions" in r.path
        ]
        # One more cycle over the same window: still one revocation.
        seen = len(records(settings, "schedule.window_completed"))
        wait_for(
            lambda: len(records(settings, "schedule.window_completed")) > seen, timeout=60 + every
        )
    (contained,) = records(settings, "finding.contained")
    return (
        float(contained.data["sign_in_to_containment_seconds"]),
        request.at - started,
        len(revokes(emu)),
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--every", type=float, default=5.0, help="schedule.hunt_every_seconds")
    parser.add_argument(
        "--ingestion-delay", type=float, default=3.0, help="seconds the sign-in is held back"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    emu = start_emulator()
    audit: list[float] = []
    wire: list[float] = []
    ok = True
    try:
        for number in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="bench-schedule-") as folder:
                seconds, on_wire, count = one_run(
                    emu, Path(folder), every=args.every, delay=args.ingestion_delay
                )
            audit.append(seconds)
            wire.append(on_wire)
            ok &= count == 1
            print(
                f"run {number + 1}: audit {seconds:.2f} s, wire {on_wire:.2f} s, revocations {count}"
            )
    finally:
        emu.stop()
    print(
        f"sign-in to containment, scheduled path, every {args.every:g} s, ingestion delay "
        f"{args.ingestion_delay:g} s, {args.runs} runs: median audit {statistics.median(audit):.2f} s, "
        f"median wire {statistics.median(wire):.2f} s (min {min(wire):.2f}, max {max(wire):.2f})"
    )
    if not ok:
        print("FAILED: a run did not revoke exactly once", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
