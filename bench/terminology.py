"""Terminology figures: how long start-up spends loading terminology/, and the latency (p50/p99) of
$lookup, $validate-code, $expand, $translate, $subsumes, $validate against a profile, a profile-checked
create beside a plain one, and Condition searches with :in and :below over N Conditions.

    python bench/terminology.py [--backend sqlite|postgresql|both] [--conditions 2000] [--rounds 200]

PostgreSQL runs in a throwaway cluster (tests/pgcluster.py). Prints figures; asserts nothing."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from crud import Server, percentile  # noqa: E402  (the benches share one way of running a server)
from pgcluster import postgres_cluster  # noqa: E402

A = "http://alliance.example.org/fhir"
SCT = "http://snomed.info/sct"
CODES = ["44054006", "46635009", "59621000", "49436004", "13645005", "22298006", "195967001", "426783006"]
BP = {"resourceType": "Observation", "meta": {"profile": [f"{A}/StructureDefinition/alliance-blood-pressure"]},
      "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
      "subject": {"reference": "Patient/bench"}, "effectiveDateTime": "2026-01-05T09:30:00+08:00",
      "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                     "valueQuantity": {"value": value, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org",
                                       "code": "mm[Hg]"}} for code, value in (("8480-6", 128), ("8462-4", 82))]}

PLAIN_BP = {k: v for k, v in BP.items() if k != "meta"}


def timed(http: httpx.Client, rounds: int, request) -> tuple[float, float]:
    times = []
    for i in range(rounds):
        start = time.perf_counter()
        response = request(http, i)
        times.append((time.perf_counter() - start) * 1000)
        if response.status_code >= 300:
            raise RuntimeError(f"{response.status_code} {response.text[:300]}")
    times.sort()
    return percentile(times, 0.5), percentile(times, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--conditions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    for backend in ("sqlite", "postgresql") if args.backend == "both" else (args.backend,):
        with postgres_cluster() if backend == "postgresql" else nullcontext("") as url:
            with tempfile.TemporaryDirectory(prefix="bench-terminology-") as workdir:
                server = Server(Path(workdir), 1, {"FHIR_LOG_LEVEL": "INFO", "FHIR_DATABASE_URL": url})
                try:
                    server.wait_ready()
                    run(server, backend, args)
                finally:
                    server.stop()


def _load_ms(server: Server) -> float | None:
    lines = [json.loads(x) for x in server.log_path.read_text().splitlines() if x.startswith("{")]
    ready = [x for x in lines if x.get("msg") in ("Waiting for application startup.", "terminology loaded")]
    if len(ready) < 2:
        return None
    parse = [time.mktime(time.strptime(x["ts"][:19], "%Y-%m-%dT%H:%M:%S")) + float(x["ts"][19:23]) for x in ready[:2]]
    return (parse[1] - parse[0]) * 1000


def run(server: Server, backend: str, args) -> None:
    base = f"http://127.0.0.1:{server.port}"
    with httpx.Client(base_url=base, timeout=60, headers={"Content-Type": "application/fhir+json"}) as http:
        load = _load_ms(server)
        print(f"backend {backend}: start-up to terminology loaded {load:.0f} ms" if load is not None else
              f"backend {backend}")
        conditions = [{"resourceType": "Condition", "subject": {"reference": f"Patient/p{i % 200}"},
                       "code": {"coding": [{"system": SCT, "code": CODES[i % len(CODES)]}]}}
                      for i in range(args.conditions)]
        for start in range(0, len(conditions), 500):
            entries = [{"resource": c, "request": {"method": "POST", "url": "Condition"}}
                       for c in conditions[start:start + 500]]
            bundle = {"resourceType": "Bundle", "type": "batch", "entry": entries}
            http.post("/", json=bundle).raise_for_status()
        cases = {
            "$lookup SNOMED": lambda h, i: h.get("/CodeSystem/$lookup", params={"system": SCT, "code": "44054006"}),
            "$validate-code ValueSet": lambda h, i: h.get("/ValueSet/chronic-disease-register/$validate-code",
                                                          params={"system": SCT, "code": CODES[i % len(CODES)]}),
            "$expand (imports, is-a)": lambda h, i: h.get("/ValueSet/chronic-disease-register/$expand"),
            "$expand CID 29 filter": lambda h, i: h.get("/ValueSet/acquisition-modality/$expand",
                                                        params={"filter": "tomo"}),
            "$subsumes": lambda h, i: h.get("/CodeSystem/$subsumes", params={"system": SCT, "codeA": "64572001",
                                                                             "codeB": CODES[i % len(CODES)]}),
            "$translate": lambda h, i: h.get("/ConceptMap/$translate", params={
                "system": f"{A}/CodeSystem/local-observation-codes", "code": "SBP"}),
            "$validate BP profile": lambda h, i: h.post("/Observation/$validate", json=BP),
            "create BP with profile": lambda h, i: h.post("/Observation", json=BP),
            "create BP without profile": lambda h, i: h.post("/Observation", json=PLAIN_BP),
            "Condition?code:in (imports)": lambda h, i: h.get("/Condition", params={
                "code:in": "ValueSet/chronic-disease-register", "_count": 20}),
            "Condition?code (one code)": lambda h, i: h.get("/Condition", params={"code": f"{SCT}|44054006",
                                                                                  "_count": 20}),
            "Condition?code:below": lambda h, i: h.get("/Condition", params={"code:below": f"{SCT}|49601007",
                                                                              "_count": 20}),
            "Condition?code:not-in count": lambda h, i: h.get("/Condition", params={
                "code:not-in": "ValueSet/diabetes", "_summary": "count"}),
        }
        print(f"{args.conditions} Conditions, {args.rounds} sequential requests each")
        print(f"{'request':32} {'p50 ms':>8} {'p99 ms':>8}")
        medians = {}
        for name, request in cases.items():
            timed(http, 5, request)  # warm caches and plans
            p50, p99 = timed(http, args.rounds, request)
            medians[name] = p50
            print(f"{name:32} {p50:8.1f} {p99:8.1f}")
        extra = medians["create BP with profile"] - medians["create BP without profile"]
        print(f"profile check on create: {extra:+.1f} ms at p50; "
              f"median of all: {statistics.median(medians.values()):.1f} ms")


if __name__ == "__main__":
    main()
