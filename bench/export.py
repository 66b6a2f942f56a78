"""Bulk $export benchmark: generate N synthetic alliance resources (Patients and vital-sign / ECG
Observations from datagen.py), load them with `fhir-server load`, then run a system-level $export on
a `fhir-server serve` and print resources/s and the server's memory: its RSS before the export, when
the status poll first reports 10 % and 50 %, at 100 %, and its peak (VmHWM) — the export streams pages
to files, so memory should stay flat whatever N is. Not a test: no assertions on speed.

    python bench/export.py [--count 1000000] [--backend sqlite|postgresql] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from crud import HOST, Server  # noqa: E402  (the benches share one way of running a server)
from datagen import observation_batch, patients  # noqa: E402
from pgcluster import postgres_cluster  # noqa: E402

FHIR_SERVER = str(Path(sys.executable).parent / "fhir-server")
PATIENT_SHARE = 40  # one Patient per 40 resources


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB (Linux /proc)."""
    out = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def write_ndjson(directory: Path, count: int, seed: int = 1) -> None:
    """Patients then Observations, ids kept, in files of 100,000 lines (the loader splits them further)."""
    n_patients = max(1, count // PATIENT_SHARE)
    people = patients(n_patients, seed)
    ids = [f"p{n:07d}" for n in range(n_patients)]
    with open(directory / "Patient.ndjson", "wb") as f:
        for pid, resource in zip(ids, people, strict=True):
            f.write(json.dumps({**resource, "id": pid}).encode() + b"\n")
    total = count - n_patients
    size, batches_per_file = 1000, 100
    handle = None
    for batch in range((total + size - 1) // size):
        if batch % batches_per_file == 0:
            if handle is not None:
                handle.close()
            handle = open(directory / f"Observation-{batch // batches_per_file}.ndjson", "wb")
        for i, resource in enumerate(observation_batch(ids, seed=seed, batch=batch, size=size, total=total)):
            handle.write(json.dumps({**resource, "id": f"o{batch * size + i:08d}"}).encode() + b"\n")
    if handle is not None:
        handle.close()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, response.headers, response.read()


def run(count: int, backend: str, workdir: Path, database_url: str) -> dict:
    env = {"FHIR_DATABASE_URL": database_url, "FHIR_DATA_DIR": str(workdir / "data"),
           "FHIR_SQLITE_SYNCHRONOUS": "NORMAL"}
    source = workdir / "in"
    source.mkdir()
    started = time.perf_counter()
    write_ndjson(source, count)
    print(f"generated {count:,} resources in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    started = time.perf_counter()
    load = subprocess.run([FHIR_SERVER, "load", "--quiet", "--workers", "2", "--rejects", str(workdir / "rejects"),
                           str(source)], env={**os.environ, **env}, capture_output=True, text=True)
    if load.returncode != 0:
        raise SystemExit(f"load failed: {load.stderr[-2000:]}")
    load_s = time.perf_counter() - started
    print(f"loaded in {load_s:.0f} s ({count / load_s:,.0f} resources/s)", file=sys.stderr)
    server = Server(workdir, 1, {k: v for k, v in env.items() if k != "FHIR_DATA_DIR"})
    try:
        server.wait_ready()
        base = f"http://{HOST}:{server.port}"
        pid = server.process.pid
        before = memory_kib(pid)
        started = time.perf_counter()
        _, headers, _ = get(f"{base}/$export", {"Prefer": "respond-async"})
        status_url = headers["Content-Location"]
        samples: dict[str, int] = {}
        while True:
            code, headers, body = get(status_url)
            if code == 200:
                break
            match = re.match(r"(\d+)%", headers.get("X-Progress", ""))
            percent = int(match[1]) if match else 0
            for mark in (10, 50):
                if percent >= mark and f"{mark}%" not in samples:
                    samples[f"{mark}%"] = memory_kib(pid)["VmRSS"]
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        after = memory_kib(pid)
        samples["100%"] = after["VmRSS"]
        manifest = json.loads(body)
        exported = sum(item["count"] for item in manifest["output"])
        files = list((workdir / "data" / "bulk").rglob("*.ndjson"))
        return {"backend": backend, "resources": count, "exported": exported, "export_s": round(seconds, 1),
                "resources_per_s": round(exported / seconds), "load_resources_per_s": round(count / load_s),
                "output_mib": round(sum(f.stat().st_size for f in files) / 2**20, 1),
                "rss_mib": {"before": round(before["VmRSS"] / 1024, 1),
                            **{k: round(v / 1024, 1) for k, v in samples.items()}},
                "peak_rss_mib": round(after["VmHWM"] / 1024, 1), "files": len(manifest["output"])}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="resources to generate and export")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with ExitStack() as stack:
        workdir = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-export-")))
        workdir.mkdir(parents=True, exist_ok=True)
        url = stack.enter_context(postgres_cluster()) if args.backend == "postgresql" else ""
        result = run(args.count, args.backend, workdir, url)
    if args.json:
        print(json.dumps(result))
        return
    rss = result["rss_mib"]
    print(f"{result['backend']}: exported {result['exported']:,} of {result['resources']:,} resources in "
          f"{result['export_s']} s = {result['resources_per_s']:,} resources/s ({result['output_mib']} MiB NDJSON, "
          f"{result['files']} files)")
    print("server RSS (MiB): " + ", ".join(f"{k} {v}" for k, v in rss.items())
          + f"; peak {result['peak_rss_mib']}")


if __name__ == "__main__":
    main()
