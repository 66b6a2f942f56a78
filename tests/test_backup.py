"""`fhir-server backup` / `restore`: a backup taken while the server runs, restored into a fresh data
directory (and a fresh PostgreSQL database), gives back every version of every resource, working search
indexes and byte-identical DICOM files. Refusals leave the target untouched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from conftest import LAYOUTS, PARTITIONED, _fresh_database_env, run_sql, start_server, stop_server
from dicom_data import pydicom_file
from test_dicomweb import stow

STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "fhir-server"
    return subprocess.run([str(exe if exe.exists() else shutil.which("fhir-server")), *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def everything(client: httpx.Client) -> list[dict]:
    """Every version of every resource, newest first, from the system history."""
    entries, url = [], "/_history?_count=500"
    while url:
        page = client.get(url).json()
        entries += [{"fullUrl": e["fullUrl"].split("/", 3)[-1], "resource": e.get("resource"),
                     "request": e["request"], "etag": e["response"]["etag"]} for e in page.get("entry", [])]
        url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
    return entries


@pytest.fixture(scope="module", params=LAYOUTS)
def backed_up(request, tmp_path_factory):
    """A store with history, a deletion and a DICOM study, and its backup taken while the server ran."""
    env = _fresh_database_env(request)
    server = start_server(env)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30,
                          headers={"Content-Type": "application/fhir+json"}) as client:
            patient = client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Backupova"}]})
            pid = patient.json()["id"]
            client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": True,
                                                "name": [{"family": "Backupova"}]})
            gone = client.post("/Observation", json={"resourceType": "Observation", "status": "final",
                                                     "code": {"text": "x"}, "subject": {"reference": f"Patient/{pid}"}})
            client.delete(f"/Observation/{gone.json()['id']}")
            for i in range(30):
                code = {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}
                client.post("/Observation", json={"resourceType": "Observation", "status": "final", "code": code,
                                                  "subject": {"reference": f"Patient/{pid}"},
                                                  "valueQuantity": {"value": 60 + i}})
            dicom = pydicom_file("CT_small.dcm").read_bytes()
            assert stow(client, [dicom]).status_code == 200
            before = everything(client)
            out = tmp_path_factory.mktemp("backup") / "b1"
            result = cli("backup", str(out), "--data-dir", str(server.data_dir), "--quiet", env=env)
            assert result.returncode == 0, result.stderr
        yield {"out": out, "before": before, "pid": pid, "dicom": dicom,
               "backend": "sqlite" if request.param == "sqlite" else "postgresql",
               "request": request, "data_dir": server.data_dir, "env": env}
    finally:
        stop_server(server)


def test_restore_gives_back_every_version_index_and_file(backed_up):
    env = _fresh_database_env(backed_up["request"])
    data_dir = Path(tempfile.mkdtemp(prefix="fhir-restored-"))
    result = cli("restore", str(backed_up["out"]), "--data-dir", str(data_dir), "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    # every resource (the deleted Observation too) and the one DICOM file
    assert f"restored {len({e['fullUrl'] for e in backed_up['before']})} resources and 1 DICOM files" in result.stderr
    server = start_server(env, data_dir=data_dir)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            assert everything(client) == backed_up["before"]
            found = client.get("/Observation", params={"code": "http://loinc.org|8867-4", "value-quantity": "ge85",
                                                       "_summary": "count"}).json()
            assert found["total"] == 5  # the search index came back with the resources
            assert client.get(f"/Patient/{backed_up['pid']}/_history").json()["total"] == 2
            wado = client.get(f"/dicomweb/studies/{STUDY}", headers={"Accept": "multipart/related; "
                                                                                "type=application/dicom"})
            assert wado.status_code == 200 and backed_up["dicom"] in wado.content
            # the restored server keeps working: a new write lands after the restored history
            assert client.post("/Patient", json={"resourceType": "Patient"},
                               headers={"Content-Type": "application/fhir+json"}).status_code == 201
        if backed_up["request"].param == PARTITIONED:  # the layout came back with the rows
            server.database_url = env["FHIR_DATABASE_URL"]
            assert run_sql(server, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'resources'::regclass") == [
                (4,)]
    finally:
        stop_server(server)


def test_restore_refuses_a_store_that_holds_data(backed_up, tmp_path):
    result = cli("restore", str(backed_up["out"]), "--data-dir", str(backed_up["data_dir"]), "--quiet",
                 env=backed_up["env"])
    assert result.returncode == 1
    assert "already holds" in result.stderr
    other = tmp_path / "data"
    (other / "dicom").mkdir(parents=True)
    (other / "dicom" / "mine.dcm").write_bytes(b"not to be touched")
    result = cli("restore", str(backed_up["out"]), "--data-dir", str(other), "--quiet", env=backed_up["env"])
    assert result.returncode == 1 and "already holds DICOM files" in result.stderr
    assert [p.name for p in other.rglob("*")] == ["dicom", "mine.dcm"]


def test_backup_refuses_a_directory_that_is_not_empty(backed_up, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = cli("backup", str(tmp_path), "--quiet", env=backed_up["env"])
    assert result.returncode == 1 and "is not empty" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_restore_refuses_what_is_not_a_backup(backed_up, tmp_path):
    result = cli("restore", str(tmp_path), "--data-dir", str(tmp_path / "d"), "--quiet", env=backed_up["env"])
    assert result.returncode == 1 and "has no manifest.json" in result.stderr
    (tmp_path / "manifest.json").write_text("{not json")
    result = cli("restore", str(tmp_path), "--data-dir", str(tmp_path / "d"), "--quiet", env=backed_up["env"])
    assert result.returncode == 1 and "is not valid JSON" in result.stderr
    assert not (tmp_path / "d" / "dicom").exists()


def test_restore_refuses_a_backup_of_the_other_backend(backed_up, tmp_path):
    other = "sqlite" if backed_up["backend"] == "postgresql" else "postgresql"
    shutil.copytree(backed_up["out"], tmp_path / "b")
    manifest = (tmp_path / "b" / "manifest.json").read_text().replace(f'"{backed_up["backend"]}"', f'"{other}"')
    (tmp_path / "b" / "manifest.json").write_text(manifest)
    result = cli("restore", str(tmp_path / "b"), "--data-dir", str(tmp_path / "d"), "--quiet", env=backed_up["env"])
    assert result.returncode == 1 and f"is of a {other} store" in result.stderr
