#!/usr/bin/env python3
"""Mixed-workload load test: many clients for a fixed time, then a check that no acknowledged write was lost.

Run from the repository root with the package installed (e.g. in its virtualenv):

    python bench/load.py                                  # PostgreSQL, 2 workers, 3 rounds of 30 s
    python bench/load.py --backend sqlite --duration 10 --rounds 1
    python bench/load.py --json > load.json

It starts `fhir-server serve --workers N` (PostgreSQL: a throwaway durable cluster from tests/pgcluster.py,
fsync on; SQLite: the embedded file), PUTs the Patients, creates a first set of Observations (untimed), runs
VACUUM (ANALYZE) on PostgreSQL (the statistics autovacuum keeps on a database in use, which a store
filled a moment ago does not have yet), then runs each round as --clients keep-alive connections, each
sending requests one after another for --duration seconds, picked at random in these shares:

  70 % reads and searches  read of a known Observation by id (30 %), Patient by id (10 %), and searches
                           (30 %): a patient's blood pressures by code and date, Patients by name,
                           Observations by patient with _sort=-date and _count=10
  25 % writes              create of an Observation (15 %), update of one this connection wrote before,
                           with If-Match on the version it was told (10 %)
   5 % transactions        a Bundle of an Encounter and two Observations that refer to it by urn:uuid

Every write carries a fresh marker (an identifier value). The client keeps every acknowledgement (type, id,
version, marker, from the Location / the transaction-response entries). After the rounds it reads back
every acknowledged version with vread and each resource's current version: a write is *lost* if its
version is missing or holds another marker, or if a resource's current version is older than the newest
one acknowledged. Errors are answers other than the one expected (200/201) and connection failures.

Before each round it measures GET /health with the same clients for a few seconds: raw HTTP through the
same server, the baseline the mixed workload is quoted against. It prints, per round and as medians,
requests/s, p50/p99 latency per kind, the errors, the lost writes and where the CPU went. Nothing here
asserts on speed: this is a measuring tool, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import orjson  # noqa: E402  (a dependency of the server)
from crud import (  # noqa: E402  (the benches share one way of running a server and of loading it)
    HOST,
    Connection,
    Server,
    _connect,
    blood_pressure,
    cpu_snapshot,
    cpu_split,
    dumps,
    http_request,
    listening_pids,
    percentile,
    server_workers,
    uvloop,
)
from pgcluster import controlled_cluster  # noqa: E402
from search import analyze  # noqa: E402

MARKER = "urn:alliance:bench:load"  # identifier system of the per-write marker
KINDS = ("read", "read-patient", "search", "create", "update", "transaction")
SHARES = {"read": 30, "read-patient": 10, "search": 30, "create": 15, "update": 10, "transaction": 5}
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def patient_ids(count: int) -> list[str]:
    return [f"load-patient-{i:04d}" for i in range(count)]


def marked(resource: dict[str, Any]) -> tuple[dict[str, Any], str]:
    marker = uuid.uuid4().hex
    resource["identifier"] = [{"system": MARKER, "value": marker}]
    return resource, marker


def observation(rng: random.Random, patients: list[str]) -> dict[str, Any]:
    resource = blood_pressure(rng, EPOCH + timedelta(seconds=rng.randrange(365 * 86400)))
    resource["subject"] = {"reference": f"Patient/{rng.choice(patients)}"}
    return resource


def transaction(rng: random.Random, patients: list[str]) -> tuple[dict[str, Any], list[str]]:
    """An Encounter and two Observations of one visit; the markers in entry order."""
    subject = {"reference": f"Patient/{rng.choice(patients)}"}
    when = EPOCH + timedelta(seconds=rng.randrange(365 * 86400))
    encounter_urn = f"urn:uuid:{uuid.uuid4()}"
    encounter, m0 = marked({
        "resourceType": "Encounter", "status": "finished", "subject": subject,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "period": {"start": when.isoformat(timespec="seconds"),
                   "end": (when + timedelta(minutes=15)).isoformat(timespec="seconds")}})
    entries = [{"fullUrl": encounter_urn, "resource": encounter, "request": {"method": "POST", "url": "Encounter"}}]
    markers = [m0]
    for _ in range(2):
        obs, marker = marked(observation(rng, patients))
        obs["subject"] = subject
        obs["encounter"] = {"reference": encounter_urn}
        obs["effectiveDateTime"] = when.isoformat(timespec="seconds")
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": obs,
                        "request": {"method": "POST", "url": "Observation"}})
        markers.append(marker)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}, markers


def search_path(rng: random.Random, patients: list[str]) -> str:
    choice = rng.randrange(3)
    patient = rng.choice(patients)
    if choice == 0:
        day = (EPOCH + timedelta(days=rng.randrange(300))).date().isoformat()
        return f"/Observation?subject=Patient/{patient}&code=http://loinc.org|85354-9&date=ge{day}&_count=20"
    if choice == 1:
        return f"/Patient?name=Load{rng.randrange(100):02d}&_count=20"
    return f"/Observation?patient={patient}&_sort=-date&_count=10"


def location_parts(location: str) -> tuple[str, str, str]:
    """(type, id, version) of [base]/Type/id/_history/vid."""
    path, _, version = location.partition("/_history/")
    head, _, resource_id = path.rpartition("/")
    return head.rpartition("/")[2], resource_id, version.strip("/")


# ---------------------------------------------------------------------------------------------
# One client process: `clients` connections for `duration` seconds.


async def _clients(port: int, clients: int, duration: float, seed: str, read_ids: list[str], patients: list[str],
                   start_at: float | None, health_only: bool, workers: list[int]) -> dict[str, Any]:
    rng = random.Random(seed)
    kinds = [k for k in KINDS for _ in range(SHARES[k])]
    latencies: dict[str, list[float]] = {k: [] for k in ("health", *KINDS)}
    errors: Counter[str] = Counter()
    samples: list[str] = []
    acks: list[tuple[str, str, int, str]] = []  # (type, id, version, marker) of every acknowledged write
    health = http_request("GET", "/health", port)

    async def one(conn: Connection, mine: dict[str, tuple[int, dict[str, Any]]], deadline: float) -> None:
        while time.perf_counter() < deadline:
            kind = "health" if health_only else rng.choice(kinds)
            if kind == "update" and not mine:
                kind = "create"
            expect, written = 200, []
            if kind == "health":
                request = health
            elif kind == "read":
                request = http_request("GET", f"/Observation/{rng.choice(read_ids)}", port)
            elif kind == "read-patient":
                request = http_request("GET", f"/Patient/{rng.choice(patients)}", port)
            elif kind == "search":
                request = http_request("GET", search_path(rng, patients), port)
            elif kind == "create":
                resource, marker = marked(observation(rng, patients))
                request = http_request("POST", "/Observation", port, dumps(resource),
                                       {"Prefer": "return=minimal"})
                expect, written = 201, [marker]
            elif kind == "update":
                target = rng.choice(list(mine))
                version, resource = mine[target]
                resource = {**resource, "id": target, "status": rng.choice(["final", "amended", "corrected"])}
                resource, marker = marked(resource)
                request = http_request("PUT", f"/Observation/{target}", port, dumps(resource),
                                       {"If-Match": f'W/"{version}"', "Prefer": "return=minimal"})
                written = [marker]
            else:
                bundle, written = transaction(rng, patients)
                request = http_request("POST", "/", port, dumps(bundle))
            t = time.perf_counter()
            try:
                status, location, body = await conn.exchange(request)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                conn.close()
                errors[f"{kind}: {type(exc).__name__}: {exc}"[:200]] += 1
                continue
            latencies[kind].append(time.perf_counter() - t)
            if status != expect:
                errors[f"{kind}: {status}"] += 1
                if len(samples) < 5:
                    samples.append(f"{kind} {status} {request.split(b' ', 2)[1].decode()} -> {body[:300]!r}")
                continue
            try:
                if kind in ("create", "update"):
                    rtype, rid, version = location_parts(location.decode())
                    acks.append((rtype, rid, int(version), written[0]))
                    mine[rid] = (int(version), resource)
                elif kind == "transaction":
                    for entry, marker in zip(orjson.loads(body)["entry"], written, strict=True):
                        rtype, rid, version = location_parts(entry["response"]["location"])
                        acks.append((rtype, rid, int(version), marker))
            except (AttributeError, KeyError, ValueError) as exc:  # acknowledged, but not as the spec says
                errors[f"{kind}: unreadable acknowledgement: {type(exc).__name__}"] += 1

    connections, _ = await _connect(port, clients, workers, spread=True)
    if start_at is not None:  # several client processes start together
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(c, {}, t0 + duration) for c in connections))
    t1, cpu1 = time.perf_counter(), time.process_time()
    for c in connections:
        c.close()
    return {"t0": t0, "t1": t1, "cpu": cpu1 - cpu0, "latencies": latencies, "errors": errors,
            "samples": samples, "acks": acks}


def clients_in_process(*args: Any) -> dict[str, Any]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if uvloop else None) as runner:
        return runner.run(_clients(*args))


def run_phase(pool: ProcessPoolExecutor | None, procs: int, port: int, clients: int, duration: float, seed: str,
              read_ids: list[str], patients: list[str], health_only: bool, server_pid: int,
              db_pid: int | None) -> dict[str, Any]:
    """Run the clients (over `procs` processes, connections evened out over the workers) and merge what they
    measured."""
    workers = server_workers(port, server_pid)
    if pool is None:
        before = cpu_snapshot()
        parts = [clients_in_process(port, clients, duration, seed, read_ids, patients, None, health_only, workers)]
        after = cpu_snapshot()
    else:
        start_at = time.perf_counter() + 1.0 + clients * 0.01  # CLOCK_MONOTONIC: the same in every process
        futures = [pool.submit(clients_in_process, port, clients // procs + (i < clients % procs), duration,
                               f"{seed}-{i}", read_ids, patients, start_at, health_only, workers)
                   for i in range(procs)]
        time.sleep(max(0.0, start_at - time.perf_counter()))
        before = cpu_snapshot()
        parts = [f.result() for f in futures]
        after = cpu_snapshot()
    seconds = max(p["t1"] for p in parts) - min(p["t0"] for p in parts)
    latencies = {k: sorted(x for p in parts for x in p["latencies"][k]) for k in ("health", *KINDS)}
    everything = sorted(x for values in latencies.values() for x in values)
    client_cpu = sum(p["cpu"] for p in parts)
    return {
        "seconds": seconds, "requests": len(everything), "rate": len(everything) / seconds,
        "p50_ms": percentile(everything, 0.5) * 1000, "p99_ms": percentile(everything, 0.99) * 1000,
        "kinds": {k: {"count": len(v), "rate": len(v) / seconds, "p50_ms": percentile(v, 0.5) * 1000,
                      "p99_ms": percentile(v, 0.99) * 1000} for k, v in latencies.items() if v},
        "errors": dict(sum((p["errors"] for p in parts), Counter())),
        "samples": [s for p in parts for s in p["samples"]][:5],
        "acks": [a for p in parts for a in p["acks"]],
        "cpu": cpu_split(before, after, client_cpu, seconds, server_pid, db_pid),
    }


# ---------------------------------------------------------------------------------------------
# Set-up and the lost-write check (plain request/response over a few connections, untimed)


async def _exchange_all(port: int, requests: list[bytes], connections: int = 16) -> list[tuple[int, bytes | None,
                                                                                                bytes]]:
    results: list[Any] = [None] * len(requests)
    work = iter(range(len(requests)))

    async def worker() -> None:
        conn = Connection(port)
        for i in work:
            for attempt in range(3):
                try:
                    results[i] = await conn.exchange(requests[i])
                    break
                except (OSError, asyncio.IncompleteReadError) as exc:
                    conn.close()
                    results[i] = (0, None, f"{type(exc).__name__}: {exc}".encode())
                    await asyncio.sleep(0.1 * (attempt + 1))
        conn.close()

    await asyncio.gather(*(worker() for _ in range(min(connections, len(requests)) or 1)))
    return results


def exchange_all(port: int, requests: list[bytes]) -> list[tuple[int, bytes | None, bytes]]:
    return asyncio.run(_exchange_all(port, requests))


def set_up(port: int, patients: list[str], observations: int, rng: random.Random) -> list[str]:
    """PUT the Patients and create the Observations that reads go to; their ids."""
    puts = [http_request("PUT", f"/Patient/{p}", port, dumps({
        "resourceType": "Patient", "id": p, "active": True, "gender": ("female", "male")[i % 2],
        "name": [{"family": f"Load{i % 100:02d}", "given": ["Test"]}], "birthDate": f"{1940 + i % 60}-06-15"}))
        for i, p in enumerate(patients)]
    creates = [http_request("POST", "/Observation", port, dumps(observation(rng, patients)),
                            {"Prefer": "return=minimal"}) for _ in range(observations)]
    answers = exchange_all(port, puts + creates)
    bad = [(s, b[:200]) for s, _, b in answers if s not in (200, 201)]
    if bad:
        raise RuntimeError(f"set-up: {len(bad)} requests failed, e.g. {bad[:3]}")
    return [location_parts(loc.decode())[1] for _, loc, _ in answers[len(puts):]]


def check_acknowledged(port: int, acks: list[tuple[str, str, int, str]]) -> dict[str, Any]:
    """Read back every acknowledged version and every resource's current version."""
    vreads = [http_request("GET", f"/{t}/{i}/_history/{v}", port) for t, i, v, _ in acks]
    newest: dict[tuple[str, str], int] = {}
    for t, i, v, _ in acks:
        newest[(t, i)] = max(v, newest.get((t, i), 0))
    current = list(newest)
    answers = exchange_all(port, vreads + [http_request("GET", f"/{t}/{i}", port) for t, i in current])
    lost: list[str] = []
    unread = sum(1 for status, _, _ in answers if status == 0)  # the check's own connection failed: not a verdict
    for (t, i, v, marker), (status, _, body) in zip(acks, answers[:len(acks)], strict=True):
        if status == 0:
            continue
        if status != 200:
            lost.append(f"{t}/{i}/_history/{v}: {status}")
            continue
        found = [x.get("value") for x in orjson.loads(body).get("identifier", []) if x.get("system") == MARKER]
        if found != [marker]:
            lost.append(f"{t}/{i}/_history/{v}: marker {found} instead of {marker}")
    for (t, i), (status, _, body) in zip(current, answers[len(acks):], strict=True):
        if status == 0:
            continue
        version = int(orjson.loads(body)["meta"]["versionId"]) if status == 200 else 0
        if version < newest[(t, i)]:
            lost.append(f"{t}/{i}: current version {version or status}, acknowledged {newest[(t, i)]}")
    return {"acknowledged_writes": len(acks), "resources": len(current), "lost": len(lost), "lost_samples": lost[:10],
            "unread": unread}


# ---------------------------------------------------------------------------------------------


def out(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def describe(name: str, phase: dict[str, Any]) -> str:
    cpu = phase["cpu"]
    text = (f"  {name:<7} {phase['requests']:>7} in {phase['seconds']:5.1f} s {phase['rate']:7.0f}/s"
            f"  p50 {phase['p50_ms']:6.1f} ms  p99 {phase['p99_ms']:7.1f} ms  errors {sum(phase['errors'].values())}"
            f"  cpu server {cpu.get('server', 0):.2f} client {cpu.get('client', 0):.2f} db {cpu.get('db', 0):.2f}"
            f" other {cpu.get('other', 0):.2f}")
    if "new_db_sessions" in phase:
        text += f"  new db sessions {phase['new_db_sessions']}"
    if cpu.get("outside") or cpu.get("other", 0) >= 0.3:
        text += f"\n          NOT QUIET? {cpu.get('other', 0):.2f} cores elsewhere: {', '.join(cpu.get('outside', []))}"
    for error, count in phase["errors"].items():
        text += f"\n          {count} x {error}"
    for sample in phase["samples"]:
        text += f"\n          e.g. {sample}"
    return text


def median_of(rounds: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


async def database_sessions(url: str) -> int:
    """Sessions PostgreSQL has started in the database so far (this one included)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
    finally:
        await conn.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix=f"fhir-load-{args.backend}-"))
        if not args.keep:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        env = {"FHIR_TERMINOLOGY_LOAD": "false"} if args.no_terminology else {}
        db_pid = None
        if args.backend == "postgresql":
            out("starting a durable PostgreSQL cluster ...")
            cluster = stack.enter_context(controlled_cluster(durable=True))
            env["FHIR_DATABASE_URL"] = cluster.url
            db_pid = (listening_pids(cluster.port) or [None])[0]
        server = Server(workdir, args.workers, env)
        stack.callback(server.stop)
        server.wait_ready()
        port, pid = server.port, server.process.pid
        out(f"[{args.backend}] server pid {pid} on port {port} with {len(server_workers(port, pid))} workers,"
            f" log {server.log_path}")
        rng = random.Random(args.seed)
        patients = patient_ids(args.patients)
        read_ids = set_up(port, patients, args.observations, rng)
        out(f"[{args.backend}] set up {len(patients)} Patients and {len(read_ids)} Observations")
        if args.backend == "postgresql":  # planner statistics, as autovacuum keeps them on a database in use
            asyncio.run(analyze(cluster.url, vacuum=True))

        pool = None
        if args.client_procs > 1:
            pool = stack.enter_context(ProcessPoolExecutor(args.client_procs,
                                                           mp_context=multiprocessing.get_context("spawn")))
        rounds, baselines, acks = [], [], []
        for n in range(1, args.rounds + 1):
            out(f"[{args.backend}] round {n}/{args.rounds}")
            common = (pool, args.client_procs, port, args.clients)
            base = run_phase(*common, args.baseline_seconds, f"{args.seed}-h{n}", read_ids, patients, True, pid,
                             db_pid)
            out(describe("health", base))
            sessions = asyncio.run(database_sessions(cluster.url)) if args.backend == "postgresql" else None
            mixed = run_phase(*common, args.duration, f"{args.seed}-m{n}", read_ids, patients, False, pid, db_pid)
            if sessions is not None:  # connections the server's pools opened: each costs PostgreSQL a process
                mixed["new_db_sessions"] = asyncio.run(database_sessions(cluster.url)) - sessions - 1
            out(describe("mixed", mixed))
            for kind, k in mixed["kinds"].items():
                out(f"    {kind:<13} {k['count']:>7} {k['rate']:7.0f}/s  p50 {k['p50_ms']:6.1f} ms"
                    f"  p99 {k['p99_ms']:7.1f} ms")
            acks.extend(mixed.pop("acks"))
            base.pop("acks")
            baselines.append(base)
            rounds.append(mixed)
        out(f"[{args.backend}] checking {len(acks)} acknowledged writes ...")
        check = check_acknowledged(port, acks)
        server.stop()
        log = server.log_summary()

    kinds = {k: {m: statistics.median(r["kinds"][k][m] for r in rounds if k in r["kinds"])
                 for m in ("rate", "p50_ms", "p99_ms")} for k in KINDS if any(k in r["kinds"] for r in rounds)}
    return {"backend": args.backend, "rounds": rounds, "baselines": baselines, "check": check, "log": log,
            "median": {"rate": median_of(rounds, "rate"), "p50_ms": median_of(rounds, "p50_ms"),
                       "p99_ms": median_of(rounds, "p99_ms"), "health_rate": median_of(baselines, "rate"),
                       "kinds": kinds},
            "errors": sum(sum(r["errors"].values()) for r in rounds)}


def print_summary(settings: dict[str, Any], result: dict[str, Any], stream) -> None:
    p = lambda *a: print(*a, file=stream)  # noqa: E731
    m, check, log = result["median"], result["check"], result["log"]
    p()
    p("settings: " + "  ".join(f"{k}={v}" for k, v in settings.items()))
    p(f"medians of {settings['rounds']} rounds of {settings['duration']} s; latency as the client sees it")
    p()
    p(f"{result['backend']}: mixed {m['rate']:.0f} requests/s  p50 {m['p50_ms']:.1f} ms  p99 {m['p99_ms']:.1f} ms"
      f"  ({m['rate'] / m['health_rate']:.0%} of GET /health at {m['health_rate']:.0f}/s through the same server)")
    for kind, k in m["kinds"].items():
        p(f"  {kind:<13} {k['rate']:7.0f}/s  p50 {k['p50_ms']:6.1f} ms  p99 {k['p99_ms']:7.1f} ms")
    p(f"errors: {result['errors']}")
    p(f"lost writes: {check['lost']} of {check['acknowledged_writes']} acknowledged"
      f" ({check['resources']} resources checked)")
    if check["unread"]:
        p(f"not checked: {check['unread']} read-backs could not connect")
    for sample in check["lost_samples"]:
        p(f"  {sample}")
    problems = sum(log["warnings_errors"].values())
    p(f"server log: {log['levels']}, {problems} warnings/errors, {log['non_json_lines']} non-JSON lines")
    for text, count in list(log["warnings_errors"].items())[:10]:
        p(f"  {count} x {text}")
    p()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--clients", type=int, default=64, help="concurrent keep-alive connections")
    parser.add_argument("--client-procs", type=int, default=1, help="processes the clients are spread over")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of mixed load per round")
    parser.add_argument("--baseline-seconds", type=float, default=5.0, help="seconds of GET /health per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--observations", type=int, default=5000, help="Observations created before the rounds")
    parser.add_argument("--no-terminology", action="store_true", help="start the server with FHIR_TERMINOLOGY_LOAD"
                                                                      "=false (a faster start)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir and server log")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args(argv)
    settings = {"backend": args.backend, "workers": args.workers, "clients": args.clients,
                "client_procs": args.client_procs, "duration": args.duration, "rounds": args.rounds,
                "patients": args.patients, "observations": args.observations, "cpus": os.cpu_count(),
                "host": HOST}
    result = run(args)
    print_summary(settings, result, sys.stderr if args.json else sys.stdout)
    if args.json:
        json.dump({"settings": settings, "result": result}, sys.stdout, indent=2, default=str)
        print()
    check = result["check"]
    return 0 if result["errors"] == 0 and check["lost"] == 0 and check["unread"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
