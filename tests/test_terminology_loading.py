"""The definitions in terminology/ are loaded on start-up once: two workers starting together and a
restart over the same database create no duplicates and no new versions. FHIR_TERMINOLOGY_DIR points
elsewhere; a missing folder stops the start with a message."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import BACKENDS, _fresh_database_env, start_server, stop_server

SHIPPED = Path(__file__).resolve().parent.parent / "terminology"
EXTRA = {
    "resourceType": "CodeSystem",
    "id": "clinic-extra",
    "url": "http://clinic.example/extra",
    "version": "1",
    "status": "active",
    "content": "complete",
    "concept": [{"code": "x", "display": "X"}],
}


def _state(base: str) -> dict[str, list[tuple[str, str]]]:
    """(id, versionId) of every definition, by type."""
    out = {}
    with httpx.Client(base_url=base, timeout=30) as http:
        for rt in ("CodeSystem", "ValueSet", "ConceptMap", "NamingSystem", "StructureDefinition"):
            bundle = http.get(f"/{rt}", params={"_count": 500, "_elements": "id"}).json()
            out[rt] = sorted((e["resource"]["id"], e["resource"]["meta"]["versionId"]) for e in bundle.get("entry", []))
    return out


@pytest.fixture(params=BACKENDS)
def database_env(request):
    return _fresh_database_env(request)


def test_loaded_once_by_two_workers(database_env, tmp_path):
    """Both workers load at start-up: the first writes every definition, the second (as any restart
    does) finds them all and writes nothing."""
    folder = tmp_path / "terminology"
    shutil.copytree(SHIPPED, folder)
    (folder / "CodeSystem-clinic-extra.json").write_text(json.dumps(EXTRA))
    server = start_server({**database_env, "FHIR_TERMINOLOGY_DIR": str(folder)}, workers=2)
    try:
        state = _state(server.base_url)
        deadline = time.monotonic() + 30
        while len(loads := [json.loads(x) for x in server.log_lines() if "terminology loaded" in x]) < 2:
            assert time.monotonic() < deadline, server.log_lines()[-5:]
            time.sleep(0.2)
    finally:
        stop_server(server)
    files = {rt: len(list(folder.rglob(f"{rt}-*.json"))) for rt in state}
    assert {rt: len(rows) for rt, rows in state.items()} == files
    assert all(version == "1" for rows in state.values() for _, version in rows)
    assert ("clinic-extra", "1") in state["CodeSystem"]
    total = sum(files.values())
    assert sorted((line["written"], line["existing"]) for line in loads) == [(0, total), (total, 0)]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "terminology folder .* is missing"),
        ("{not json", "CodeSystem-broken.json is not JSON"),
    ],
)
def test_a_missing_folder_or_broken_file_stops_the_start(tmp_path, content, message):
    folder = tmp_path / "terminology"
    if content is not None:
        folder.mkdir()
        (folder / "CodeSystem-broken.json").write_text(content)
    env = {**os.environ, "FHIR_TERMINOLOGY_DIR": str(folder), "FHIR_DICOM_PORT": "0"}
    done = subprocess.run(
        [_executable(), "serve", "--port", "1", "--data-dir", str(tmp_path / "data")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert re.search(message, done.stderr), done.stderr


def _executable() -> str:
    beside = Path(sys.executable).parent / "fhir-server"
    return str(beside) if beside.exists() else shutil.which("fhir-server")
