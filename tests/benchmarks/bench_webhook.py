"""Load on tokenward serve: 1,000 deliveries at once, some duplicated, some malformed.

Three processes on this machine, as in production: ``tokenward serve``
(uvicorn over TLS, the inbox in SQLite, the worker thread), the emulator of
Sentinel and Entra ID in a second, and this load generator in a third. It
sends every delivery concurrently over keep-alive HTTPS connections, times
each acknowledgement from the first byte sent to the last byte of the answer,
then waits for the worker to drain the inbox and checks that every valid
delivery ran exactly once.

    python -m tests.benchmarks.bench_webhook [--deliveries 1000] [--concurrency 32]

Prints the latency figures, the counts by status and the processed-once
checks; exits 1 if any check fails. Not a test: it takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
from sqlalchemy import create_engine, func, select

from playbooks.store import audit_records, inbox
from playbooks.webhook_auth import sign
from tests.emulator import ENVIRON, settings_data
from tests.runs import export_scenario, seed_scenario
from tests.service import AUDIENCE, LOGIC_APP, SECRET, incident
from tests.test_crash_recovery import to_toml

TOKENWARD = str(Path(sys.executable).with_name("tokenward"))


# -- the emulator, in its own process ------------------------------------------------


def emulator_process(conn: Any, incidents: list[dict[str, Any]]) -> None:
    from tests.emulator import start_emulator

    emu = start_emulator()
    for item in incidents:
        emu.sentinel.add(item)
    token = emu.identity.signed_token(AUDIENCE, oid=LOGIC_APP, lifetime=7200)
    conn.send(
        {
            "base_url": emu.base_url,
            "ca": str(emu.ca_file),
            "cert": str(emu.tls.cert_file),
            "key": str(emu.tls.key_file),
            "token": token,
        }
    )
    conn.recv()
    # The service runs in dry-run: it must write nothing to Sentinel.
    writes = sum(
        len(emu.requests(r"(?i)/incidents/", method=method))
        for method in ("PUT", "POST", "PATCH", "DELETE")
    )
    conn.send({"writes": writes})
    emu.stop()


# -- what is sent ----------------------------------------------------------------------


def deliveries(
    total: int, rng: random.Random
) -> tuple[list[dict[str, Any]], list[tuple[str, bytes, dict[str, str]]]]:
    """Incidents to seed, and (kind, body, headers) to send, shuffled."""
    duplicates = total // 10
    malformed = total // 10
    unique = total - duplicates - malformed
    bodies = [incident() for _ in range(unique)]
    sent: list[tuple[str, bytes, dict[str, str]]] = [
        ("valid", json.dumps(b).encode(), {}) for b in bodies
    ]
    sent += [("duplicate", json.dumps(rng.choice(bodies)).encode(), {}) for _ in range(duplicates)]
    bad = [
        ("bad-json", b'{"object": {"id": ', {}),
        ("wrong-type", json.dumps(incident(incidentNumber="12")).encode(), {}),
        ("missing-field", json.dumps({"object": {"id": bodies[0]["object"]["id"]}}).encode(), {}),
        (
            "hostile-id",
            json.dumps(
                {**incident(), "object": {**incident()["object"], "id": "/subscriptions/../x"}}
            ).encode(),
            {},
        ),
        ("unsigned", json.dumps(incident()).encode(), {"unsigned": "1"}),
        ("forged", json.dumps(incident()).encode(), {"forged": "1"}),
        ("replayed", json.dumps(incident()).encode(), {"replayed": "1"}),
        ("oversized", b'{"object": "' + b"x" * 1_100_000 + b'"}', {}),
    ]
    sent += [bad[i % len(bad)] for i in range(malformed)]
    rng.shuffle(sent)
    return [b["object"] for b in bodies], sent


def headers_for(
    kind: str, body: bytes, extra: dict[str, str], token: str, rng: random.Random
) -> dict[str, str]:
    now = int(time.time())
    headers = {"Content-Type": "application/json"}
    if "unsigned" in extra:
        return headers
    if "forged" in extra:
        return headers | {
            "X-Tokenward-Timestamp": str(now),
            "X-Tokenward-Signature": sign(body, secret=b"f" * 40, timestamp=now),
        }
    if "replayed" in extra:
        return headers | {
            "X-Tokenward-Timestamp": str(now - 3600),
            "X-Tokenward-Signature": sign(body, secret=SECRET.encode(), timestamp=now - 3600),
        }
    # Half as the Logic App does it (an Entra ID token), half HMAC-signed.
    if rng.random() < 0.5:
        return headers | {"Authorization": f"Bearer {token}"}
    return headers | {
        "X-Tokenward-Timestamp": str(now),
        "X-Tokenward-Signature": sign(body, secret=SECRET.encode(), timestamp=now),
    }


async def send_all(
    url: str,
    ca: str,
    sent: list[tuple[str, bytes, dict[str, str]]],
    token: str,
    concurrency: int,
    rng: random.Random,
) -> list[dict[str, Any]]:
    context = ssl.create_default_context(cafile=ca)
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=context)
    results: list[dict[str, Any]] = []
    queue: asyncio.Queue[tuple[str, bytes, dict[str, str]]] = asyncio.Queue()
    for item in sent:
        queue.put_nowait(item)

    async with aiohttp.ClientSession(connector=connector) as session:
        # Open the connections first: TLS handshakes are not acknowledgements.
        await asyncio.gather(*(session.get(f"{url}/healthz") for _ in range(concurrency)))

        async def lane() -> None:
            while not queue.empty():
                kind, body, extra = queue.get_nowait()
                headers = headers_for(kind, body, extra, token, rng)
                started = time.perf_counter()
                async with session.post(
                    f"{url}/webhooks/sentinel", data=body, headers=headers
                ) as answer:
                    payload = await answer.read()
                elapsed = time.perf_counter() - started
                results.append(
                    {
                        "kind": kind,
                        "status": answer.status,
                        "ms": elapsed * 1000,
                        "body": payload,
                        "sent": body,
                    }
                )

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        results.append(
            {
                "kind": "_wall",
                "status": 0,
                "ms": (time.perf_counter() - started) * 1000,
                "body": b"",
                "sent": b"",
            }
        )
    return results


# -- the run -----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--drain-timeout", type=float, default=900)
    parser.add_argument(
        "--worker",
        choices=("thread", "process", "none"),
        default="thread",
        help="thread: tokenward serve with the worker process it starts (the default "
        "setup); process: tokenward serve --no-worker plus a tokenward worker process; "
        "none: no worker at all (acknowledgements only, nothing is processed)",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="tokenward-bench-"))

    seeded, sent = deliveries(args.deliveries, rng)
    parent, child = multiprocessing.get_context("spawn").Pipe()
    emulator = multiprocessing.get_context("spawn").Process(
        target=emulator_process, args=(child, seeded), daemon=True
    )
    emulator.start()
    emu = parent.recv()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    scenario = seed_scenario()
    exports = export_scenario(scenario, folder / "exports")
    fake = SimpleNamespace(base_url=emu["base_url"], ca_file=emu["ca"])
    settings = settings_data(
        fake,  # type: ignore[arg-type]
        store={"url": f"sqlite:///{folder / 'tokenward.db'}"},
        server={"port": port, "certfile": emu["cert"], "keyfile": emu["key"]},
        webhook={
            "auth": ["bearer", "hmac"],
            "audiences": [AUDIENCE],
            "allowed_principals": [LOGIC_APP],
        },
        inbox={"poll_seconds": 0.2},
        threat_intel={"ip_ranges": ["185.220.101.0/24"]},
        # Every incident here finds its sign-in; no re-hunt should follow, and
        # none is wanted in the one-run-per-incident count.
        sentinel={"rehunt_after": []},
    )
    (folder / "tokenward.toml").write_text(to_toml(settings))
    log = (folder / "serve.log").open("wb")
    source = [
        "--source",
        f"files:{exports}",
        "--now",
        scenario.clock.strftime("%Y-%m-%dT%H:%M:%SZ"),
    ]
    config = [TOKENWARD, "--config", str(folder / "tokenward.toml")]
    env = {**os.environ, **ENVIRON, "TOKENWARD_WEBHOOK_HMAC_SECRET": SECRET}
    apart = ["--no-worker"] if args.worker in ("process", "none") else []
    serve = subprocess.Popen(
        [*config, "serve", *source, *apart], cwd=folder, env=env, stdout=log, stderr=log
    )
    worker = None
    if args.worker == "process":
        worker = subprocess.Popen(
            [*config, "worker", *source], cwd=folder, env=env, stdout=log, stderr=log
        )
    url = f"https://127.0.0.1:{port}"
    try:
        wait_ready(url, emu["ca"], serve)
        print(
            f"tokenward serve pid {serve.pid} on {url}; emulator pid {emulator.pid}; load from pid {os.getpid()}"
        )
        print(f"sending {len(sent)} deliveries, {args.concurrency} at a time ...")
        results = asyncio.run(send_all(url, emu["ca"], sent, emu["token"], args.concurrency, rng))
        wall = results.pop()["ms"]
        print_latency(results, wall)
        if args.worker == "none":
            return 0
        print("waiting for the worker to drain the inbox ...", flush=True)
        drained = drain(folder / "tokenward.db", args.drain_timeout)
    finally:
        for process in (serve, worker):
            if process is not None:
                process.send_signal(signal.SIGTERM)
                process.wait(60)
        log.close()
        parent.send("stop")
        seen = parent.recv()
        emulator.join(30)

    return report(results, wall, drained, seen, folder)


def wait_ready(url: str, ca: str, serve: subprocess.Popen[bytes]) -> None:
    import httpx

    context = ssl.create_default_context(cafile=ca)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise SystemExit("tokenward serve exited early")
        try:
            if httpx.get(f"{url}/readyz", verify=context, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("tokenward serve did not become ready")


def drain(database: Path, timeout: float) -> float:
    engine = create_engine(f"sqlite:///{database}")
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with engine.connect() as connection:
            open_rows = connection.execute(
                select(func.count())
                .select_from(inbox)
                .where(inbox.c.status.in_(("pending", "running")))
            ).scalar_one()
        if open_rows == 0:
            return time.monotonic() - started
        time.sleep(1)
    return -1.0


def print_latency(results: list[dict[str, Any]], wall_ms: float) -> None:
    latencies = sorted(r["ms"] for r in results)
    statuses = Counter(r["status"] for r in results)
    by_kind = Counter((r["kind"], r["status"]) for r in results)
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    print(
        f"\nacknowledgement latency over {len(results)} requests (ms): p50 {q[49]:.1f}  p95 {q[94]:.1f}  p99 {q[98]:.1f}  max {latencies[-1]:.1f}"
    )
    print(f"sent in {wall_ms / 1000:.2f} s ({len(results) / (wall_ms / 1000):.0f} requests/s)")
    print("status counts: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
    for (kind, status), count in sorted(by_kind.items()):
        times = sorted(r["ms"] for r in results if (r["kind"], r["status"]) == (kind, status))
        print(
            f"  {kind:<14} {status}  x{count:<4} median {times[len(times) // 2]:6.1f} ms  max {times[-1]:6.1f} ms"
        )
    accepted = sorted(r["ms"] for r in results if r["status"] == 202)
    if len(accepted) > 1:
        qa = statistics.quantiles(accepted, n=100, method="inclusive")
        print(
            f"the {len(accepted)} 202 answers alone (ms): p50 {qa[49]:.1f}  p95 {qa[94]:.1f}  p99 {qa[98]:.1f}  max {accepted[-1]:.1f}"
        )
    sys.stdout.flush()


def report(
    results: list[dict[str, Any]],
    wall_ms: float,
    drained: float,
    seen: dict[str, Any],
    folder: Path,
) -> int:

    problems: list[str] = []
    valid = [r for r in results if r["kind"] in ("valid", "duplicate")]
    bad = [r for r in results if r["kind"] not in ("valid", "duplicate")]
    if any(r["status"] >= 500 for r in results):
        problems.append(f"{sum(r['status'] >= 500 for r in results)} answers were 5xx")
    if any(not 400 <= r["status"] < 500 for r in bad):
        problems.append("a bad delivery was not refused with a 4xx")
    if any(r["status"] != 202 for r in valid):
        problems.append("a valid delivery was not acknowledged with 202")

    # One run per incident: duplicates were answered with their original's run id.
    run_of: dict[str, set[str]] = {}
    for r in valid:
        if r["status"] == 202:
            name = json.loads(r["sent"])["object"]["name"].lower()
            run_of.setdefault(name, set()).add(json.loads(r["body"])["run_id"])
    if any(len(runs) != 1 for runs in run_of.values()):
        problems.append("an incident was given more than one run id")
    engine = create_engine(f"sqlite:///{folder / 'tokenward.db'}")
    with engine.connect() as connection:
        rows = connection.execute(select(inbox.c.run_id, inbox.c.status, inbox.c.attempts)).all()
        finished = Counter(
            r.run_id
            for r in connection.execute(
                select(audit_records.c.run_id).where(audit_records.c.kind == "run.finished")
            )
        )
        # The comment each dry-run would have written, recorded instead.
        rehearsed = Counter(
            r.run_id
            for r in connection.execute(
                select(audit_records.c.run_id).where(audit_records.c.kind == "incident.dry_run")
            )
        )
    done = sum(row.status == "done" for row in rows)
    print(
        f"\ninbox: {len(rows)} runs stored for {len(run_of)} distinct incidents; {done} done; drained {drained:.0f} s after the last acknowledgement"
    )
    print(
        f"runs finished once: {sum(finished[row.run_id] == 1 for row in rows)}/{len(rows)}; attempts > 1: {sum(row.attempts > 1 for row in rows)}"
    )
    print(
        f"Sentinel: {seen['writes']} write(s) (dry-run); recorded comments per run "
        f"{dict(Counter(rehearsed[row.run_id] for row in rows))}"
    )
    if len(rows) != len(run_of) or done != len(rows):
        problems.append("not every valid incident was stored once and run to the end")
    if any(finished[row.run_id] != 1 for row in rows):
        problems.append("a run finished more or less than once")
    if seen["writes"]:
        problems.append("the dry-run service wrote to Sentinel")
    if any(rehearsed[row.run_id] != 1 for row in rows):
        problems.append("a run did not record exactly one would-be comment")
    if drained < 0:
        problems.append("the inbox did not drain in time")
    print("\nprocessed exactly once: " + ("yes" if not problems else "NO"))
    for problem in problems:
        print(f"  problem: {problem}")
    print(f"(service log and database in {folder})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
