"""Ingest benchmark: synthetic alliance records (a Patient with encounters, vital signs, ECGs,
referrals, prescriptions and dispenses: 50-150 resources each) loaded two ways, on each backend:

  1. transaction Bundles POSTed to a running `fhir-server serve --workers 2` by concurrent clients;
  2. `fhir-server load` of the same Bundles written as files (one per patient).

Prints resources/s for each (median of --repeats runs, each into an empty database) and, as a
same-run baseline, the create-one-resource-per-request rate. Not a test: no assertions on speed.

    python bench/ingest.py [--patients 200] [--backends sqlite,postgresql] [--clients 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from crud import HOST, Server  # noqa: E402  (the benches share one way of running a server)
from datagen import _coding, observation, patient  # noqa: E402
from pgcluster import postgres_cluster  # noqa: E402

FHIR_SERVER = str(Path(sys.executable).parent / "fhir-server")
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
DRUGS = [("197361", "Amlodipine 5 MG Oral Tablet"), ("314076", "Lisinopril 10 MG Oral Tablet"),
         ("860975", "Metformin 500 MG Oral Tablet"), ("617310", "Atorvastatin 20 MG Oral Tablet")]


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def patient_record(n: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """(fullUrl, resource) for one resident: 50-150 resources referring to each other by urn:uuid."""
    rng = random.Random(f"{seed}-record-{n}")
    pid = _urn()
    out = [(pid, patient(n, rng))]
    encounters = []
    for _ in range(rng.randint(4, 12)):
        eid = _urn()
        start = f"202{rng.randint(4, 6)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T0{rng.randint(8, 9)}:00:00+08:00"
        encounters.append(eid)
        out.append((eid, {"resourceType": "Encounter", "status": "finished",
                          "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                          "type": [{"coding": [_coding(SNOMED, "185349003", "Encounter for check up")]}],
                          "subject": {"reference": pid}, "period": {"start": start}}))
    for _ in range(rng.randint(38, 110)):
        obs = observation(rng, pid)
        obs["encounter"] = {"reference": rng.choice(encounters)}
        out.append((_urn(), obs))
    for _ in range(rng.randint(0, 3)):
        out.append((_urn(), {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                             "category": [{"coding": [_coding(SNOMED, "3457005", "Patient referral")]}],
                             "code": {"coding": [_coding(SNOMED, "183519002", "Referral to cardiology service")]},
                             "priority": rng.choice(["routine", "urgent"]), "subject": {"reference": pid},
                             "encounter": {"reference": rng.choice(encounters)}}))
    for _ in range(rng.randint(2, 10)):
        code, name = rng.choice(DRUGS)
        rx = _urn()
        out.append((rx, {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                         "medicationCodeableConcept": {"coding": [_coding(RXNORM, code, name)]},
                         "subject": {"reference": pid}, "encounter": {"reference": rng.choice(encounters)},
                         "dosageInstruction": [{"text": "1 tablet daily"}]}))
        out.append((_urn(), {"resourceType": "MedicationDispense", "status": "completed",
                             "medicationCodeableConcept": {"coding": [_coding(RXNORM, code, name)]},
                             "subject": {"reference": pid}, "authorizingPrescription": [{"reference": rx}],
                             "quantity": {"value": 30, "unit": "tablet"}, "category": {"text": "community"}}))
    return out


def transaction(record: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": url, "resource": res, "request": {"method": "POST", "url": res["resourceType"]}}
        for url, res in record]}


async def post_all(base: str, bodies: list[bytes], clients: int, path: str = "/") -> float:
    """POST every body with `clients` concurrent keep-alive clients; returns elapsed seconds."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"}

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=300, headers=headers) as http:
            while not queue.empty():
                body = queue.get_nowait()
                response = await http.post(path, content=body)
                if response.status_code not in (200, 201):
                    raise RuntimeError(f"{response.status_code}: {response.text[:500]}")

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started


def database(backend: str, stack: list) -> str:
    if backend == "sqlite":
        return ""
    cluster = postgres_cluster(durable=True, settings="-c shared_buffers=512MB -c max_wal_size=4GB")
    stack.append(cluster)
    return cluster.__enter__()


def fresh_env(backend: str, base_url: str) -> dict[str, str]:
    """A new, empty database for one run (a new PostgreSQL database, or a new SQLite data dir)."""
    if backend == "sqlite":
        return {"FHIR_DATABASE_URL": ""}
    import asyncpg

    name = f"ingest_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(base_url)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    asyncio.run(create())
    return {"FHIR_DATABASE_URL": base_url.rsplit("/", 1)[0] + f"/{name}"}


def run_backend(backend: str, args, records) -> dict[str, Any]:
    stack: list = []
    try:
        base_url = database(backend, stack)
        total = sum(len(r) for r in records)
        bodies = [json.dumps(transaction(r)).encode() for r in records]
        singles = [json.dumps(res).encode() for _, res in records[0][:1]] * args.singles
        results: dict[str, list[float]] = {"transaction": [], "load": [], "single-create": []}
        for _ in range(args.repeats):
            work = Path(tempfile.mkdtemp(prefix="fhir-ingest-"))
            try:
                env = fresh_env(backend, base_url)
                server = Server(work, args.workers, {**env, "FHIR_LOG_LEVEL": "WARNING"})
                server.wait_ready()
                base = f"http://{HOST}:{server.port}"
                try:
                    asyncio.run(post_all(base, bodies[:2], 1))  # warm-up (not counted)
                    elapsed = asyncio.run(post_all(base, bodies[2:], args.clients))
                    results["transaction"].append(sum(len(r) for r in records[2:]) / elapsed)
                    elapsed = asyncio.run(post_all(base, singles, args.clients, "/Patient"))
                    results["single-create"].append(len(singles) / elapsed)
                finally:
                    server.stop()
                files = work / "bundles"
                files.mkdir()
                for i, body in enumerate(bodies):
                    (files / f"patient-{i:05d}.json").write_bytes(body)
                env = fresh_env(backend, base_url)
                started = time.perf_counter()
                run = subprocess.run([FHIR_SERVER, "load", "--quiet", "--workers", str(args.workers),
                                      "--data-dir", str(work / "load-data"), "--rejects", str(work / "rejects.ndjson"),
                                      str(files)], env={**os.environ, **env}, capture_output=True, text=True)
                elapsed = time.perf_counter() - started
                if run.returncode != 0:
                    raise RuntimeError(run.stderr[-2000:])
                results["load"].append(total / elapsed)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return {name: {"median": statistics.median(v), "runs": [round(x) for x in v]} for name, v in results.items()}
    finally:
        for cluster in reversed(stack):
            cluster.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--singles", type=int, default=2000, help="one-resource POSTs for the baseline")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    records = [patient_record(n, args.seed) for n in range(args.patients)]
    sizes = [len(r) for r in records]
    print(f"{args.patients} patients, {sum(sizes)} resources ({min(sizes)}-{max(sizes)} per patient, "
          f"median {statistics.median(sizes):.0f}); server --workers {args.workers}, {args.clients} clients, "
          f"median of {args.repeats} runs", flush=True)
    report = {}
    for backend in args.backends.split(","):
        report[backend] = run_backend(backend, args, records)
        r = report[backend]
        print(f"{backend:10s}  transaction bundles {r['transaction']['median']:7.0f} resources/s   "
              f"fhir-server load {r['load']['median']:7.0f} resources/s   "
              f"(baseline single POST {r['single-create']['median']:6.0f}/s; ratio bundle/single "
              f"{r['transaction']['median'] / r['single-create']['median']:.1f}x)", flush=True)
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
