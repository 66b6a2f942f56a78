"""How a store gets its layout. Migration 10 on a store written before shard_key existed: the column is added
to resources, history and every search index table and computed for the rows already there, so that a server
upgraded in place holds the same values as one that wrote them itself (both backends; the store is made old
by dropping the column and the migration's record from a store the server wrote). FHIR_DB_PARTITIONS: refused
where it cannot apply, and without effect on a database that already has its tables."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import BACKENDS, _fresh_database_env, run_sql, start_server, stop_server
from test_compartment_key import assert_rows_keyed, new_patient, observation

from fhir_server.store.schema import SEARCH_TABLES, resource_versions, resources

TABLES = [resources, resource_versions, *SEARCH_TABLES.values()]


def rows(server, table) -> list[tuple]:
    """Every row, columns by name (an added column comes last in the database), in a stable order."""
    return sorted(run_sql(server, f"SELECT {', '.join(c.name for c in table.columns)} FROM {table.name}"), key=repr)


def stop(server) -> None:
    server.process.terminate()
    server.process.wait(timeout=15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_upgraded_store_gets_the_shard_key_of_every_row_computed(request, backend, tmp_path):
    env = _fresh_database_env(request, backend)
    server = start_server(env, data_dir=tmp_path / "data")
    server.database_url = env["FHIR_DATABASE_URL"]
    try:
        with httpx.Client(base_url=server.base_url, timeout=30,
                          headers={"Content-Type": "application/fhir+json"}) as client:
            first, second = new_patient(client), new_patient(client)
            moved = client.post("/Observation", json=observation(first)).json()["id"]
            assert client.put(f"/Observation/{moved}", json={**observation(second), "id": moved}).status_code == 200
            gone = client.post("/Observation", json=observation(first)).json()["id"]
            assert client.delete(f"/Observation/{gone}").status_code in (200, 204)
            org = client.post("/Organization", json={"resourceType": "Organization", "name": "Xiaba clinic"}).json()
        written = [("Patient", first), ("Patient", second), ("Observation", moved), ("Observation", gone),
                   ("Organization", org["id"])]
        expected = {table.name: rows(server, table) for table in TABLES}
        stop(server)

        for table in TABLES:  # back to the schema before migration 10
            run_sql(server, f"ALTER TABLE {table.name} DROP COLUMN shard_key")
        run_sql(server, "DELETE FROM schema_migrations WHERE version = 10")

        server = start_server(env, data_dir=tmp_path / "data")
        server.database_url = env["FHIR_DATABASE_URL"]
        assert run_sql(server, "SELECT version FROM schema_migrations WHERE version = 10") == [(10,)]
        for table in TABLES:
            assert rows(server, table) == expected[table.name], table.name
        for resource_type, resource_id in written:
            assert_rows_keyed(server, resource_type, resource_id)
        with httpx.Client(base_url=server.base_url, timeout=30,
                          headers={"Content-Type": "application/fhir+json"}) as client:
            found = client.get("/Observation", params={"subject": f"Patient/{second}"}).json()
            assert [e["resource"]["id"] for e in found["entry"]] == [moved]
            assert client.put(f"/Observation/{moved}", json={**observation(first), "id": moved}).status_code == 200
        assert_rows_keyed(server, "Observation", moved)
    finally:
        stop(server)
        shutil.rmtree(tmp_path / "data", ignore_errors=True)


@pytest.mark.parametrize(("value", "message"), [
    ("4", "FHIR_DB_PARTITIONS needs PostgreSQL (FHIR_DATABASE_URL); SQLite has no partitions"),
    ("-1", "FHIR_DB_PARTITIONS must be between 0 and 1024, not -1"),
    ("5000", "FHIR_DB_PARTITIONS must be between 0 and 1024, not 5000"),
])
def test_partitions_where_they_cannot_apply_stop_the_start(tmp_path, value, message):
    exe = Path(sys.executable).parent / "fhir-server"
    env = {**os.environ, "FHIR_DATABASE_URL": "", "FHIR_DB_PARTITIONS": value}
    run = subprocess.run([str(exe), "serve", "--port", "0", "--data-dir", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert message in run.stderr
    assert not (tmp_path / "fhir.sqlite3").exists()


def test_partitions_asked_of_an_existing_plain_database_leave_it_as_it_is(request):
    env = _fresh_database_env(request, "postgresql")
    server = start_server(env)
    server.database_url = env["FHIR_DATABASE_URL"]
    stop(server)
    server = start_server({**env, "FHIR_DB_PARTITIONS": "4"}, data_dir=server.data_dir)
    server.database_url = env["FHIR_DATABASE_URL"]
    try:
        assert run_sql(server, "SELECT count(*) FROM pg_partitioned_table") == [(0,)]
        assert any("FHIR_DB_PARTITIONS is set but this database was created with plain tables" in line
                   for line in server.log_lines())
        with httpx.Client(base_url=server.base_url, timeout=30,
                          headers={"Content-Type": "application/fhir+json"}) as client:
            patient = new_patient(client)
            assert client.get(f"/Patient/{patient}").status_code == 200
    finally:
        stop_server(server)
