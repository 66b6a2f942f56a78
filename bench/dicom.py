#!/usr/bin/env python3
"""DICOM bench: instances/s into the server's Storage SCP and the delay until each study's ImagingStudy
is searchable, beside Orthanc receiving the same instances in the same run.

Run from the repository root with the package installed (e.g. in its virtualenv), dcmtk's `storescu`
and Orthanc (Debian packages `dcmtk`, `orthanc`) on the PATH or at /usr/sbin/Orthanc:

    python bench/dicom.py                                  # both backends and Orthanc, defaults below
    python bench/dicom.py --backend sqlite --rounds 1      # a quick run
    python bench/dicom.py --associations 1 --instances 1000 --studies 20 --json > dicom.json

The instances are generated once, before anything is timed: for each round, --studies fresh studies
(new Study/Series/SOP Instance UIDs, a new patient each) sharing --instances between them, split into
--series-per-study series. Most studies are copies of pydicom's CT_small.dcm (128x128 CT, 39 KB); every
--large-every-th study is MR made of examples_overlay.dcm (300x484, 322 KB), so bytes as well as counts
matter. Each study is sent with its own `storescu` association (as a modality sends a study), by
--associations senders in parallel.

Targets: the server (`fhir-server serve --dicom-port`, started by bench/crud.py's Server) on SQLite and on
a durable PostgreSQL cluster (tests/pgcluster.py, fsync on), and Orthanc from a generated configuration
(its own storage dir and ports, no authentication, loopback only, fsync of its storage on as by default).
All targets run at once and every round visits each of them in turn (order rotating), so a busy spell
on the machine falls on all of them rather than on one.

Per round and target it prints: instances/s over the wall time of the sending (first storescu start to
last exit), and, per study, the delay from its storescu's exit (the association released) until
  - the server: GET /ImagingStudy?identifier=urn:dicom:uid|urn:oid:<uid> returns it with every instance,
  - Orthanc: /tools/find (Level Study, StudyInstanceUID) finds it and it counts every instance,
polled every --poll-interval. Then medians over rounds and the server/Orthanc ratios. CPU is split as in
bench/crud.py (cores busy while sending: the target's processes, the SCP alone, storescu and this script,
PostgreSQL, other) and a round is flagged NOT QUIET when other processes used the CPU. Nothing here
asserts on speed: this is a measuring tool, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from crud import HOST, Server, cpu_snapshot, cpu_split, listening_pids  # noqa: E402  (one way of running a server)
from pgcluster import free_port, postgres_cluster  # noqa: E402

SMALL, LARGE = "CT_small.dcm", "examples_overlay.dcm"
CALLING_AE = "BENCHSCU"


STREAM = sys.stdout  # the human-readable report; stderr when --json owns stdout


def out(*args: Any) -> None:
    print(*args, file=STREAM, flush=True)


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Study:
    uid: str
    kind: str
    files: list[Path]
    size: int


def make_studies(out_dir: Path, label: str, studies: int, instances: int, series_per_study: int,
                 large_every: int) -> list[Study]:
    """`studies` new studies sharing `instances` instances, written as Part 10 files under out_dir."""
    sources = {kind: pydicom.dcmread(get_testdata_file(name)) for kind, name in (("CT", SMALL), ("MR", LARGE))}
    made = []
    for s in range(studies):
        kind = "MR" if large_every and s % large_every == large_every - 1 else "CT"
        ds = sources[kind]
        count = instances // studies + (s < instances % studies)
        study_uid = generate_uid()
        study_dir = out_dir / f"{label}-study{s:03d}"
        study_dir.mkdir(parents=True)
        ds.StudyInstanceUID = study_uid
        ds.PatientID = f"BENCH-{label}-{s:03d}"
        ds.PatientName = f"Bench^{label.title()}{s:03d}"
        ds.AccessionNumber = f"ACC{label[:6]}{s:03d}"
        ds.StudyDescription = f"{kind} bench study {s}"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = time.strftime("%Y%m%d")
        files: list[Path] = []
        series = max(1, min(series_per_study, count))
        for n in range(count):
            if n % -(-count // series) == 0:  # start the next series
                ds.SeriesInstanceUID = generate_uid()
                ds.SeriesNumber = n // -(-count // series) + 1
                ds.SeriesDescription = f"{kind} series {ds.SeriesNumber}"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = n + 1
            path = study_dir / f"{n:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        made.append(Study(study_uid, kind, files, sum(f.stat().st_size for f in files)))
    return made


# ---------------------------------------------------------------------------------------------
# Targets


class Target:
    """Something with a DICOM port whose stored studies can be looked up over HTTP."""

    name: str
    ae_title: str
    dicom_port: int
    pid: int           # root of the target's process tree, for the CPU split
    scp_pid: int | None
    db_pid: int | None = None
    http: httpx.Client

    def complete(self, study: Study) -> bool:
        """One poll: is the study searchable with all its instances?"""
        raise NotImplementedError

    def log_problems(self) -> list[str]:
        return []


class FhirTarget(Target):
    def __init__(self, backend: str, server: Server, db_pid: int | None):
        self.name = f"server/{backend}"
        self.server = server
        self.ae_title = "ALLIANCE"
        self.dicom_port = server.dicom_port
        self.pid = server.process.pid
        self.scp_pid = server.dicom_pid()
        self.db_pid = db_pid
        self.http = httpx.Client(base_url=f"http://{HOST}:{server.port}", timeout=30,
                                 headers={"Accept": "application/fhir+json"})

    def complete(self, study: Study) -> bool:
        response = self.http.get("/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study.uid}"})
        response.raise_for_status()
        return any(e["resource"].get("numberOfInstances") == len(study.files)
                   for e in response.json().get("entry", []))

    def log_problems(self) -> list[str]:
        summary = self.server.log_summary()
        lines = [f"{count} x {text}" for text, count in summary["warnings_errors"].items()]
        return lines + [f"non-JSON: {text}" for text in summary["non_json_samples"][:5]]


class Orthanc(Target):
    """Orthanc started from a generated configuration file alone (no /etc/orthanc)."""

    def __init__(self, executable: str, workdir: Path, env: dict[str, str]):
        self.name = "orthanc"
        self.ae_title = "ORTHANC"
        self.dicom_port, self.http_port = free_port(), free_port()
        self.scp_pid = None
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "bench", "StorageDirectory": str(workdir / "storage"), "IndexDirectory": str(workdir / "index"),
            "DicomAet": self.ae_title, "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "DicomCheckCalledAet": False, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "HttpServerEnabled": True, "DicomServerEnabled": True, "Plugins": [], "SaveJobs": False,
            "StorageCompression": False,
        }
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = workdir / "orthanc.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([executable, str(self.config_path)], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, start_new_session=True,
                                            env={**os.environ, **env})
        self.pid = self.process.pid
        self.http = httpx.Client(base_url=f"http://{HOST}:{self.http_port}", timeout=30)
        self.version = "?"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                response = self.http.get("/system")
                if response.status_code == 200:
                    self.version = response.json().get("Version", "?")
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def complete(self, study: Study) -> bool:
        found = self.http.post("/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": study.uid}})
        found.raise_for_status()
        ids = found.json()
        if not ids:
            return False
        statistics_ = self.http.get(f"/studies/{ids[0]}/statistics")
        statistics_.raise_for_status()
        return int(statistics_.json().get("CountInstances", 0)) == len(study.files)

    def log_problems(self) -> list[str]:
        # Orthanc logs its start-up at warning level: errors only.
        return [line[:300] for line in self.log_path.read_text(errors="replace").splitlines() if line[:1] == "E"][:10]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ---------------------------------------------------------------------------------------------
# One round: send every study, poll each one from the moment its association closed


@dataclass
class Round:
    target: str
    instances: int
    bytes: int
    seconds: float
    rate: float
    delays_ms: list[float]
    unsearchable: int
    failures: list[str]
    cpu: dict[str, Any]
    load: str
    quiet: bool = True
    per_study: list[dict[str, Any]] = field(default_factory=list)


def _client_cpu() -> float:
    """CPU seconds of this script and of its finished children (the storescu runs)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def run_round(target: Target, studies: list[Study], associations: int, poll_interval: float,
              timeout: float, dcmtk_env: dict[str, str]) -> Round:
    work: queue.Queue[Study] = queue.Queue()
    for study in studies:
        work.put(study)
    started: dict[str, float] = {}
    exited: dict[str, float] = {}
    searchable: dict[str, float] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def sender() -> None:
        while True:
            try:
                study = work.get_nowait()
            except queue.Empty:
                return
            command = ["storescu", "-aet", CALLING_AE, "-aec", target.ae_title, HOST, str(target.dicom_port),
                       *map(str, study.files)]
            t0 = time.perf_counter()
            run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **dcmtk_env})
            t1 = time.perf_counter()
            with lock:
                started[study.uid], exited[study.uid] = t0, t1
                problems = [line for line in run.stderr.splitlines() if line[:2] in ("E:", "F:", "W:")]
                if run.returncode or problems:
                    failures.append(f"storescu exit {run.returncode}: {(problems or [run.stderr])[0][:200]}")

    def poller(done: threading.Event) -> None:
        while True:
            with lock:
                pending = [s for s in studies if s.uid in exited and s.uid not in searchable
                           and time.perf_counter() - exited[s.uid] < timeout]
            if not pending and done.is_set():
                return
            for study in pending:
                try:
                    ok = target.complete(study)
                except (httpx.HTTPError, ValueError) as exc:
                    ok = False
                    with lock:
                        if len(failures) < 20:
                            failures.append(f"poll: {type(exc).__name__}: {str(exc)[:200]}")
                if ok:
                    seen = time.perf_counter()
                    with lock:
                        searchable[study.uid] = seen
            time.sleep(poll_interval)

    senders_done = threading.Event()
    poll_thread = threading.Thread(target=poller, args=(senders_done,), daemon=True)
    senders = [threading.Thread(target=sender, daemon=True) for _ in range(max(1, associations))]
    before, client0 = cpu_snapshot(), _client_cpu()
    poll_thread.start()
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    after, client1 = cpu_snapshot(), _client_cpu()
    senders_done.set()
    poll_thread.join()

    seconds = max(exited.values()) - min(started.values())
    instances = sum(len(s.files) for s in studies)
    cpu = cpu_split(before, after, client1 - client0, seconds, target.pid, target.db_pid)
    if target.scp_pid and target.scp_pid in after["procs"] and target.scp_pid in before["procs"]:
        cpu["scp"] = round((after["procs"][target.scp_pid][2] - before["procs"][target.scp_pid][2]) / seconds, 2)
    delays = sorted((searchable[s.uid] - exited[s.uid]) * 1000 for s in studies if s.uid in searchable)
    result = Round(target.name, instances, sum(s.size for s in studies), seconds, instances / seconds, delays,
                   sum(1 for s in studies if s.uid not in searchable), failures, cpu, load_average())
    result.quiet = not (cpu.get("outside") or cpu.get("other", 0) >= 0.3)
    result.per_study = [{"kind": s.kind, "instances": len(s.files), "send_s": round(exited[s.uid] - started[s.uid], 3),
                         "delay_ms": round((searchable[s.uid] - exited[s.uid]) * 1000, 1) if s.uid in searchable
                         else None} for s in studies]
    return result


def describe(r: Round) -> str:
    delays = (f"searchable p50 {statistics.median(r.delays_ms):6.0f} ms  max {max(r.delays_ms):6.0f} ms"
              if r.delays_ms else "searchable: never")
    cpu = r.cpu
    text = (f"  {r.target:<18} {r.instances:>5} in {r.seconds:6.2f} s {r.rate:7.1f} inst/s"
            f" {r.bytes / r.seconds / 1e6:6.1f} MB/s  {delays}  cpu target {cpu.get('server', 0):.2f}"
            + (f" (scp {cpu['scp']:.2f})" if "scp" in cpu else "")
            + f" db {cpu.get('db', 0):.2f} client {cpu.get('client', 0):.2f} other {cpu.get('other', 0):.2f}"
            f"  load {r.load}")
    if r.unsearchable:
        text += f"\n{'':21}{r.unsearchable} studies NOT searchable with all instances within the timeout"
    if not r.quiet:
        named = ", ".join(cpu.get("outside", [])) or "none still running"
        text += (f"\n{'':21}NOT QUIET? {cpu.get('other', 0):.2f} cores of kernel work or other processes;"
                 f" named outside this benchmark: {named}")
    for failure in r.failures[:3]:
        text += f"\n{'':21}FAILURE {failure}"
    return text


def summarize(rounds: list[Round]) -> dict[str, Any]:
    return {"rate": statistics.median(r.rate for r in rounds),
            "delay_p50_ms": statistics.median(statistics.median(r.delays_ms) for r in rounds if r.delays_ms)
            if any(r.delays_ms for r in rounds) else None,
            "delay_max_ms": max((max(r.delays_ms) for r in rounds if r.delays_ms), default=None),
            "unsearchable": sum(r.unsearchable for r in rounds),
            "failures": sum(len(r.failures) for r in rounds),
            "noisy_rounds": sum(1 for r in rounds if not r.quiet),
            "cpu": {k: round(statistics.median(r.cpu.get(k, 0.0) for r in rounds), 2)
                    for k in ("server", "scp", "db", "client", "other")}}


# ---------------------------------------------------------------------------------------------
# The benchmark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backend", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    parser.add_argument("--instances", "-n", type=int, default=500, help="instances per round")
    parser.add_argument("--studies", type=int, default=10, help="studies per round (one association each)")
    parser.add_argument("--series-per-study", type=int, default=2)
    parser.add_argument("--large-every", type=int, default=5,
                        help=f"every K-th study is MR of {LARGE} (322 KB) instead of CT of {SMALL}; 0: CT only")
    parser.add_argument("--associations", type=int, default=2,
                        help="storescu processes sending at once (each sends one study per association)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of fresh studies; medians are reported")
    parser.add_argument("--workers", type=int, default=2, help="HTTP worker processes of the server")
    parser.add_argument("--poll-interval", type=float, default=0.01, help="seconds between searches")
    parser.add_argument("--timeout", type=float, default=30.0, help="give up on a study this long after its send")
    parser.add_argument("--orthanc", default=shutil.which("Orthanc") or "/usr/sbin/Orthanc",
                        help="Orthanc executable")
    parser.add_argument("--nagle", action="store_true",
                        help="leave Nagle's algorithm on in dcmtk (storescu, Orthanc), as Debian's build does unless "
                             "TCP_NODELAY=1 is set: each C-STORE then waits on 40 ms delayed ACKs")
    parser.add_argument("--no-orthanc", action="store_true", help="measure the server only")
    parser.add_argument("--log-level", default=None, help="FHIR_LOG_LEVEL for the server (default: its own)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary dirs (data, logs, instances)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout at the end")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    if set(backends) - {"sqlite", "postgresql"}:
        parser.error(f"unknown backend(s) in {args.backend!r}")
    if not 0 < args.studies <= args.instances:
        parser.error("--studies must be between 1 and --instances")
    if shutil.which("storescu") is None:
        parser.error("storescu not found: install dcmtk")
    use_orthanc = not args.no_orthanc
    global STREAM
    STREAM = sys.stderr if args.json else sys.stdout
    if use_orthanc and not Path(args.orthanc).exists():
        parser.error(f"Orthanc not found at {args.orthanc}: install the orthanc package or pass --no-orthanc")

    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="fhir-bench-dicom-"))
        if not args.keep:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        out(f"load average {load_average()} on {os.cpu_count()} cores; work dir {workdir}")

        # dcmtk disables Nagle only when TCP_NODELAY is set; else small PDU writes wait on delayed ACKs.
        dcmtk_env = {} if args.nagle else {"TCP_NODELAY": "1"}
        started = time.perf_counter()
        warmup = make_studies(workdir / "instances", "warmup", 1, 5, 1, 0)
        data = [make_studies(workdir / "instances", f"round{r}", args.studies, args.instances,
                             args.series_per_study, args.large_every) for r in range(1, args.rounds + 1)]
        first = data[0]
        mix = {k: sum(len(s.files) for s in first if s.kind == k) for k in ("CT", "MR")}
        out(f"generated {args.rounds} x {args.instances} instances in {time.perf_counter() - started:.1f} s:"
            f" per round {args.studies} studies x {args.series_per_study} series, {mix['CT']} CT ({SMALL})"
            f" + {mix['MR']} MR ({LARGE}), {sum(s.size for s in first) / 1e6:.1f} MB;"
            f" {args.associations} storescu associations at once, one per study;"
            f" dcmtk (storescu, Orthanc) {'with Nagle' if args.nagle else 'TCP_NODELAY=1'}")

        targets: list[Target] = []
        pg_url = None
        if "postgresql" in backends:
            out("starting a durable PostgreSQL cluster ...")
            pg_url = stack.enter_context(postgres_cluster(durable=True))
        postmaster = listening_pids(urlsplit(pg_url).port or 5432) if pg_url else []
        db_pid = postmaster[0] if postmaster else None
        for backend in backends:
            env = {"FHIR_DATABASE_URL": pg_url if backend == "postgresql" else ""}
            if args.log_level:
                env["FHIR_LOG_LEVEL"] = args.log_level
            (workdir / backend).mkdir()
            server = Server(workdir / backend, args.workers, env, dicom_port=free_port())
            stack.callback(server.stop)
            server.wait_ready()
            targets.append(FhirTarget(backend, server, db_pid))
            out(f"[server/{backend}] pid {server.process.pid} (scp pid {server.dicom_pid()}) http {server.port}"
                f" dicom {server.dicom_port}; log {server.log_path}")
        if use_orthanc:
            orthanc = Orthanc(args.orthanc, workdir / "orthanc", dcmtk_env)
            stack.callback(orthanc.stop)
            orthanc.wait_ready()
            targets.append(orthanc)
            out(f"[orthanc] {orthanc.version} pid {orthanc.pid} http {orthanc.http_port} dicom {orthanc.dicom_port};"
                f" config {orthanc.config_path}")

        for target in targets:  # untimed: first patient, Endpoint, code paths and caches
            warm = run_round(target, warmup, 1, args.poll_interval, args.timeout, dcmtk_env)
            if warm.failures or warm.unsearchable:
                out(f"[{target.name}] warm-up failed:\n{describe(warm)}")
                for line in target.log_problems()[:10]:
                    out(f"    {line}")
                return 1

        rounds: dict[str, list[Round]] = {t.name: [] for t in targets}
        for r, studies in enumerate(data):
            idle0 = cpu_snapshot(with_processes=False)
            time.sleep(1.0)
            busy = cpu_snapshot(with_processes=False)["machine"] - idle0["machine"]
            out(f"round {r + 1}/{args.rounds}: machine busy before start {busy:.2f} of {os.cpu_count()} cores"
                + ("  (NOT QUIET: figures will be low and noisy)" if busy > 0.2 else "")
                + f", load average {load_average()}")
            for target in targets[r % len(targets):] + targets[:r % len(targets)]:  # rotate the order
                result = run_round(target, studies, args.associations, args.poll_interval, args.timeout, dcmtk_env)
                rounds[target.name].append(result)
                out(describe(result))

        summaries = {name: summarize(rs) for name, rs in rounds.items()}
        out(f"\nmedians of {args.rounds} rounds; {args.instances} instances/round in {args.studies} studies,"
            f" {args.associations} associations at once; server: {args.workers} HTTP workers, default flush"
            f" settings; load average now {load_average()} ({os.cpu_count()} cores)")
        for name, s in summaries.items():
            delay = (f"searchable p50 {s['delay_p50_ms']:6.0f} ms  max of all rounds {s['delay_max_ms']:6.0f} ms"
                     if s["delay_p50_ms"] is not None else "never searchable")
            scp = f" (scp {s['cpu']['scp']:.2f})" if name != "orthanc" else ""
            out(f"  {name:<18} {s['rate']:7.1f} inst/s  {delay}  cpu target {s['cpu']['server']:.2f}{scp}"
                f" db {s['cpu']['db']:.2f} client {s['cpu']['client']:.2f}"
                f" other {s['cpu']['other']:.2f}  noisy rounds {s['noisy_rounds']}"
                + (f"  FAILURES {s['failures']}" if s["failures"] else "")
                + (f"  UNSEARCHABLE {s['unsearchable']}" if s["unsearchable"] else ""))
        if "orthanc" in summaries:
            o = summaries["orthanc"]
            for name, s in summaries.items():
                if name == "orthanc":
                    continue
                delay = (f"; searchable p50 {s['delay_p50_ms'] / o['delay_p50_ms']:.1f}x Orthanc's"
                         if s["delay_p50_ms"] and o["delay_p50_ms"] else "")
                out(f"  {name} / orthanc: inst/s {s['rate'] / o['rate']:.2f}{delay}")
        for target in targets:
            problems = target.log_problems()
            if problems:
                out(f"  [{target.name}] log warnings/errors:")
                for line in problems[:10]:
                    out(f"    {line}")
        if args.json:
            print(json.dumps({"settings": vars(args), "summaries": summaries,
                              "rounds": {n: [vars(r) for r in rs] for n, rs in rounds.items()}}, indent=2,
                             default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
