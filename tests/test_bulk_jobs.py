"""Bulk jobs as jobs: cancel while running, and a poll that outlives a restart or a crash of the server
(the job resumes from its checkpoint, files hold every resource once). FHIR_BULK_MAX_RATE slows the
exports down enough to catch them running."""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from collections import Counter

import httpx
import pytest
from bulk_data import exported, kick_off, population, put_all, wait_for
from conftest import BACKENDS, RunningServer, _fresh_database_env, start_server, stop_server

RATE = 100
EXTRA = 120


class Restartable:
    def __init__(self, env: dict[str, str]):
        self.env = env
        self.server: RunningServer = start_server(env)
        self.logs: list[str] = []

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.base_url, timeout=30)

    def restart(self, how: signal.Signals) -> None:
        """Stop the server (SIGTERM: a clean shutdown; SIGKILL: a crash) and start it on the same data."""
        self.server.process.send_signal(how)
        self.server.process.wait(timeout=20)
        self.logs += self.server.log_lines()
        self.server = start_server(self.env, data_dir=self.server.data_dir)


@pytest.fixture(scope="module", params=BACKENDS)
def slow(request):
    env = {**_fresh_database_env(request), "FHIR_BULK_MAX_RATE": str(RATE), "FHIR_BULK_LEASE_S": "2"}
    running = Restartable(env)
    with running.client() as http:
        resources = population()
        resources += [{"resourceType": "Observation", "id": f"extra-{n}", "status": "final",
                       "code": {"text": "weight"}, "subject": {"reference": f"Patient/pt-{n % 12}"}}
                      for n in range(EXTRA)]
        put_all(http, resources)
    yield running
    stop_server(running.server)


def _progress(http: httpx.Client, status: str) -> int:
    response = http.get(status)
    assert response.status_code == 202, response.text
    progress = response.headers["X-Progress"]
    if progress == "accepted":  # not begun yet
        return 0
    match = re.match(r"(\d+)% \((\d+) resources\)$", progress)
    assert match, progress
    return int(match[1])


def _wait_until_running(http: httpx.Client, status: str) -> None:
    deadline = time.monotonic() + 10
    while _progress(http, status) < 10:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_cancel_stops_a_running_export(slow):
    with slow.client() as http:
        status = kick_off(http, "/$export")
        _wait_until_running(http, status)
        job = status.rsplit("/", 1)[1]
        directory = slow.server.data_dir / "bulk" / job
        assert directory.is_dir()
        assert http.delete(status).status_code == 202
        assert http.get(status).status_code == 404
        time.sleep(0.5)  # beyond the job's next checkpoint: it has stopped and written nothing more
        assert not directory.exists() and http.get(status).status_code == 404
        assert not [line for line in slow.server.log_lines() if '"level":"ERROR"' in line]


def _check_complete(http: httpx.Client, manifest: dict) -> None:
    files = exported(http, manifest)
    terminology = {"CodeSystem", "ValueSet", "ConceptMap", "NamingSystem", "StructureDefinition"}
    counts = {t: len(rs) for t, rs in files.items() if t not in terminology}  # loaded at start, not the test's
    assert sum(len(rs) for t, rs in files.items() if t in terminology) > 0
    assert counts == {"Organization": 3, "Practitioner": 1, "Patient": 12, "Encounter": 12,
                      "Observation": 48 + EXTRA, "Group": 1}
    ids = Counter((r["resourceType"], r["id"]) for rs in files.values() for r in rs)
    assert max(ids.values()) == 1  # nothing written twice by the resumed job


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "crash"])
def test_export_outlives_a_restart(slow, how):
    with slow.client() as http:
        status = kick_off(http, "/$export")
        _wait_until_running(http, status)
    slow.restart(how)
    with slow.client() as http:
        manifest = wait_for(http, status, timeout=30)
        _check_complete(http, manifest)
    assert any('"bulk job resumed"' in line for line in slow.server.log_lines())


def test_a_failing_export_reports_500_with_an_outcome(slow):
    """Files that vanish under a running export (a disk cleaned by hand) fail the job, not the server."""
    with slow.client() as http:
        status = kick_off(http, "/$export")
        _wait_until_running(http, status)
        shutil.rmtree(slow.server.data_dir / "bulk" / status.rsplit("/", 1)[1])
        deadline = time.monotonic() + 20
        while (response := http.get(status)).status_code == 202:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert response.status_code == 500
        issue = response.json()["issue"][0]
        assert issue["code"] == "exception" and issue["diagnostics"] == "The export failed: FileNotFoundError"
        assert http.get("/Patient/pt-1").status_code == 200  # the server carries on


def test_import_outlives_a_restart(slow):
    lines = "".join(json.dumps({"resourceType": "Observation", "id": f"imported-{n}", "status": "final",
                                "code": {"text": "pulse"}, "subject": {"reference": "Patient/pt-1"}}) + "\n"
                    for n in range(150))
    with slow.client() as http:
        status = kick_off(http, "/$import", method="POST", content=lines,
                          headers={"Content-Type": "application/fhir+ndjson"})
        deadline = time.monotonic() + 10
        while not (progress := http.get(status).headers.get("X-Progress", "")).startswith(("25 ", "50 ")):
            assert time.monotonic() < deadline, progress
            time.sleep(0.05)
    slow.restart(signal.SIGTERM)
    with slow.client() as http:
        manifest = wait_for(http, status, timeout=30)
        assert manifest["output"] == [{"type": "Resource", "inputUrl": "upload", "count": 150}]
        assert manifest["error"] == []
        found = http.get("/Observation", params={"code:text": "pulse", "_count": 200}).json()["entry"]
        assert len(found) == 150  # each line written once: the stop came after a checkpoint
        assert {e["resource"]["meta"]["versionId"] for e in found} == {"1"}
