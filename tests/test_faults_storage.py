"""Storage faults really caused, on small tmpfs mounts: the DICOM blob store full or read-only (C-STORE
answers Out of Resources, leaves no partial file and no index row, and works again once there is
room) and the SQLite disk full (a clear 507, nothing half-written, the database intact and readable)."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import free_port, start_server, stop_server
from dicom_data import pydicom_file, send_unchanged

OUT_OF_RESOURCES = 0xA700


@contextmanager
def tiny_fs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_blob_store_full_or_read_only_refuses_the_instance_and_keeps_nothing():
    data_dir = Path(tempfile.mkdtemp(prefix="fhir-blobfault-"))
    dicom = pydicom_file("CT_small.dcm")  # 39 KB: more than the 16 KB the blob store is given
    with tiny_fs(data_dir / "dicom", "16k") as blobs:
        port = free_port()
        server = start_server({"FHIR_DATABASE_URL": "", "FHIR_DICOM_PORT": str(port)}, data_dir=data_dir)
        try:
            wait_for_port(port)
            with httpx.Client(base_url=server.base_url, timeout=30) as http:
                assert send_unchanged(port, dicom) == [OUT_OF_RESOURCES]
                assert files_under(blobs) == []  # no partial file, no leftover temporary
                assert http.get("/dicomweb/studies").json() == []
                assert http.get("/ImagingStudy", params={"_summary": "count"}).json()["total"] == 0
                remount(blobs, "size=1m,ro")  # room, but read-only
                assert send_unchanged(port, dicom) == [OUT_OF_RESOURCES]
                assert files_under(blobs) == []
                remount(blobs, "size=1m,rw")  # the fault is cleared: the same server stores it
                assert send_unchanged(port, dicom) == [0]
                assert len(files_under(blobs)) == 1
                assert len(http.get("/dicomweb/studies").json()) == 1
        finally:
            stop_server(server)


def test_sqlite_disk_full_is_a_clear_error_and_the_database_stays_intact():
    database_dir = Path(tempfile.mkdtemp(prefix="fhir-fulldisk-"))
    with tiny_fs(database_dir, "3m"):
        database = database_dir / "fhir.sqlite3"
        server = start_server({"FHIR_DATABASE_URL": f"sqlite:///{database}"})
        acknowledged, refused = [], None
        try:
            with httpx.Client(base_url=server.base_url, timeout=30,
                              headers={"Content-Type": "application/fhir+json"}) as http:
                for i in range(2000):
                    note = f"{i} " + "x" * 20000
                    answer = http.post("/Patient", json={"resourceType": "Patient", "text": {
                        "status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{note}</div>'}})
                    if answer.status_code != 201:
                        refused = answer
                        break
                    acknowledged.append(answer.json()["id"])
                assert refused is not None, "the 3 MB disk never filled"
                assert refused.status_code == 507, refused.text
                issue = refused.json()["issue"][0]
                assert "disk is full" in issue["diagnostics"] and "Traceback" not in refused.text
                assert len(acknowledged) > 10
                # reads go on while the disk is full, and every acknowledged write is there
                for resource_id in acknowledged[:: max(1, len(acknowledged) // 20)] + acknowledged[-1:]:
                    assert http.get(f"/Patient/{resource_id}").status_code == 200
                total = http.get("/Patient", params={"_summary": "count"}).json()["total"]
                assert total == len(acknowledged)
        finally:
            stop_server(server)
        with sqlite3.connect(database) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("SELECT count(*) FROM resources WHERE resource_type = 'Patient'").fetchone()[0] \
                == len(acknowledged)
