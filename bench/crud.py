#!/usr/bin/env python3
"""CRUD benchmark: create and read throughput/latency of a real `fhir-server serve`, per backend.

Run from the repository root with the package installed (e.g. in its virtualenv):

    python bench/crud.py                                   # both backends, defaults below
    python bench/crud.py --backends postgresql --workers 4 --clients 64
    python bench/crud.py --creates 500 --reads 2000 --repeats 1    # quick smoke run
    python bench/crud.py --json > results.json             # figures as JSON on stdout

For each backend the script starts `fhir-server serve --workers N` on a free loopback port with a
fresh data dir (SQLite: the embedded file there; PostgreSQL: a throwaway durable cluster from
tests/pgcluster.py, fsync on), waits for GET /health/ready, then for each of --repeats rounds runs

  1. GET /health        -- no database: the raw HTTP + framework overhead of the same server,
  2. POST /Observation  -- --creates blood-pressure Observations (201 expected, ids from Location),
  3. GET /Observation/id -- --reads reads of random created ids (200 expected),

with --clients concurrent keep-alive connections, after an untimed set-up (PUT of the 100 Patients
the Observations refer to) and warm-up. Connections are opened before the clock starts and evened
out over the server's worker processes (see `_connect`; the split is printed; --no-spread keeps
whatever the workers' accept race gives). It prints the median over rounds of throughput and
p50/p99 latency, and a summary of the server log (warnings, errors, non-2xx statuses).

Each phase also prints where the CPU went (Linux /proc), in cores: the server's process tree, the
load client, the PostgreSQL cluster, and "other" (kernel work and processes outside the benchmark).
The figures mean something only on an otherwise idle machine: the script measures the load for a
second before each backend and flags phases in which other processes used the CPU ("NOT QUIET").

The load generator is a small asyncio HTTP/1.1 client on raw sockets (one request in flight per
connection, Content-Length or chunked bodies): the machine's cores are shared by server and client,
so the client must be cheap; its CPU use is printed so that can be checked. Nothing here asserts
on speed: this is a measuring tool, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from array import array
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from pgcluster import controlled_cluster, free_port  # noqa: E402

try:  # uvloop comes with uvicorn[standard], a dependency of the server: a cheaper client loop
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

try:
    import orjson

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover
    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

HOST = "127.0.0.1"
PATIENTS = [f"bench-patient-{i:03d}" for i in range(100)]
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# Requests


def blood_pressure(rng: random.Random, when: datetime) -> dict[str, Any]:
    """A vital-signs blood-pressure panel as a device or nurse would post it."""
    systolic = rng.randint(95, 180)
    diastolic = rng.randint(55, min(systolic - 20, 110))

    def component(code: str, display: str, value: int) -> dict[str, Any]:
        return {"code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
                "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                  "code": "mm[Hg]"}}

    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs", "display": "Vital Signs"}], "text": "Vital Signs"}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9",
                             "display": "Blood pressure panel with all children optional"}],
                 "text": "Blood pressure"},
        "subject": {"reference": f"Patient/{rng.choice(PATIENTS)}"},
        "effectiveDateTime": when.isoformat(timespec="seconds"),
        "component": [component("8480-6", "Systolic blood pressure", systolic),
                      component("8462-4", "Diastolic blood pressure", diastolic)],
    }


def http_request(method: str, path: str, port: int, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Accept: application/fhir+json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None:
        lines += ["Content-Type: application/fhir+json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def create_requests(n: int, port: int, rng: random.Random, minimal: bool) -> list[bytes]:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    headers = {"Prefer": "return=minimal"} if minimal else None
    return [http_request("POST", "/Observation", port,
                         dumps(blood_pressure(rng, start + timedelta(seconds=rng.randrange(365 * 86400)))),
                         headers)
            for _ in range(n)]


def read_requests(n: int, port: int, rng: random.Random, ids: list[str]) -> list[bytes]:
    return [http_request("GET", f"/Observation/{rng.choice(ids)}", port) for _ in range(n)]


def health_requests(n: int, port: int) -> list[bytes]:
    return [http_request("GET", "/health", port)] * n


# ---------------------------------------------------------------------------------------------
# The load generator: one process runs `clients` keep-alive connections over a shared work list.


class Connection:
    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.local_port = self.writer.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def exchange(self, request: bytes) -> tuple[int, bytes | None, bytes]:
        """Send one request, return (status, Location header or None, body)."""
        if self.writer is None:
            await self.open()
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0][9:12])
        length = None
        chunked = close = False
        location = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"location":
                location = value.strip()
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            body = await self._chunked()
        elif length is not None:
            body = await self.reader.readexactly(length) if length else b""
        elif status in (204, 304) or status < 200:
            body = b""
        else:  # no framing: the body runs to the end of the connection
            body = await self.reader.read()
            close = True
        if close:
            self.close()
        return status, location, body

    async def _chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)


async def _connect(port: int, clients: int, workers: list[int],
                   spread: bool) -> tuple[list[Connection], dict[int, int]]:
    """Open the connections before the clock starts; return them and how many each worker serves.

    Uvicorn's workers share one listening socket and an event loop accepts every connection that is
    waiting when it wakes, so a burst of connects tends to land on one worker, and a keep-alive
    connection stays there. Connecting one at a time, each with a first request, lets every worker
    compete for each accept; with `spread`, connections on the busiest worker are then reopened until
    the split is even, so rounds measure all workers rather than the luck of the accept race."""
    probe = http_request("GET", "/health", port)
    connections = []
    for _ in range(clients):
        conn = Connection(port)
        await conn.open()
        await conn.exchange(probe)
        connections.append(conn)
    if len(workers) < 2:
        return connections, {workers[0] if workers else 0: len(connections)}
    owners = connection_owners(port, workers)
    for _ in range(10 * clients if spread else 0):
        by_worker = {w: [c for c in connections if owners.get(c.local_port) == w] for w in workers}
        counts = sorted(by_worker.values(), key=len)
        if len(counts[-1]) - len(counts[0]) <= 1:
            break
        conn = counts[-1][0]
        conn.close()
        await conn.open()
        await conn.exchange(probe)
        owners = connection_owners(port, workers)
    return connections, {w: sum(1 for c in connections if owners.get(c.local_port) == w) for w in workers}


def connection_owners(server_port: int, workers: list[int]) -> dict[int, int]:
    """Client port -> pid of the server worker holding the other end (from /proc; Linux, same host)."""
    inode_to_client: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == server_port:
                    inode_to_client[f"socket:[{inode}]"] = int(remote.rsplit(":", 1)[1], 16)
    owners = {}
    for pid in workers:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    client = inode_to_client.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
                    if client is not None:
                        owners[client] = pid
    return owners


def server_workers(server_port: int, root_pid: int) -> list[int]:
    """Pids in the server's process tree that hold its listening socket (the uvicorn workers)."""
    holders = listening_pids(server_port, process_tree(root_pid))
    # The supervisor holds the socket too but serves nothing when there are worker processes.
    return holders if len(holders) < 2 else [p for p in holders if p != root_pid]


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


async def _load(port: int, requests: list[bytes], clients: int, expect: int, start_at: float | None,
                want_location: bool, workers: list[int], spread: bool,
                sample_cpu: bool = False) -> dict[str, Any]:
    n = len(requests)
    clients = max(1, min(clients, n))
    connections, split = await _connect(port, clients, workers, spread)
    latencies = array("d", bytes(8 * n))
    statuses = array("H", bytes(2 * n))
    locations: list[bytes | None] = [None] * n if want_location else []
    errors: Counter[str] = Counter()
    samples: list[str] = []
    work = iter(range(n))  # shared: each client takes the next request when it is free

    async def client(conn: Connection) -> None:
        for i in work:
            t = time.perf_counter()
            try:
                status, location, body = await conn.exchange(requests[i])
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                conn.close()
                status, location, body = 0, None, b""
                errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
            latencies[i] = time.perf_counter() - t
            statuses[i] = status
            if want_location:
                locations[i] = location
            if status != expect and status and len(samples) < 5:
                samples.append(f"{status} {requests[i].split(b' ', 2)[1].decode()} -> {body[:300]!r}")

    if start_at is not None:  # several client processes start together
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    before = cpu_snapshot() if sample_cpu else None
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client(c) for c in connections))
    t1, cpu1 = time.perf_counter(), time.process_time()
    after = cpu_snapshot() if sample_cpu else None
    for c in connections:
        c.close()
    return {"t0": t0, "t1": t1, "cpu": cpu1 - cpu0, "latencies": latencies, "statuses": statuses,
            "locations": locations, "errors": errors, "samples": samples, "split": split,
            "cpu_before": before, "cpu_after": after}


def load_in_process(port: int, requests: list[bytes], clients: int, expect: int, start_at: float | None,
                    want_location: bool, workers: list[int], spread: bool,
                    sample_cpu: bool = False) -> dict[str, Any]:
    coro = _load(port, requests, clients, expect, start_at, want_location, workers, spread, sample_cpu)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if uvloop else None) as runner:
        return runner.run(coro)


@dataclass
class Run:
    """One timed phase of one round."""
    requests: int
    seconds: float
    rate: float
    p50_ms: float
    p99_ms: float
    failures: int
    statuses: dict[str, int]
    client_cpu: float          # CPU seconds used by the load generator
    split: list[int]           # connections per server worker, busiest first
    cpu: dict[str, Any]        # cores busy during the phase: server, client, db, other, machine
    errors: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    locations: list[bytes | None] = field(default_factory=list, repr=False)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(p * len(sorted_values)) - 1))
    return sorted_values[k]


class Loader:
    """Runs a list of requests with C clients spread over P processes and measures it."""

    def __init__(self, clients: int, procs: int, spread: bool):
        self.clients = clients
        self.procs = max(1, procs)
        self.spread = spread
        self.db_pid: int | None = None  # the PostgreSQL postmaster, for CPU accounting
        self.pool = None
        if self.procs > 1:
            self.pool = ProcessPoolExecutor(self.procs, mp_context=multiprocessing.get_context("spawn"))
            list(self.pool.map(time.sleep, [0.2] * self.procs))  # start every worker now, off the clock

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def run(self, port: int, requests: list[bytes], expect: int, server_pid: int | None,
            want_location: bool = False) -> Run:
        workers = server_workers(port, server_pid) if server_pid is not None else []
        if self.pool is None:  # CPU is sampled right at the start and end of the timed window
            parts = [load_in_process(port, requests, self.clients, expect, None, want_location, workers,
                                     self.spread, True)]
            order = [list(range(len(requests)))]
            before, after = parts[0]["cpu_before"], parts[0]["cpu_after"]
        else:
            start_at = time.perf_counter() + 1.0  # CLOCK_MONOTONIC: the same clock in every process
            order = [list(range(len(requests)))[i::self.procs] for i in range(self.procs)]
            futures = [self.pool.submit(load_in_process, port, [requests[j] for j in idx],
                                        self.clients // self.procs + (i < self.clients % self.procs),
                                        expect, start_at, want_location, workers, self.spread)
                       for i, idx in enumerate(order) if idx]
            time.sleep(max(0.0, start_at - time.perf_counter()))
            before = cpu_snapshot()
            parts = [f.result() for f in futures]
            after = cpu_snapshot()
        seconds = max(p["t1"] for p in parts) - min(p["t0"] for p in parts)
        latencies = sorted(x for p in parts for x in p["latencies"])
        statuses = Counter(s for p in parts for s in p["statuses"])
        errors = sum((p["errors"] for p in parts), Counter())
        client_cpu = sum(p["cpu"] for p in parts)
        locations: list[bytes | None] = [None] * len(requests) if want_location else []
        if want_location:
            for idx, p in zip(order, parts, strict=False):
                for j, loc in zip(idx, p["locations"], strict=True):
                    locations[j] = loc
        n = len(requests)
        return Run(
            requests=n, seconds=seconds, rate=n / seconds if seconds > 0 else float("nan"),
            p50_ms=percentile(latencies, 0.50) * 1000, p99_ms=percentile(latencies, 0.99) * 1000,
            failures=n - statuses.get(expect, 0),
            statuses={("error" if s == 0 else str(s)): c for s, c in sorted(statuses.items())},
            client_cpu=client_cpu, cpu=cpu_split(before, after, client_cpu, seconds, server_pid, self.db_pid),
            split=sorted(sum((Counter(p["split"]) for p in parts), Counter()).values(), reverse=True),
            errors=dict(errors), samples=[s for p in parts for s in p["samples"]][:5], locations=locations)


# ---------------------------------------------------------------------------------------------
# CPU accounting from /proc (Linux): who used the cores during a phase.


def _proc_stat(pid: int) -> tuple[int, str, float] | None:
    """(parent pid, name, CPU seconds) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    head, _, tail = text.rpartition(")")
    rest = tail.split()
    return int(rest[1]), head.partition("(")[2], (int(rest[11]) + int(rest[12])) / CLK_TCK


def _all_proc_stats() -> dict[int, tuple[int, str, float]]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) is not None:
            stats[int(entry)] = stat
    return stats


def cpu_snapshot(with_processes: bool = True) -> dict[str, Any]:
    """Busy CPU seconds of the machine and of every process."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    machine = (sum(values[:8]) - idle) / CLK_TCK  # guest time is already counted in user
    return {"machine": machine, "procs": _all_proc_stats() if with_processes else {}}


def process_tree(root: int, stats: dict[int, tuple[int, str, float]] | None = None) -> set[int]:
    """A process and all its descendants."""
    stats = _all_proc_stats() if stats is None else stats
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, _) in stats.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def cpu_split(before: dict[str, Any], after: dict[str, Any], client_cpu: float, seconds: float,
              server_pid: int | None, db_pid: int | None) -> dict[str, Any]:
    """Cores busy during the phase: server tree, load client, database tree, the rest (kernel work such
    as loopback networking, and processes that are not part of this benchmark, listed in `outside`)."""
    if seconds <= 0:
        return {}
    old, new = before["procs"], after["procs"]

    def used(pids: set[int]) -> float:
        return sum(new[p][2] - (old[p][2] if p in old else 0.0) for p in pids if p in new) / seconds

    server_tree = process_tree(server_pid, new) if server_pid else set()
    db_tree = process_tree(db_pid, new) if db_pid else set()
    ours = process_tree(os.getpid(), new) | db_tree
    machine = (after["machine"] - before["machine"]) / seconds
    server, db, client = used(server_tree), used(db_tree), client_cpu / seconds
    by_name: dict[str, list[float]] = {}  # processes outside this benchmark, grouped by name
    for pid in set(new) - ours:
        by_name.setdefault(new[pid][1], []).append(used({pid}))
    outside = sorted(((sum(c), name, sum(1 for x in c if x > 0)) for name, c in by_name.items()), reverse=True)
    return {"server": round(server, 2), "client": round(client, 2), "db": round(db, 2),
            "other": round(max(0.0, machine - server - client - db), 2), "machine": round(machine, 2),
            "outside": [f"{name} ({n} busy) {c:.2f}" for c, name, n in outside[:4] if c >= 0.05]}


def listening_pids(port: int, candidates: set[int] | None = None) -> list[int]:
    """Pids (among candidates, default all) holding a socket listening on the port."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    listening.add(f"socket:[{fields[9]}]")
    holders = []
    for pid in sorted(candidates if candidates is not None else _all_proc_stats()):
        with contextlib.suppress(OSError):
            if any(_readlink(f"/proc/{pid}/fd/{fd}") in listening for fd in os.listdir(f"/proc/{pid}/fd")):
                holders.append(pid)
    return holders


# ---------------------------------------------------------------------------------------------
# The server under test


class Server:
    def __init__(self, workdir: Path, workers: int, env_extra: dict[str, str], dicom_port: int = 0):
        self.port = free_port()
        self.dicom_port = dicom_port  # 0: no DICOM SCP, so HTTP benches neither hold port 11112 nor pay for an SCP
        self.data_dir = workdir / "data"
        self.log_path = workdir / "server.log"
        beside = Path(sys.executable).parent / "fhir-server"
        exe = str(beside) if beside.exists() else shutil.which("fhir-server")
        command = [exe] if exe else [sys.executable, "-c", "from fhir_server.cli import main; main()"]
        env = {k: v for k, v in os.environ.items() if k != "FHIR_DATABASE_URL"}
        env["FHIR_AUTH"] = "off"  # the benches measure the FHIR API itself, on loopback
        env.update(env_extra)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*command, "serve", "--host", HOST, "--port", str(self.port), "--data-dir", str(self.data_dir),
                 "--workers", str(workers), "--dicom-port", str(dicom_port)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        self.workers = workers

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float = 90.0) -> None:
        url = f"http://{HOST}:{self.port}/health/ready"
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; last log lines:\n"
                                   + self.log_tail())
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout:.0f} s; last log lines:\n" + self.log_tail())
            time.sleep(0.1)
        # Every worker logs "ready" once its store is open; wait (briefly) for all of them.
        until = time.monotonic() + 15
        while time.monotonic() < until and self.ready_workers() < self.workers:
            time.sleep(0.1)
        while self.dicom_port:  # the SCP is a process of its own: ready when it accepts connections
            try:
                socket.create_connection((HOST, self.dicom_port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("DICOM SCP did not start; last log lines:\n" + self.log_tail()) from None
                time.sleep(0.1)

    def dicom_pid(self) -> int | None:
        """The SCP process (`fhir-server dicom`, a child of `serve`), or None."""
        holders = listening_pids(self.dicom_port, process_tree(self.process.pid)) if self.dicom_port else []
        return holders[0] if holders else None

    def ready_workers(self) -> int:
        count = 0
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                if json.loads(line).get("msg") == "ready":
                    count += 1
        return count

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                print("server did not stop within 30 s of SIGTERM; killing its process group", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def log_summary(self) -> dict[str, Any]:
        """Counts of access-log statuses, warnings/errors and non-JSON lines (tracebacks)."""
        statuses: Counter[str] = Counter()
        levels: Counter[str] = Counter()
        problems: Counter[str] = Counter()
        other = 0
        other_samples: list[str] = []
        with open(self.log_path, errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                try:
                    entry = json.loads(line)
                    if not isinstance(entry, dict):
                        raise ValueError
                except ValueError:
                    if line.startswith(("FHIR server (", "DICOM SCP ")) or not line.strip():  # start-up banners
                        continue
                    other += 1
                    if len(other_samples) < 10:
                        other_samples.append(line[:300])
                    continue
                levels[entry.get("level", "?")] += 1
                if entry.get("logger") == "fhir_server.access":
                    statuses[f"{entry.get('method')} {entry.get('status')}"] += 1
                elif entry.get("level") in ("WARNING", "ERROR", "CRITICAL"):
                    text = f"{entry.get('level')} {entry.get('logger')}: {entry.get('msg')}"
                    if entry.get("exc"):
                        text += " | " + str(entry["exc"]).strip().splitlines()[-1]
                    problems[text[:300]] += 1
        return {"log": str(self.log_path), "exit_code": self.process.returncode,
                "log_file_bytes": self.log_path.stat().st_size, "levels": dict(levels),
                "access_statuses": dict(sorted(statuses.items())), "warnings_errors": dict(problems),
                "non_json_lines": other, "non_json_samples": other_samples}


# ---------------------------------------------------------------------------------------------
# The benchmark


def out(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def summarize(runs: list[Run]) -> dict[str, Any]:
    return {
        "rate": statistics.median(r.rate for r in runs),
        "p50_ms": statistics.median(r.p50_ms for r in runs),
        "p99_ms": statistics.median(r.p99_ms for r in runs),
        "failures": sum(r.failures for r in runs),
        "cpu": {k: round(statistics.median(r.cpu.get(k, 0.0) for r in runs), 2)
                for k in ("server", "client", "db", "other", "machine")},
        "runs": [{k: v for k, v in vars(r).items() if k != "locations"} for r in runs],
    }


def describe(name: str, run: Run) -> str:
    text = (f"  {name:<8} {run.requests:>6} in {run.seconds:6.2f} s  {run.rate:8.0f}/s  p50 {run.p50_ms:6.1f} ms"
            f"  p99 {run.p99_ms:7.1f} ms  cpu server {run.cpu.get('server', 0):.2f} client"
            f" {run.cpu.get('client', 0):.2f} db {run.cpu.get('db', 0):.2f} other {run.cpu.get('other', 0):.2f}"
            f"  conns/worker {'/'.join(map(str, run.split))}")
    if run.cpu.get("outside") or run.cpu.get("other", 0) >= 0.3:
        named = ", ".join(run.cpu.get("outside", [])) or "none still running"
        text += (f"\n             NOT QUIET? {run.cpu.get('other', 0):.2f} cores of kernel work or other processes;"
                 f" named outside this benchmark: {named}")
    if run.failures:
        text += f"  FAILURES {run.failures}: {run.statuses}"
    return text


def report_failures(name: str, run: Run) -> None:
    if run.failures:
        out(f"    {name}: {run.failures} of {run.requests} not as expected; statuses {run.statuses}")
        for error, count in run.errors.items():
            out(f"      {count} x {error}")
        for sample in run.samples:
            out(f"      e.g. {sample}")


def bench_backend(backend: str, args: argparse.Namespace, loader: Loader) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        idle_check = cpu_snapshot(with_processes=False)
        time.sleep(1.0)
        busy = cpu_snapshot(with_processes=False)["machine"] - idle_check["machine"]
        out(f"[{backend}] machine busy before start: {busy:.2f} of {os.cpu_count()} cores"
            + ("  (NOT QUIET: figures will be low and noisy)" if busy > 0.2 else ""))
        workdir = Path(tempfile.mkdtemp(prefix=f"fhir-bench-{backend}-"))
        if not args.keep:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        env: dict[str, str] = {}
        if args.log_level:
            env["FHIR_LOG_LEVEL"] = args.log_level
        if backend == "postgresql":
            out("starting a durable PostgreSQL cluster ...")
            cluster = stack.enter_context(controlled_cluster(durable=True))
            env["FHIR_DATABASE_URL"] = cluster.socket_url if args.pg_socket else cluster.url
            postmaster = listening_pids(cluster.port)
            loader.db_pid = postmaster[0] if postmaster else None
            stack.callback(setattr, loader, "db_pid", None)
        server = Server(workdir, args.workers, env)
        stack.callback(server.stop)
        out(f"[{backend}] server pid {server.process.pid} on port {server.port}, log {server.log_path}")
        started = time.monotonic()
        server.wait_ready()
        out(f"[{backend}] ready in {time.monotonic() - started:.1f} s ({server.ready_workers()} workers ready)")
        port, pid = server.port, server.process.pid
        rng = random.Random(f"{args.seed}-{backend}")

        # Untimed set-up and warm-up: the patients the observations point at, then creates and reads.
        patients = [http_request("PUT", f"/Patient/{p}", port, dumps({
            "resourceType": "Patient", "id": p, "active": True,
            "name": [{"family": f"Bench{i:03d}", "given": ["Test"]}], "gender": ("female", "male")[i % 2],
            "birthDate": f"{1940 + i % 60}-0{1 + i % 9}-1{i % 10}"})) for i, p in enumerate(PATIENTS)]
        setup = loader.run(port, patients, 201, pid)
        report_failures("patients (PUT)", setup)
        warm = loader.run(port, create_requests(args.warmup_creates, port, rng, args.minimal), 201, pid,
                          want_location=True)
        report_failures("warm-up creates", warm)
        ids = [i for i in (location_id(loc) for loc in warm.locations) if i]
        if ids:
            report_failures("warm-up reads",
                            loader.run(port, read_requests(args.warmup_reads, port, rng, ids), 200, pid))
        report_failures("warm-up health", loader.run(port, health_requests(args.warmup_reads, port), 200, pid))

        runs: dict[str, list[Run]] = {"health": [], "creates": [], "reads": []}
        for round_no in range(1, args.repeats + 1):
            out(f"[{backend}] round {round_no}/{args.repeats}")
            run = loader.run(port, health_requests(args.health, port), 200, pid)
            runs["health"].append(run)
            out(describe("health", run))
            report_failures("health", run)

            run = loader.run(port, create_requests(args.creates, port, rng, args.minimal), 201, pid,
                             want_location=True)
            runs["creates"].append(run)
            out(describe("creates", run))
            report_failures("creates", run)
            created = [i for i in (location_id(loc) for loc in run.locations) if i]
            missing = run.statuses.get("201", 0) - len(created)
            if missing > 0:
                out(f"    {missing} 201 responses without a parseable Location header")
            ids.extend(created)

            if not ids:
                out(f"[{backend}] no ids were created; skipping reads")
                continue
            run = loader.run(port, read_requests(args.reads, port, rng, ids), 200, pid)
            runs["reads"].append(run)
            out(describe("reads", run))
            report_failures("reads", run)

        code = server.stop()
        log = server.log_summary()
        log["exit_code"] = code
        if code not in (0, None):
            out(f"[{backend}] server exited with {code}; last log lines:\n{server.log_tail()}")
        return {"backend": backend, "stored_observations": len(ids), "log": log,
                **{phase: summarize(r) for phase, r in runs.items() if r}}


def location_id(location: bytes | None) -> str | None:
    """The id in .../Observation/{id}/_history/{vid}."""
    if not location:
        return None
    path = location.decode("latin-1").split("/_history/", 1)[0]
    head, _, resource_id = path.rpartition("/")
    return resource_id if head.endswith("Observation") and resource_id else None


def print_table(settings: dict[str, Any], results: list[dict[str, Any]], stream) -> None:
    p = lambda *a: print(*a, file=stream)  # noqa: E731
    p()
    p("settings: " + "  ".join(f"{k}={v}" for k, v in settings.items()))
    p(f"medians of {settings['repeats']} rounds; latency per request as the client sees it; "
      "cpu in cores busy: server process tree / load client / PostgreSQL / other (kernel, other processes)")
    p()
    for r in results:
        h, c, rd = r.get("health"), r.get("creates"), r.get("reads")
        line = f"{r['backend']:<11}"
        if c:
            line += f" creates/s {c['rate']:6.0f}  p50 {c['p50_ms']:6.1f} ms  p99 {c['p99_ms']:6.1f} ms"
        if rd:
            line += f" | reads/s {rd['rate']:6.0f}  p50 {rd['p50_ms']:5.1f} ms  p99 {rd['p99_ms']:6.1f} ms"
        if h:
            line += f" | health/s {h['rate']:6.0f}  p50 {h['p50_ms']:5.1f} ms"
        p(line)
        if h and h["rate"]:
            ratios = [f"{name} {x['rate'] / h['rate']:.0%}" for name, x in (("creates", c), ("reads", rd)) if x]
            p(f"{'':<11} vs raw HTTP (GET /health = 100%): " + ", ".join(ratios))
        phases = [(name, x) for name, x in (("health", h), ("creates", c), ("reads", rd)) if x]
        cpu = "; ".join(f"{name} server {x['cpu']['server']:.2f} client {x['cpu']['client']:.2f}"
                        f" db {x['cpu']['db']:.2f} other {x['cpu']['other']:.2f}" for name, x in phases)
        p(f"{'':<11} cpu cores: {cpu}")
        failures = {name: x["failures"] for name, x in (("health", h), ("creates", c), ("reads", rd))
                    if x and x["failures"]}
        log = r["log"]
        problems = sum(log["warnings_errors"].values())
        p(f"{'':<11} failures: {failures or 'none'}; server log: {log['levels']}, "
          f"{problems} warnings/errors, {log['non_json_lines']} non-JSON lines, exit code {log['exit_code']}")
        for text, count in list(log["warnings_errors"].items())[:10]:
            p(f"{'':<13}{count} x {text}")
        for text in log["non_json_samples"][:5]:
            p(f"{'':<13}non-JSON: {text}")
        bad = {k: v for k, v in log["access_statuses"].items() if not k.split()[-1].startswith("2")}
        if bad:
            p(f"{'':<13}non-2xx in access log: {bad}")
    p()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--clients", type=int, default=32, help="concurrent keep-alive connections")
    parser.add_argument("--client-procs", type=int, default=1, help="processes the clients are spread over")
    parser.add_argument("--no-spread", action="store_true",
                        help="keep connections wherever the workers' accept race put them instead of "
                             "evening them out over the workers")
    parser.add_argument("--creates", type=int, default=5000, help="POST /Observation per round")
    parser.add_argument("--reads", type=int, default=20000, help="GET /Observation/{id} per round")
    parser.add_argument("--health", type=int, default=None, help="GET /health per round (default: --reads)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--warmup-creates", type=int, default=200)
    parser.add_argument("--warmup-reads", type=int, default=500)
    parser.add_argument("--minimal", action="store_true", help="send Prefer: return=minimal on creates")
    parser.add_argument("--pg-socket", action=argparse.BooleanOptionalAction, default=False,
                        help="reach PostgreSQL through its Unix-domain socket, as a server on the same machine may"
                             " (default: loopback TCP)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated data")
    parser.add_argument("--log-level", default=None, help="FHIR_LOG_LEVEL for the server (default: its own)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dirs and server logs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args(argv)
    args.health = args.reads if args.health is None else args.health
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")

    settings = {"workers": args.workers, "clients": args.clients, "client_procs": args.client_procs,
                "creates": args.creates, "reads": args.reads, "health": args.health, "repeats": args.repeats,
                "warmup": f"{args.warmup_creates}c+{args.warmup_reads}r", "minimal": args.minimal,
                "spread": not args.no_spread, "pg_via": "unix socket" if args.pg_socket else "tcp",
                "log_level": args.log_level or "server default", "client_loop": "uvloop" if uvloop else "asyncio",
                "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    loader = Loader(args.clients, args.client_procs, spread=not args.no_spread)
    results = []
    try:
        for backend in backends:
            try:
                results.append(bench_backend(backend, args, loader))
            except (RuntimeError, OSError, asyncio.IncompleteReadError) as exc:
                out(f"[{backend}] FAILED: {type(exc).__name__}: {exc}")
                results.append({"backend": backend, "error": str(exc)})
    finally:
        loader.close()

    ok = [r for r in results if "error" not in r]
    print_table(settings, ok, sys.stderr if args.json else sys.stdout)
    for r in results:
        if "error" in r:
            print(f"{r['backend']:<11} FAILED: {r['error'].splitlines()[0]}", file=sys.stderr)
    if args.json:
        json.dump({"settings": settings, "results": results}, sys.stdout, indent=2, default=str)
        print()
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
