#!/usr/bin/env python3
"""Search benchmark: latency of typical alliance searches over a realistically sized PostgreSQL store.

Run from the repository root with the package installed (e.g. in its virtualenv):

    python bench/search.py                                    # 10,000 patients, 1,000,000 observations
    python bench/search.py --patients 1000 --observations 100000 --repeats 100      # a smaller run
    python bench/search.py --database-url postgresql://u@host/db --pg-log /path/to/server.log
    python bench/search.py --json > results.json              # figures as JSON on stdout

Steps:

  1. A throwaway durable PostgreSQL cluster (tests/pgcluster.py; fsync on, auto_explain preloaded,
     shared_buffers 1GB) unless --database-url names an existing database.
  2. Load: --patients Patients (parent process), then --observations Observations spread evenly over
     them (bench/datagen.py: ~40% blood-pressure panels, ~40% heart rates, ~20% short ECG strips,
     2024-01 .. 2026-10) by --procs worker processes, all through ResourceService.create_many in
     batches of --batch: the real validation, id, compartment and search-index path, minus HTTP.
     Then ANALYZE (--vacuum: VACUUM (ANALYZE)).
  3. `fhir-server serve --workers N` against that database; one sequential keep-alive client runs
     each query --warmup times untimed, then --repeats times timed, with a different patient / month /
     resident id per request, and checks every response (status 200 and a plausible bundle):
       a  Observation?patient=P&code=loinc|8867-4&_sort=-date&_count=10        (latest heart rates)
       b  Observation?date=ge<month>&date=lt<next month>&_summary=count       (a month's volume)
       c  Observation?subject:Patient.identifier=<RID>&code=loinc|85354-9&_count=10   (chained)
       d  Observation?patient=P&code=loinc|85354-9&_include=Observation:subject&_count=10
       read  Patient/P                                                          (baseline)
     --plan-modes auto,force_custom_plan repeats the timed runs with PostgreSQL's plan_cache_mode set for
     the database (the server prepares its statements, so after five executions PostgreSQL may switch a
     statement to a generic plan; this shows what that costs).
  4. Plans: auto_explain is switched on for the database (ALTER DATABASE ... SET), the server is
     restarted so its connections pick that up, each query is run --explain-runs times (more than five,
     so prepared statements may reach PostgreSQL's generic plan as they do in the timed runs), and the
     plans of the last run are read back from the PostgreSQL log and summarised (index vs seq scans).
  5. A summary table (stdout; with --json the table goes to stderr and JSON to stdout).

The latency is what the client sees per request (HTTP, search parsing, SQL, JSON). The figures mean
something only on an otherwise idle machine: CPU used by processes outside the benchmark during each
timed run is measured (Linux /proc) and flagged as NOT QUIET. Nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import queue as queue_module
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
import datagen  # noqa: E402
from crud import Server, percentile  # noqa: E402  (the benches share one way of running a server)
from pgcluster import postgres_cluster  # noqa: E402

try:  # uvloop comes with uvicorn[standard], a dependency of the server: a cheaper client loop
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

import orjson  # noqa: E402  (a dependency of the server)

HOST = "127.0.0.1"
PG_SETTINGS = ("-c shared_preload_libraries=auto_explain -c shared_buffers=1GB -c work_mem=32MB "
               "-c maintenance_work_mem=512MB -c max_wal_size=8GB -c checkpoint_timeout=30min")
LOINC = datagen.LOINC


def out(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def run_async(coro):
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if uvloop else None) as runner:
        return runner.run(coro)


# ---------------------------------------------------------------------------------------------
# Loading through the service (no HTTP): the parent writes the patients, workers the observations.


async def _open_service(url: str):
    from fhir_server.service import ResourceService
    from fhir_server.settings import Settings
    from fhir_server.store import open_store

    store = open_store(Settings(database_url=url))
    svc = ResourceService(store)
    await svc.start()
    return store, svc


async def load_patients(url: str, count: int, seed: int, batch: int) -> tuple[list[str], float]:
    """Migrate, then create the patients; returns their server-assigned ids (index n = RID n)."""
    from fhir_server.settings import Settings
    from fhir_server.store import open_store

    store = open_store(Settings(database_url=url))
    try:
        await store.migrate()
    finally:
        await store.close()
    store, svc = await _open_service(url)
    ids: list[str] = []
    try:
        everyone = datagen.patients(count, seed)
        t0 = time.perf_counter()
        for i in range(0, count, batch):
            versions = await svc.create_many(everyone[i:i + batch])
            ids.extend(v.id for v in versions)
        return ids, time.perf_counter() - t0
    finally:
        await store.close()


def bench_server(workdir: Path, workers: int, url: str, name: str) -> Server:
    """bench/crud.py's server on `url`, with its log and data dir in a folder of its own per run."""
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    return Server(folder, workers, {"FHIR_DATABASE_URL": url})


def observation_worker(url: str, patient_ids: list[str], batches: list[int], seed: int, size: int, total: int,
                       progress) -> None:
    """A worker process: its own store and service, create_many of each of its batches."""
    try:
        run_async(_observation_worker(url, patient_ids, batches, seed, size, total, progress))
    except BaseException:
        progress.put(("error", os.getpid(), traceback.format_exc()))
        raise


async def _observation_worker(url, patient_ids, batches, seed, size, total, progress) -> None:
    store, svc = await _open_service(url)
    generate = 0.0
    try:
        for b in batches:
            t = time.process_time()
            resources = datagen.observation_batch(patient_ids, seed=seed, batch=b, size=size, total=total)
            generate += time.process_time() - t
            await svc.create_many(resources)
            progress.put(("batch", os.getpid(), len(resources)))
    finally:
        await store.close()
    progress.put(("done", os.getpid(), generate))


def load_observations(url: str, patient_ids: list[str], args: argparse.Namespace) -> dict[str, Any]:
    total, size = args.observations, args.batch
    batches = list(range(math.ceil(total / size)))
    ctx = multiprocessing.get_context("spawn")
    progress = ctx.Queue()
    procs = [ctx.Process(target=observation_worker, name=f"obs-loader-{i}",
                         args=(url, patient_ids, batches[i::args.procs], args.seed, size, total, progress))
             for i in range(min(args.procs, len(batches)))]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    loaded, next_report, done, generate = 0, args.progress_every, 0, 0.0
    error = None
    try:
        while done < len(procs):
            try:
                kind, pid, value = progress.get(timeout=5)
            except queue_module.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    error = f"loader process {dead[0].pid} exited with {dead[0].exitcode}"
                    break
                continue
            if kind == "batch":
                loaded += value
                if loaded >= next_report or loaded == total:
                    elapsed = time.perf_counter() - t0
                    out(f"  observations {loaded:>10,}/{total:,}  {loaded / elapsed:7.0f}/s  elapsed {elapsed:7.1f} s")
                    while next_report <= loaded:
                        next_report += args.progress_every
            elif kind == "done":
                done += 1
                generate += value
            else:
                error = f"loader process {pid} failed:\n{value}"
                break
    finally:
        if error:
            for p in procs:  # only the processes started here, by their own handles
                if p.is_alive():
                    p.terminate()
        for p in procs:
            p.join()
    if error:
        raise RuntimeError(error)
    seconds = time.perf_counter() - t0
    return {"count": loaded, "seconds": seconds, "rate": loaded / seconds, "generate_cpu_seconds": generate}


async def analyze(url: str, vacuum: bool) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        t0 = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE)" if vacuum else "ANALYZE")
        seconds = time.perf_counter() - t0
        rows = await conn.fetch(
            "SELECT c.relname, c.reltuples::bigint AS rows, pg_total_relation_size(c.oid) AS bytes,"
            " pg_indexes_size(c.oid) AS index_bytes FROM pg_class c"
            " WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace ORDER BY bytes DESC")
        db_bytes = await conn.fetchval("SELECT pg_database_size(current_database())")
        return {"seconds": seconds, "command": "VACUUM (ANALYZE)" if vacuum else "ANALYZE",
                "database_bytes": db_bytes,
                "tables": [{"table": r["relname"], "rows": r["rows"], "bytes": r["bytes"],
                            "index_bytes": r["index_bytes"]} for r in rows]}
    finally:
        await conn.close()


async def sql(url: str, *statements: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return [await conn.fetch(s) for s in statements]
    finally:
        await conn.close()


# ---------------------------------------------------------------------------------------------
# A minimal HTTP/1.1 keep-alive client (from bench/crud.py): one request in flight.


class Connection:
    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port, limit=2 ** 20)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                          "Accept: application/fhir+json\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0][9:12])
        length = None
        chunked = close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            body = await self._chunked()
        elif length is not None:
            body = await self.reader.readexactly(length) if length else b""
        else:
            body = await self.reader.read()
            close = True
        if close:
            self.close()
        return status, body

    async def _chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)


# ---------------------------------------------------------------------------------------------
# The queries: each request comes with a check of its response.


@dataclass
class Request:
    path: str
    check: Any  # callable(parsed body) -> (problem or None, a figure: entries or total, see FIGURES)


def _q(params: list[tuple[str, str]]) -> str:
    return urlencode(params, quote_via=quote, safe=":/")


def _code(resource: dict[str, Any]) -> set[str]:
    return {c.get("code") for c in resource.get("code", {}).get("coding", [])}


def _split(bundle: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    entries = bundle.get("entry") or []
    match = [e.get("resource", {}) for e in entries if e.get("search", {}).get("mode", "match") == "match"]
    include = [e.get("resource", {}) for e in entries if e.get("search", {}).get("mode") == "include"]
    return match, include


def check_latest_heart_rates(patient_id: str):
    def check(bundle: dict[str, Any]) -> tuple[str | None, float]:
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "searchset":
            return "not a searchset Bundle", 0
        match, _ = _split(bundle)
        if not match:
            return "no entries", 0
        if len(match) > 10:
            return f"{len(match)} entries for _count=10", len(match)
        for r in match:
            if datagen.HEART_RATE not in _code(r):
                return f"entry with code {_code(r)}", len(match)
            if r.get("subject", {}).get("reference") != f"Patient/{patient_id}":
                return f"entry about {r.get('subject')}", len(match)
        times = [datetime.fromisoformat(r["effectiveDateTime"]) for r in match]
        if any(a < b for a, b in zip(times, times[1:], strict=False)):
            return "not sorted by date descending", len(match)
        return None, len(match)
    return check


def check_count(bundle: dict[str, Any]) -> tuple[str | None, float]:
    total = bundle.get("total")
    if not isinstance(total, int) or total <= 0:
        return f"total {total!r}", 0
    if bundle.get("entry"):
        return "_summary=count returned entries", total
    return None, total


def check_chained(patient_id: str):
    def check(bundle: dict[str, Any]) -> tuple[str | None, float]:
        match, _ = _split(bundle)
        if not match:
            return "no entries", 0
        if len(match) > 10:
            return f"{len(match)} entries for _count=10", len(match)
        for r in match:
            if r.get("subject", {}).get("reference") != f"Patient/{patient_id}":
                return f"entry about {r.get('subject')}, expected Patient/{patient_id}", len(match)
            if datagen.BLOOD_PRESSURE not in _code(r):
                return f"entry with code {_code(r)}", len(match)
        return None, len(match)
    return check


def check_include(patient_id: str):
    def check(bundle: dict[str, Any]) -> tuple[str | None, float]:
        match, include = _split(bundle)
        if not match:
            return "no entries", 0
        if any(r.get("subject", {}).get("reference") != f"Patient/{patient_id}" for r in match):
            return "an entry about another patient", len(match)
        if not any(r.get("resourceType") == "Patient" and r.get("id") == patient_id for r in include):
            return f"Patient/{patient_id} not included ({len(include)} included)", len(match)
        return None, len(match) + len(include)
    return check


def check_patient(patient_id: str):
    def check(resource: dict[str, Any]) -> tuple[str | None, float]:
        if resource.get("resourceType") != "Patient" or resource.get("id") != patient_id:
            return f"got {resource.get('resourceType')}/{resource.get('id')}", 0
        return None, 1
    return check


QUERIES = {
    "a": "Observation?patient=P&code=loinc|8867-4&_sort=-date&_count=10",
    "b": "Observation?date=ge<month>&date=lt<next month>&_summary=count",
    "c": "Observation?subject:Patient.identifier=<oid>|RIDnnnnnn&code=loinc|85354-9&_count=10",
    "d": "Observation?patient=P&code=loinc|85354-9&_include=Observation:subject&_count=10",
    "read": "Patient/P",
}
FIGURES = {"a": "entries", "b": "total", "c": "entries", "d": "entries+included", "read": "resources"}


def make_request(name: str, rng: random.Random, patient_ids: list[str]) -> Request:
    n = rng.randrange(len(patient_ids))
    pid = patient_ids[n]
    if name == "a":
        return Request("/Observation?" + _q([("patient", pid), ("code", f"{LOINC}|{datagen.HEART_RATE}"),
                                             ("_sort", "-date"), ("_count", "10")]), check_latest_heart_rates(pid))
    if name == "b":
        low, high = rng.choice(datagen.month_ranges())
        return Request("/Observation?" + _q([("date", f"ge{low}"), ("date", f"lt{high}"), ("_summary", "count")]),
                       check_count)
    if name == "c":
        return Request("/Observation?" + _q([
            ("subject:Patient.identifier", f"{datagen.RESIDENT_ID_SYSTEM}|{datagen.rid(n)}"),
            ("code", f"{LOINC}|{datagen.BLOOD_PRESSURE}"), ("_count", "10")]), check_chained(pid))
    if name == "d":
        return Request("/Observation?" + _q([("patient", pid), ("code", f"{LOINC}|{datagen.BLOOD_PRESSURE}"),
                                             ("_include", "Observation:subject"), ("_count", "10")]),
                       check_include(pid))
    return Request(f"/Patient/{pid}", check_patient(pid))


@dataclass
class Timed:
    name: str
    requests: int
    seconds: float
    latencies_ms: list[float]
    failures: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    figures: list[float] = field(default_factory=list)
    autovacuum: list[str] = field(default_factory=list)
    outside_cores: float = 0.0  # CPU used by processes outside the benchmark during the timed run
    outside: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {"query": QUERIES[self.name], "requests": self.requests, "seconds": round(self.seconds, 3),
                "rate": round(self.requests / self.seconds, 1) if self.seconds else None,
                "p50_ms": round(percentile(lat, 0.5), 2), "p90_ms": round(percentile(lat, 0.9), 2),
                "p99_ms": round(percentile(lat, 0.99), 2), "max_ms": round(lat[-1], 2) if lat else None,
                "mean_ms": round(statistics.fmean(lat), 2) if lat else None, "failures": self.failures,
                "statuses": self.statuses, "failure_samples": self.samples,
                "figure": FIGURES[self.name],
                "figure_mean": round(statistics.fmean(self.figures), 1) if self.figures else None,
                "figure_min": min(self.figures) if self.figures else None,
                "figure_max": max(self.figures) if self.figures else None,
                "autovacuum_seen": self.autovacuum, "other_processes_cores": round(self.outside_cores, 2),
                "other_processes": self.outside}


async def _exchange(conn: Connection, req: Request) -> tuple[int, bytes, float]:
    t = time.perf_counter()
    try:
        status, body = await conn.get(req.path)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        conn.close()
        return 0, f"{type(exc).__name__}: {exc}".encode(), time.perf_counter() - t
    return status, body, time.perf_counter() - t


def _verify(req: Request, status: int, body: bytes) -> tuple[str | None, float | None]:
    if status != 200:
        return f"{status} {req.path} -> {body[:300]!r}", None
    try:
        problem, figure = req.check(orjson.loads(body))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return f"{req.path}: unreadable response ({type(exc).__name__}: {exc})", None
    return (f"{req.path}: {problem}" if problem else None), figure


async def _autovacuum_now(url: str) -> list[str]:
    with contextlib.suppress(Exception):
        rows = (await sql(url, "SELECT query FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"))[0]
        return [r["query"][:120] for r in rows]
    return []


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_cpu() -> dict[int, tuple[int, str, float]]:
    """(parent pid, name, CPU seconds) of every process (Linux /proc)."""
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/stat") as f:
                head, _, tail = f.read().rpartition(")")
            rest = tail.split()
            procs[int(entry)] = (int(rest[1]), head.partition("(")[2], (int(rest[11]) + int(rest[12])) / CLK_TCK)
    return procs


def _tree(roots: list[int], procs: dict[int, tuple[int, str, float]]) -> set[int]:
    tree = set(roots)
    grew = True
    while grew:
        before = len(tree)
        tree |= {pid for pid, (ppid, _, _) in procs.items() if ppid in tree}
        grew = len(tree) > before
    return tree


def outside_cpu(before: dict, after: dict, seconds: float, roots: list[int]) -> tuple[float, list[str]]:
    """Cores used during a phase by processes outside this benchmark (its own tree, server, PostgreSQL)."""
    ours = _tree([os.getpid(), *roots], after)
    by_name: dict[str, float] = {}
    for pid, (_, name, cpu) in after.items():
        if pid not in ours:
            used = cpu - (before[pid][2] if pid in before else 0.0)
            if used > 0:
                by_name[name] = by_name.get(name, 0.0) + used / seconds
    top = sorted(by_name.items(), key=lambda kv: -kv[1])
    return sum(by_name.values()), [f"{n} {c:.2f}" for n, c in top[:4] if c >= 0.02]


def postmaster_pid(url: str) -> int | None:
    with contextlib.suppress(Exception):
        datadir = run_async(sql(url, "SHOW data_directory"))[0][0]["data_directory"]
        with open(os.path.join(datadir, "postmaster.pid")) as f:
            return int(f.readline())
    return None


async def timed_runs(port: int, url: str, names: list[str], patient_ids: list[str],
                     args: argparse.Namespace, roots: list[int], mode: str) -> list[Timed]:
    conn = Connection(port)
    results = []
    try:
        for name in names:
            # Each mode asks about other patients/months: a later mode must not find pages cached by an earlier one.
            rng = random.Random(f"{args.seed}-{mode}-query-{name}")
            warm = [make_request(name, rng, patient_ids) for _ in range(args.warmup)]
            timed = [make_request(name, rng, patient_ids) for _ in range(args.repeats)]
            run = Timed(name, len(timed), 0.0, [])
            for req in warm:
                status, body, _ = await _exchange(conn, req)
                problem, _ = _verify(req, status, body)
                if problem:
                    run.failures += 1
                    if len(run.samples) < 5:
                        run.samples.append("warm-up: " + problem)
            seen = set(await _autovacuum_now(url))
            responses = []
            cpu0 = _proc_cpu()
            t0 = time.perf_counter()
            for req in timed:
                status, body, seconds = await _exchange(conn, req)
                run.latencies_ms.append(seconds * 1000)
                responses.append((req, status, body))
            run.seconds = time.perf_counter() - t0
            run.outside_cores, run.outside = outside_cpu(cpu0, _proc_cpu(), run.seconds, roots)
            seen |= set(await _autovacuum_now(url))
            run.autovacuum = sorted(seen)
            for req, status, body in responses:  # checked after the clock stops
                key = "error" if status == 0 else str(status)
                run.statuses[key] = run.statuses.get(key, 0) + 1
                problem, figure = _verify(req, status, body)
                if figure is not None:
                    run.figures.append(figure)
                if problem:
                    run.failures += 1
                    if len(run.samples) < 5:
                        run.samples.append(problem)
            s = run.summary()
            out(f"  {name:<4} {s['requests']:>5} req  {s['rate']:7.1f}/s  p50 {s['p50_ms']:7.2f} ms  "
                f"p99 {s['p99_ms']:7.2f} ms  {FIGURES[name]} avg {s['figure_mean']}"
                + (f"  FAILURES {run.failures}" if run.failures else "")
                + (f"  (autovacuum active: {len(seen)})" if seen else "")
                + (f"  NOT QUIET: other processes used {run.outside_cores:.2f} cores ({', '.join(run.outside)})"
                   if run.outside_cores >= args.quiet_cores else ""))
            for sample in run.samples:
                out(f"       e.g. {sample}")
            results.append(run)
    finally:
        conn.close()
    return results


# ---------------------------------------------------------------------------------------------
# Plans: auto_explain entries in the PostgreSQL log


_ENTRY_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_SCAN = re.compile(r"(Parallel )?(Seq Scan|Index Only Scan|Index Scan|Bitmap Index Scan|Bitmap Heap Scan)"
                   r"( Backward)?(?: using (\S+))? on (\S+)")
_ACTUAL_ROWS = re.compile(r"actual time=[\d.]+\.\.[\d.]+ rows=(\d+) loops=(\d+)")


def read_log_slice(path: str, start: int, end: int | None = None) -> str:
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read() if end is None else f.read(end - start)
    return data.decode("utf-8", errors="replace")


def log_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def parse_log_entries(text: str) -> list[str]:
    """Log messages (a first line with the timestamp prefix, then tab-indented continuation lines)."""
    entries: list[list[str]] = []
    for line in text.splitlines():
        if _ENTRY_START.match(line) or not entries:
            entries.append([line])
        else:
            entries[-1].append(line)
    return ["\n".join(e) for e in entries]


MAIN_KINDS = ("main", "count", "include", "read")  # the statements of the search itself


@dataclass
class Plan:
    duration_ms: float
    query: str
    plan: str
    kind: str = ""
    generic: bool = False  # the plan shows $n parameters: PostgreSQL's generic plan of a prepared statement
    scans: list[dict[str, Any]] = field(default_factory=list)


def parse_plans(text: str) -> list[Plan]:
    plans = []
    for entry in parse_log_entries(text):
        first, _, rest = entry.partition("\n")
        m = re.search(r"duration: ([\d.]+) ms\s+plan:", first)
        if not m:
            continue
        lines = [ln[1:] if ln.startswith("\t") else ln for ln in rest.splitlines()]
        split = next((i for i, ln in enumerate(lines) if "(cost=" in ln or "(actual" in ln), len(lines))
        query = "\n".join(lines[:split]).removeprefix("Query Text: ").strip()
        body = "\n".join(lines[split:])
        plan = Plan(float(m.group(1)), query, body)
        plan.kind = "other" if "'SearchParameter'" in body else classify(query)
        plan.generic = bool(re.search(r"\$\d+", body))
        for ln in lines[split:]:
            s = _SCAN.search(ln)
            if s:
                rows = _ACTUAL_ROWS.search(ln)
                plan.scans.append({"node": (s.group(1) or "") + s.group(2) + (s.group(3) or ""),
                                   "index": s.group(4) if s.group(2) != "Bitmap Index Scan" else s.group(5),
                                   "table": s.group(5) if s.group(2) != "Bitmap Index Scan" else None,
                                   "rows": int(rows.group(1)) * int(rows.group(2)) if rows else None})
        plans.append(plan)
    return plans


def classify(query: str) -> str:
    q = " ".join(query.split()).lower()
    if q.startswith("select 1") or q in ("select 1", ";"):
        return "ping"
    if "count(" in q and "from resources" in q:
        return "count"
    if "distinct" in q and "search_reference" in q and "join resources" in q:
        return "include"
    if "from resources" in q and "limit" in q:
        return "main"
    if "from resources" in q and "resources.id =" in q:
        return "read"
    return "other"


def scan_summary(plan: Plan, big_tables: set[str]) -> list[str]:
    """One short note per scan node, with seq scans over big tables called out."""
    notes = []
    for s in plan.scans:
        table = s["table"]
        if s["node"].endswith("Seq Scan"):
            flag = "  <-- SEQ SCAN OF A BIG TABLE" if table in big_tables else ""
            notes.append(f"{s['node']} on {table} (rows {s['rows']}){flag}")
        elif s["node"] == "Bitmap Index Scan":
            notes.append(f"Bitmap Index Scan on {s['index']} (rows {s['rows']})")
        elif s["node"] == "Bitmap Heap Scan":
            notes.append(f"Bitmap Heap Scan on {table} (rows {s['rows']})")
        else:
            notes.append(f"{s['node']} using {s['index']} on {table} (rows {s['rows']})")
    return notes


async def explain_runs(port: int, names: list[str], patient_ids: list[str], args: argparse.Namespace,
                       pg_log: str) -> dict[str, dict[str, Any]]:
    """Run each query --explain-runs times; keep the plans logged during its first and last request."""
    conn = Connection(port)
    found: dict[str, dict[str, Any]] = {}
    try:
        for name in names:
            rng = random.Random(f"{args.seed}-explain-{name}")
            first = last = None
            problems = []
            for i in range(args.explain_runs):
                req = make_request(name, rng, patient_ids)
                before = log_size(pg_log)
                status, body, seconds = await _exchange(conn, req)
                await asyncio.sleep(0.05)  # let the backend finish writing its log lines
                problem, _ = _verify(req, status, body)
                if problem:
                    problems.append(problem)
                plans = [p for p in parse_plans(read_log_slice(pg_log, before)) if p.kind != "ping"]
                if i == 0:
                    first = (req.path, seconds * 1000, plans)
                last = (req.path, seconds * 1000, plans)
            found[name] = {"first": first, "last": last, "problems": problems}
    finally:
        conn.close()
    return found


def plan_shape(plans: list[Plan]) -> list[tuple[str, str, str]]:
    return [(p.kind, s["node"], s["index"] or s["table"] or "") for p in plans if p.kind in MAIN_KINDS
            for s in p.scans]


# ---------------------------------------------------------------------------------------------
# The benchmark


def git_revision() -> str:
    """The commit under test, with '+dirty' if the server package has uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "fhir_server"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def find_pg_log(url: str, given: str | None) -> str | None:
    if given:
        return given
    with contextlib.suppress(Exception):
        rows = run_async(sql(url, "SHOW data_directory", "SELECT pg_current_logfile()"))
        datadir = rows[0][0]["data_directory"]
        current = rows[1][0]["pg_current_logfile"]
        for candidate in ([os.path.join(datadir, current)] if current else []) + \
                [os.path.join(os.path.dirname(datadir), "log")]:  # tests/pgcluster.py: pg_ctl -l <workdir>/log
            if os.path.isfile(candidate) and os.access(candidate, os.R_OK):
                return candidate
    return None


def postgres_log_problems(path: str | None) -> dict[str, Any]:
    if not path or not os.path.exists(path):
        return {"errors": {}, "note": "PostgreSQL log not available"}
    counts: dict[str, int] = {}
    for entry in parse_log_entries(read_log_slice(path, 0)):
        first = entry.split("\n", 1)[0]
        m = re.search(r"\b(ERROR|FATAL|PANIC|WARNING):\s+(.*)", first)
        if m:
            key = f"{m.group(1)}: {m.group(2)[:200]}"
            counts[key] = counts.get(key, 0) + 1
    return {"errors": counts}


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _statement(p: Plan, big_tables: set[str], full: bool = True) -> dict[str, Any]:
    d = {"kind": p.kind, "duration_ms": p.duration_ms, "generic": p.generic, "scans": scan_summary(p, big_tables),
         "seq_scan_of_big_table": any(s["node"].endswith("Seq Scan") and s["table"] in big_tables for s in p.scans),
         "plan": p.plan}
    if full:
        d["query"] = p.query
    return d


def run_benchmark(url: str, args: argparse.Namespace, workdir: Path, pg_log_hint: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    names = [n.strip() for n in args.queries.split(",") if n.strip()]
    db = _ident(urlsplit(url).path.lstrip("/") or "postgres")

    out(f"loading {args.patients:,} patients (batches of {args.batch}) ...")
    patient_ids, seconds = run_async(load_patients(url, args.patients, args.seed, args.batch))
    result["load_patients"] = {"count": len(patient_ids), "seconds": round(seconds, 2),
                               "rate": round(len(patient_ids) / seconds, 1)}
    out(f"  patients {len(patient_ids):,} in {seconds:.1f} s  ({len(patient_ids) / seconds:.0f}/s)")
    out(f"loading {args.observations:,} observations with {args.procs} processes (batches of {args.batch}) ...")
    obs = load_observations(url, patient_ids, args)
    result["load_observations"] = {k: round(v, 2) if isinstance(v, float) else v for k, v in obs.items()}
    out(f"  observations {obs['count']:,} in {obs['seconds']:.1f} s  ({obs['rate']:.0f}/s; data generation "
        f"{obs['generate_cpu_seconds']:.1f} CPU s of that in the loaders)")

    out(("VACUUM (ANALYZE)" if args.vacuum else "ANALYZE") + " ...")
    stats = run_async(analyze(url, args.vacuum))
    result["analyze"] = stats
    out(f"  {stats['command']} in {stats['seconds']:.1f} s; database {stats['database_bytes'] / 2**20:,.0f} MiB")
    big_tables = {t["table"] for t in stats["tables"] if t["rows"] >= args.big_table_rows}

    # Timed runs, once per plan_cache_mode asked for ("auto" is PostgreSQL's default: after five
    # executions of a prepared statement it may switch to a generic plan).
    result["queries_by_mode"] = {}
    result["server_logs"] = {}
    for i, mode in enumerate(args.plan_modes):
        # A mode named twice (e.g. auto,force_custom_plan,auto to see order effects) is labelled auto#2.
        label = mode if mode not in args.plan_modes[:i] else f"{mode}#{args.plan_modes[:i + 1].count(mode)}"
        if mode != "auto":
            run_async(sql(url, f"ALTER DATABASE {db} SET plan_cache_mode = {mode}"))
        out(f"starting fhir-server serve --workers {args.workers} (plan_cache_mode {mode}) ...")
        server = bench_server(workdir, args.workers, url, f"server-{label.replace('#', '-')}")
        try:
            server.wait_ready()
            out(f"  ready on port {server.port}; {args.warmup} warm-up + {args.repeats} timed requests per query,"
                " one keep-alive connection, sequential")
            roots = [server.process.pid] + ([pm] if (pm := postmaster_pid(url)) else [])
            runs = run_async(timed_runs(server.port, url, names, patient_ids, args, roots, label))
        finally:
            server.stop()
            if mode != "auto":
                run_async(sql(url, f"ALTER DATABASE {db} RESET plan_cache_mode"))
        result["queries_by_mode"][label] = {r.name: r.summary() for r in runs}
        result["server_logs"][f"timed ({label})"] = server.log_summary()
    result["queries"] = result["queries_by_mode"][args.plan_modes[0]]

    pg_log = find_pg_log(url, pg_log_hint)
    result["pg_log"] = pg_log
    if args.explain_runs > 0 and pg_log is None:
        out("PostgreSQL log not found (use --pg-log); skipping plans")
    elif args.explain_runs > 0:
        settings = ["auto_explain.log_min_duration = 0", "auto_explain.log_analyze = on",
                    "auto_explain.log_buffers = on"]
        run_async(sql(url, *(f"ALTER DATABASE {db} SET {s}" for s in settings)))
        out(f"auto_explain on for database {db}; restarting the server; {args.explain_runs} runs per query ...")
        server = bench_server(workdir, args.workers, url, "server-explain")
        try:
            server.wait_ready()
            explained = run_async(explain_runs(server.port, names, patient_ids, args, pg_log))
        finally:
            server.stop()
            run_async(sql(url, *(f"ALTER DATABASE {db} RESET {s.split(' =')[0]}" for s in settings)))
        result["server_logs"]["explain"] = server.log_summary()
        result["plans"] = {}
        for name, found in explained.items():
            path, ms, plans = found["last"]
            first_path, first_ms, first_plans = found["first"]
            same = plan_shape(plans) == plan_shape(first_plans)
            result["plans"][name] = {
                "request": path, "request_ms": round(ms, 2), "problems": found["problems"],
                "statements": [_statement(p, big_tables) for p in plans],
                "same_shape_as_first_run": same,
                "first_run": {"request": first_path, "request_ms": round(first_ms, 2),
                              "statements": [_statement(p, big_tables, full=False) for p in first_plans]},
            }
    result["postgres_log"] = postgres_log_problems(pg_log)
    return result


def _verdict(st: dict[str, Any]) -> str:
    if st["seq_scan_of_big_table"]:
        return "SEQ SCAN of a big table"
    if not st["scans"]:
        return "no scans"
    return "indexes only" if all("Seq Scan" not in s for s in st["scans"]) else "seq scans of small tables only"


def print_report(settings: dict[str, Any], result: dict[str, Any], stream) -> None:
    p = lambda *a: print(*a, file=stream)  # noqa: E731
    p()
    p("settings: " + "  ".join(f"{k}={v}" for k, v in settings.items()))
    lp, lo = result["load_patients"], result["load_observations"]
    total = lp["count"] + lo["count"]
    p()
    p("LOAD (ResourceService.create_many in-process: validation + search index; durable PostgreSQL)")
    p(f"  patients      {lp['count']:>10,}  in {lp['seconds']:8.1f} s  {lp['rate']:8.0f}/s  (1 process)")
    p(f"  observations  {lo['count']:>10,}  in {lo['seconds']:8.1f} s  {lo['rate']:8.0f}/s  "
      f"({settings['procs']} processes; data generation {lo['generate_cpu_seconds']:.0f} CPU s of it)")
    p(f"  total         {total:>10,}  in {lp['seconds'] + lo['seconds']:8.1f} s  "
      f"{total / (lp['seconds'] + lo['seconds']):8.0f}/s")
    a = result["analyze"]
    p(f"  {a['command']} {a['seconds']:.1f} s; database size {a['database_bytes'] / 2**20:,.0f} MiB")
    p(f"  {'table':<22} {'rows':>12} {'total MiB':>10} {'index MiB':>10}")
    for t in a["tables"]:
        if t["rows"] > 0:
            p(f"  {t['table']:<22} {t['rows']:>12,} {t['bytes'] / 2**20:>10,.0f} {t['index_bytes'] / 2**20:>10,.0f}")

    if "plans" in result:
        p()
        p("PLANS (auto_explain with ANALYZE and BUFFERS). For each query: the last of its explain runs on a freshly")
        p("started server (what the timed runs mostly saw: after five executions of a prepared statement on a")
        p("connection PostgreSQL may switch to a generic plan, shown by $n parameters; queries that share SQL text")
        p("share the prepared statement), then the plans of its first run if their shape differs.")
        for name, info in result["plans"].items():
            p()
            p(f"== {name}: GET {info['request']}  ({info['request_ms']:.1f} ms over HTTP)")
            for prob in info["problems"]:
                p(f"   problem: {prob}")
            for st in info["statements"]:
                tag = f"[{st['kind']}, {'generic' if st['generic'] else 'custom'} plan]"
                if st["kind"] not in MAIN_KINDS and not st["seq_scan_of_big_table"]:
                    p(f"   {tag} {st['duration_ms']:.3f} ms  {' '.join(st['query'].split())[:150]}")
                    continue
                p(f"   {tag} {st['duration_ms']:.3f} ms in PostgreSQL")
                p("   SQL: " + "\n        ".join(ln.rstrip() for ln in st["query"].splitlines()))
                p("   " + "\n   ".join(st["plan"].splitlines()))
                p("   scans: " + ("; ".join(st["scans"]) or "none"))
            fr = info["first_run"]
            if not info["same_shape_as_first_run"]:
                p(f"   -- first run, a different plan shape: GET {fr['request']} ({fr['request_ms']:.1f} ms over HTTP)")
                for st in fr["statements"]:
                    if st["kind"] in MAIN_KINDS:
                        p(f"   [{st['kind']}, {'generic' if st['generic'] else 'custom'} plan] "
                          f"{st['duration_ms']:.3f} ms in PostgreSQL")
                        p("   " + "\n   ".join(st["plan"].splitlines()))
        p()
        p("INDEX USE (search statements; first = the query's first explain run, last = its last)")
        p(f"  {'':<4} {'stmt':<8} {'first run':>22} {'last run':>22}  verdict (last run; first run if different)")
        for name, info in result["plans"].items():
            firsts = [st for st in info["first_run"]["statements"] if st["kind"] in MAIN_KINDS]
            for st in (st for st in info["statements"] if st["kind"] in MAIN_KINDS):
                f = next((x for x in firsts if x["kind"] == st["kind"]), None)
                fcol = f"{f['duration_ms']:9.3f} ms {'generic' if f['generic'] else 'custom'}" if f else "-"
                lcol = f"{st['duration_ms']:9.3f} ms {'generic' if st['generic'] else 'custom'}"
                verdict = _verdict(st)
                if f and _verdict(f) != verdict:
                    verdict += f" (first run: {_verdict(f)})"
                p(f"  {name:<4} {st['kind']:<8} {fcol:>22} {lcol:>22}  {verdict}")

    p()
    p(f"QUERIES (one sequential keep-alive client; {settings['warmup']} warm-up + {settings['repeats']} timed "
      f"requests each, a different patient/month/RID per request; fhir-server --workers {settings['workers']})")
    modes = result["queries_by_mode"]
    p(f"  {'':<4} {'plan_cache_mode':<17} {'req/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
      f"{'fail':>5}  {'per request (mean)':<24} query")
    for name in result["queries"]:
        for mode, queries in modes.items():
            q = queries[name]
            fig = f"{q['figure']} {q['figure_mean']}" if q["figure_mean"] is not None else ""
            p(f"  {name:<4} {mode:<17} {q['rate']:>7.1f} {q['p50_ms']:>8.2f} {q['p90_ms']:>8.2f} {q['p99_ms']:>8.2f} "
              f"{q['max_ms']:>8.2f} {q['failures']:>5}  {fig:<24} {q['query']}")
            for s in q["failure_samples"]:
                p(f"       e.g. {s}")
            if q["autovacuum_seen"]:
                p(f"       autovacuum was running: {'; '.join(q['autovacuum_seen'])[:200]}")
            if q["other_processes_cores"] >= settings["quiet_cores"]:
                p(f"       NOT QUIET: processes outside the benchmark used {q['other_processes_cores']:.2f} cores"
                  f" ({', '.join(q['other_processes'])})")
    for mode, queries in modes.items():
        qa = queries.get("a")
        if qa and qa["p50_ms"] > 15:
            p(f"  NOTE: p50 of query a is {qa['p50_ms']:.1f} ms with plan_cache_mode {mode}, above 15 ms")
    if "plans" in result:
        for name, info in result["plans"].items():
            for st in info["statements"]:
                if st["seq_scan_of_big_table"]:
                    p(f"  NOTE: query {name} ({st['kind']}) plan has a sequential scan of a big table")

    p()
    for key, log in result.get("server_logs", {}).items():
        bad = {k: v for k, v in log["access_statuses"].items() if not k.split()[-1].startswith("2")}
        p(f"server log, {key}: exit {log['exit_code']}; access {log['access_statuses']}; "
          f"{sum(log['warnings_errors'].values())} warnings/errors; {log['non_json_lines']} non-JSON lines"
          + (f"; NON-2xx {bad}" if bad else "") + f"  ({log['log']})")
        for text, count in list(log["warnings_errors"].items())[:10]:
            p(f"    {count} x {text}")
        for text in log["non_json_samples"][:5]:
            p(f"    non-JSON: {text}")
    pg = result.get("postgres_log", {})
    p(f"postgres log: {sum(pg.get('errors', {}).values())} ERROR/WARNING/FATAL entries"
      + (f" ({pg['note']})" if pg.get("note") else "")
      + f"  (kept at {result.get('pg_log_kept', result.get('pg_log'))})")
    for text, count in list(pg.get("errors", {}).items())[:10]:
        p(f"    {count} x {text}")
    p()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--observations", type=int, default=1_000_000)
    parser.add_argument("--procs", type=int, default=2, help="loader processes for the observations")
    parser.add_argument("--batch", type=int, default=1000, help="resources per create_many")
    parser.add_argument("--progress-every", type=int, default=50_000)
    parser.add_argument("--vacuum", action="store_true", help="VACUUM (ANALYZE) after the load instead of ANALYZE")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--queries", default="read,a,b,c,d", help="which queries, in order: read,a,b,c,d")
    parser.add_argument("--repeats", type=int, default=200, help="timed requests per query")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per query first")
    parser.add_argument("--plan-modes", default="auto",
                        help="comma-separated plan_cache_mode values to time the queries under (set with ALTER "
                             "DATABASE before the server starts): auto (PostgreSQL's default), force_custom_plan, "
                             "force_generic_plan")
    parser.add_argument("--explain-runs", type=int, default=7,
                        help="requests per query with auto_explain on (0: no plans); the last one's plans are shown")
    parser.add_argument("--big-table-rows", type=int, default=10_000,
                        help="a seq scan of a table with at least this many rows is flagged")
    parser.add_argument("--quiet-cores", type=float, default=0.2,
                        help="flag a timed run during which other processes used at least this many cores")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default=None,
                        help="use this (empty) PostgreSQL database instead of a throwaway cluster")
    parser.add_argument("--pg-log", default=None, help="the PostgreSQL server log (for plans) with --database-url")
    parser.add_argument("--keep-log", default=None,
                        help="copy the throwaway cluster's log here (default: postgres.log in the work dir)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args(argv)
    if args.patients < 1 or args.observations < 1:
        parser.error("--patients and --observations must be positive")
    args.plan_modes = [m.strip() for m in args.plan_modes.split(",") if m.strip()]
    bad = set(args.plan_modes) - {"auto", "force_custom_plan", "force_generic_plan"}
    if bad or not args.plan_modes:
        parser.error(f"unknown --plan-modes {sorted(bad)}")

    workdir = Path(tempfile.mkdtemp(prefix="fhir-bench-search-"))
    keep_log = args.keep_log or str(workdir / "postgres.log")
    settings = {"patients": args.patients, "observations": args.observations, "procs": args.procs,
                "batch": args.batch, "workers": args.workers, "repeats": args.repeats, "warmup": args.warmup,
                "explain_runs": args.explain_runs, "plan_modes": ",".join(args.plan_modes), "seed": args.seed,
                "vacuum": args.vacuum, "quiet_cores": args.quiet_cores,
                "cpus": os.cpu_count(), "python": sys.version.split()[0], "revision": git_revision(),
                "database": "external" if args.database_url else "throwaway durable cluster"}
    out(f"work dir (logs): {workdir}")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.database_url:
            url = args.database_url
        else:
            out("starting a durable PostgreSQL cluster ...")
            url = stack.enter_context(postgres_cluster(durable=True, settings=PG_SETTINGS, keep_log=keep_log))
        version = run_async(sql(url, "SHOW server_version"))[0][0]["server_version"]
        settings["postgres"] = version.split()[0]
        result = run_benchmark(url, args, workdir, args.pg_log)
    if not args.database_url:
        result["pg_log_kept"] = keep_log
    result["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    print_report(settings, result, sys.stderr if args.json else sys.stdout)
    out(f"elapsed {result['elapsed_seconds']:.0f} s; logs in {workdir}")
    if args.json:
        json.dump({"settings": settings, "results": result}, sys.stdout, indent=2, default=str)
        print()
    failures = sum(q["failures"] for queries in result["queries_by_mode"].values() for q in queries.values())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
