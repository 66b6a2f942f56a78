#!/usr/bin/env python3
"""Subscription benchmark: how soon a rest-hook receiver hears of a matching write, and how many
notifications per second the dispatcher delivers, on a real `fhir-server serve` per backend.

    python bench/subscriptions.py                          # both backends
    python bench/subscriptions.py --backends sqlite --sequential 100 --burst 500 --workers 2

For each backend: a fresh server (bench/crud.py's Server; PostgreSQL from tests/pgcluster.py), a
receiver on the loopback (tests/subscription_receivers.py) and one active rest-hook Subscription with
a full-resource payload. Then

  1. latency: --sequential matching creates one after another; for each, the time from sending the
     create to the notification's arrival (p50/p99/max; the create's own time included);
  2. burst: --burst matching creates from --clients concurrent clients; creates/s while they run, and
     notifications/s from the first create until the last notification arrived.

The cost a write pays when no subscription exists is measured by bench/crud.py (run it before and
after). Nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from crud import Server, percentile  # noqa: E402  (the benches share one way of running a server)
from pgcluster import postgres_cluster  # noqa: E402
from subscription_receivers import Receiver  # noqa: E402

CODE = "http://loinc.org|8867-4"


def observation() -> dict:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}


def arrivals(receiver: Receiver) -> dict[str, float]:
    """When each notification (by resource id) arrived."""
    return {json.loads(got.body)["id"]: got.at for got in list(receiver.received)}


def run_backend(backend: str, url: str, args: argparse.Namespace, folder: Path) -> dict:
    env = {"FHIR_DATABASE_URL": url, "FHIR_LOG_LEVEL": "WARNING", "FHIR_AUTH": "off"}
    server = Server(folder, args.workers, env)
    receiver = Receiver().start()
    try:
        server.wait_ready()
        base = f"http://127.0.0.1:{server.port}"
        with httpx.Client(base_url=base, timeout=60) as http:
            sub = http.post("/Subscription", json={
                "resourceType": "Subscription", "status": "requested", "reason": "bench",
                "criteria": f"Observation?code={CODE}",
                "channel": {"type": "rest-hook", "endpoint": receiver.url, "payload": "application/fhir+json"}}).json()
            while http.get(f"/Subscription/{sub['id']}").json()["status"] != "active":
                time.sleep(0.05)
            latencies = []
            for count in range(1, args.sequential + 1):
                sent = time.monotonic()
                http.post("/Observation", json=observation())
                latencies.append((receiver.wait_for(count, timeout=60)[-1].at - sent) * 1000)

        def create(_) -> str:
            return client.post("/Observation", json=observation()).json()["id"]

        with httpx.Client(base_url=base, timeout=60,
                          limits=httpx.Limits(max_connections=args.clients)) as client:
            started = time.monotonic()
            with ThreadPoolExecutor(args.clients) as pool:
                ids = list(pool.map(create, range(args.burst)))
            written = time.monotonic()
            receiver.wait_for(args.sequential + args.burst, timeout=300)
            arrived = arrivals(receiver)
            done = max(arrived[i] for i in ids)
        latencies.sort()
        return {
            "backend": backend, "workers": args.workers,
            "latency_ms": {"p50": round(percentile(latencies, 0.5), 1), "p99": round(percentile(latencies, 0.99), 1),
                           "max": round(latencies[-1], 1), "mean": round(statistics.fmean(latencies), 1)},
            "burst": {"creates": args.burst, "creates_per_s": round(args.burst / (written - started), 1),
                      "notifications_per_s": round(args.burst / (done - started), 1),
                      "last_notification_after_last_write_ms": round((done - written) * 1000, 1),
                      "delivered": sum(i in arrived for i in ids)},
        }
    finally:
        receiver.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args()
    results = []
    with ExitStack() as stack:
        for backend in args.backends.split(","):
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-subs-{backend}-")))
            url = stack.enter_context(postgres_cluster(durable=True)) if backend == "postgresql" else ""
            result = run_backend(backend, url, args, folder)
            results.append(result)
            lat, burst = result["latency_ms"], result["burst"]
            print(f"{backend:<10} create->notification p50 {lat['p50']} ms  p99 {lat['p99']} ms  max {lat['max']} ms"
                  f" | burst of {burst['creates']}: creates/s {burst['creates_per_s']}, notifications/s "
                  f"{burst['notifications_per_s']}, last one {burst['last_notification_after_last_write_ms']} ms"
                  f" after the last write ({burst['delivered']} delivered)", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
