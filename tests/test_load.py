"""`fhir-server load`: NDJSON and Bundle files, rejects with reasons, resume, on both backends."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import BACKENDS, _create_database, start_server, stop_server

FHIR_SERVER = str(Path(sys.executable).parent / "fhir-server")


def _observation(i: int) -> dict:
    return {"resourceType": "Observation", "id": f"obs-{i}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/pat-{i % 7}"}, "effectiveDateTime": "2026-10-01T08:00:00Z",
            "valueQuantity": {"value": 60 + i % 40, "unit": "/min", "system": "http://unitsofmeasure.org",
                              "code": "/min"}}


@pytest.fixture(params=BACKENDS)
def target(request, tmp_path):
    """Environment for a loader run and a server over the same, empty store."""
    env = {"FHIR_DATA_DIR": str(tmp_path / "data"), "FHIR_DATABASE_URL": ""}
    if request.param == "postgresql":
        base = request.getfixturevalue("postgres_url")
        name = f"load_{uuid.uuid4().hex[:10]}"
        asyncio.run(_create_database(base, name))
        env["FHIR_DATABASE_URL"] = base.rsplit("/", 1)[0] + f"/{name}"
    return env


def _files(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    with open(src / "patients.ndjson", "w") as f:
        for i in range(7):
            f.write(json.dumps({"resourceType": "Patient", "id": f"pat-{i}", "gender": "female"}) + "\n")
    with open(src / "observations.ndjson", "w") as f:
        for i in range(2300):  # three units of 1,000 lines
            obs = _observation(i)
            if i == 1500:
                obs["status"] = 42  # invalid
            f.write(json.dumps(obs) + "\n")
        f.write("{this is not json\n")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:7d3c", "resource": {"resourceType": "Patient", "gender": "male",
                                                   "identifier": [{"system": "urn:test", "value": "B1"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "from a bundle"},
                      "subject": {"reference": "urn:uuid:7d3c"}}, "request": {"method": "POST", "url": "Observation"}}]}
    (src / "bundle.json").write_text(json.dumps(bundle))
    return src


def _load(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FHIR_SERVER, "load", "--quiet", "--workers", "2", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)


def test_load_reports_rejects_and_loads_the_rest(target, tmp_path):
    src = _files(tmp_path)
    rejects = tmp_path / "rejects.ndjson"
    run = _load(target, "--rejects", str(rejects), str(src))
    assert run.returncode == 3, run.stderr  # some entries were rejected
    assert "loaded 2308 resources, rejected 2" in run.stderr
    found = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert {(r["file"].rsplit("/", 1)[1], r["line"]) for r in found} == {("observations.ndjson", 1501),
                                                                         ("observations.ndjson", 2301)}
    invalid = next(r for r in found if r["line"] == 1501)
    assert invalid["outcome"]["issue"][0]["expression"] == ["Observation.status"]
    server = start_server({"FHIR_DATABASE_URL": target["FHIR_DATABASE_URL"]}, data_dir=Path(target["FHIR_DATA_DIR"]))
    try:
        with httpx.Client(base_url=server.base_url) as http:
            assert http.get("/Observation/obs-42").json()["subject"]["reference"] == "Patient/pat-0"
            assert http.get("/Observation/obs-1500").status_code == 404
            assert http.get("/Observation", params={"_summary": "count"}).json()["total"] == 2300
            assert http.get("/Observation", params={"subject": "pat-3", "_summary": "count"}).json()["total"] \
                == len([i for i in range(2300) if i % 7 == 3 and i != 1500])
            from_bundle = http.get("/Observation", params={"subject:Patient.identifier": "urn:test|B1"}).json()
            assert from_bundle["total"] == 1
    finally:
        stop_server(server)


def test_load_resumes_from_its_journal(target, tmp_path):
    src = _files(tmp_path)
    journal = tmp_path / "journal.txt"
    first = _load(target, "--journal", str(journal), "--rejects", str(tmp_path / "r.ndjson"), str(src))
    assert first.returncode == 3
    units = journal.read_text().splitlines()
    assert len(units) == 5  # patients, 3 observation chunks, the bundle
    journal.write_text("\n".join(units[:-1]) + "\n")  # as if the run died before its last unit
    again = _load(target, "--journal", str(journal), "--rejects", str(tmp_path / "r.ndjson"), str(src))
    assert "skipped 4 of 5 units" in again.stderr
    done = _load(target, "--journal", str(journal), "--rejects", str(tmp_path / "r.ndjson"), str(src))
    assert done.returncode == 0 and "loaded 0 resources" in done.stderr and "skipped 5 of 5" in done.stderr
