#!/usr/bin/env python3
"""Workflow benchmark: what the alliance workflows cost on a real `fhir-server serve`, per backend.

    python bench/workflows.py                          # SQLite and PostgreSQL, defaults below
    python bench/workflows.py --backends sqlite --residents 2000 --json

For each backend: a fresh server (one worker) gets --residents Patients with resident IDs (transaction
Bundles of 500, untimed), then one client measures, sequentially:

  - POST /Patient with a resident ID (duplicate check) beside POST /Organization (no workflow rule),
  - POST /Patient/$match of a known resident without identifiers (demographic scoring) and with one,
  - PUT /Task status changes (the status machine reads the replaced version under a lock),
  - GET /Patient/[id]/$everything of a Patient with --record resources, first page of 100.

It prints requests/s and p50/p99 latency for each. Figures, never asserts: run it on an idle machine."""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from crud import Server, percentile  # noqa: E402  (the benches share one way of running a server)
from pgcluster import postgres_cluster  # noqa: E402

from fhir_server.identifiers import RESIDENT_ID  # noqa: E402

FAMILIES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗"
GIVEN = ["伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超"]


def resident(rng: random.Random, number: int) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": RESIDENT_ID, "value": f"5301{number:014d}"}],
            "name": [{"family": rng.choice(FAMILIES), "given": [rng.choice(GIVEN)]}],
            "gender": rng.choice(["male", "female"]),
            "birthDate": f"{rng.randrange(1930, 2010)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
            "telecom": [{"system": "phone", "value": f"139{number:08d}"}]}


def timed(http: httpx.Client, calls: list, expect: int) -> dict:
    latencies = []
    start = time.perf_counter()
    for method, url, body in calls:
        began = time.perf_counter()
        response = http.request(method, url, json=body)
        latencies.append(time.perf_counter() - began)
        if response.status_code != expect:
            raise RuntimeError(f"{method} {url}: {response.status_code} {response.text[:300]}")
    elapsed = time.perf_counter() - start
    latencies.sort()
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return {"n": len(calls), "per_s": round(len(calls) / elapsed, 1), "p50_ms": round(p50 * 1000, 2),
            "p99_ms": round(p99 * 1000, 2)}


def run(backend: str, url: str, args) -> dict:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="bench-workflows-") as folder:
        server = Server(Path(folder), 1, {"FHIR_DATABASE_URL": url})
        try:
            server.wait_ready()
            with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=120,
                              headers={"Content-Type": "application/fhir+json"}) as http:
                residents = [resident(rng, n) for n in range(args.residents)]
                for start in range(0, len(residents), 500):
                    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
                        {"resource": r, "request": {"method": "POST", "url": "Patient"}}
                        for r in residents[start:start + 500]]}
                    assert http.post("/", json=bundle).status_code == 200
                n = args.requests
                figures = {"backend": backend, "residents": args.residents}
                figures["create_patient_with_resident_id"] = timed(http, [
                    ("POST", "/Patient", resident(rng, args.residents + i)) for i in range(n)], 201)
                figures["create_organization"] = timed(http, [
                    ("POST", "/Organization", {"resourceType": "Organization", "name": f"clinic {i}"})
                    for i in range(n)], 201)
                samples = rng.sample(residents, n)

                def without_id(patient: dict) -> dict:
                    return {k: v for k, v in patient.items() if k != "identifier"}

                figures["match_demographics"] = timed(http, [
                    ("POST", "/Patient/$match", {"resourceType": "Parameters", "parameter": [
                        {"name": "resource", "resource": without_id(p)}]}) for p in samples], 200)
                figures["match_identifier"] = timed(http, [
                    ("POST", "/Patient/$match", {"resourceType": "Parameters", "parameter": [
                        {"name": "resource", "resource": p}]}) for p in samples], 200)
                tasks = [http.post("/Task", json={"resourceType": "Task", "status": "requested",
                                                  "intent": "order"}).json() for _ in range(n // 4)]
                steps = []
                for status in ("received", "accepted", "in-progress", "completed"):
                    steps += [("PUT", f"/Task/{t['id']}", {**t, "status": status}) for t in tasks]
                figures["task_status_change"] = timed(http, steps, 200)
                patient = http.post("/Patient", json=resident(rng, 10**9)).json()
                subject = {"reference": f"Patient/{patient['id']}"}
                record = [{"resource": {"resourceType": "Observation", "status": "final", "subject": subject,
                                        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                                        "valueQuantity": {"value": 60 + i % 50, "unit": "/min",
                                                          "system": "http://unitsofmeasure.org", "code": "/min"}},
                           "request": {"method": "POST", "url": "Observation"}} for i in range(args.record)]
                assert http.post("/", json={"resourceType": "Bundle", "type": "transaction",
                                            "entry": record}).status_code == 200
                figures["everything_first_page_100"] = timed(http, [
                    ("GET", f"/Patient/{patient['id']}/$everything?_count=100", None) for _ in range(n // 4)], 200)
                return figures
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--residents", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--record", type=int, default=300, help="resources in the $everything Patient's record")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    for backend in args.backends:
        if backend == "sqlite":
            results.append(run(backend, "", args))
        else:
            with postgres_cluster() as url:
                results.append(run(backend, url, args))
    if args.json:
        print(json.dumps(results, indent=1))
        return
    for figures in results:
        print(f"{figures['backend']} ({figures['residents']} residents)")
        for name, value in figures.items():
            if isinstance(value, dict):
                print(f"  {name:36s} {value['per_s']:8.1f}/s  p50 {value['p50_ms']:7.2f} ms  "
                      f"p99 {value['p99_ms']:7.2f} ms  (n={value['n']})")


if __name__ == "__main__":
    main()
