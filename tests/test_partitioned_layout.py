"""The distributed layout (FHIR_DB_PARTITIONS, store/distribution.py) on a real PostgreSQL: resources, history
and search index hash-partitioned by shard_key, the rules a Citus deployment imposes enforced the same way
(every unique key contains the distribution column; a row's distribution value is never updated).

A patient's record must stay in one partition through every kind of write, a move to another patient must
take every row along, and the uniqueness of an id, which no unique key spans any more, must hold against
concurrent writers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from conftest import PARTITIONED, pg_fetch, run_sql
from test_compartment_key import new_patient, observation

from fhir_server.model.compartment import shard_key
from fhir_server.search.custom import CustomParameters
from fhir_server.settings import Settings
from fhir_server.store import open_store
from fhir_server.store.distribution import DISTRIBUTED
from fhir_server.store.schema import SEARCH_TABLES

pytestmark = pytest.mark.parametrize("fresh_server", [PARTITIONED], indirect=True, scope="module")
FHIR_SERVER = str(Path(sys.executable).parent / "fhir-server")


def partitions_of(server, resource_type: str, resource_id: str) -> dict[str, set[str]]:
    """Partition suffix (p0, p1, ...) of every row of a resource, by table."""
    (pk,), = run_sql(server, "SELECT pk FROM resources WHERE resource_type = $1 AND id = $2",
                     resource_type, resource_id)
    where = {"resources": ("pk = $1", pk), "resource_versions": ("resource_type = $1 AND id = $2",
                                                                  resource_type, resource_id)}
    found = {}
    for table in DISTRIBUTED:
        condition, *args = where.get(table, ("res_pk = $1", pk))
        rows = run_sql(server, f"SELECT DISTINCT tableoid::regclass::text FROM {table} WHERE {condition}", *args)
        if rows:
            found[table] = {name.rsplit("_", 1)[1] for name, in rows}
    return found


def test_the_tables_are_hash_partitioned_and_every_unique_key_holds_the_distribution_column(fresh_server):
    layout = run_sql(fresh_server, "SELECT c.relname, p.partstrat::text, a.attname FROM pg_partitioned_table p"
                     " JOIN pg_class c ON c.oid = p.partrelid"
                     " JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]")
    assert {name: (strategy, column) for name, strategy, column in layout} == {
        name: ("h", "shard_key") for name in DISTRIBUTED}
    counts = run_sql(fresh_server, "SELECT inhparent::regclass::text, count(*) FROM pg_inherits GROUP BY 1")
    assert {name: n for name, n in counts if name in DISTRIBUTED} == {name: 4 for name in DISTRIBUTED}
    unique = run_sql(fresh_server, "SELECT i.indexrelid::regclass::text, c.relname,"
                     " array(SELECT attname FROM pg_attribute WHERE attrelid = i.indrelid AND attnum = ANY(i.indkey))"
                     " FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
                     " WHERE i.indisunique AND c.relkind = 'p'")
    assert {table for _, table, _ in unique} == {"resources", "resource_versions"}
    for index, _, columns in unique:
        assert "shard_key" in columns, index
    nullable = run_sql(fresh_server, "SELECT table_name FROM information_schema.columns"
                       " WHERE column_name = 'shard_key' AND is_nullable = 'YES'")
    assert nullable == []


def test_a_patients_record_lives_in_one_partition(fresh_server, fresh_client):
    patient = new_patient(fresh_client)
    written = [("Patient", patient)]
    for body in (observation(patient), {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                                        "subject": {"reference": f"Patient/{patient}"}}):
        answer = fresh_client.post(f"/{body['resourceType']}", json=body)
        assert answer.status_code == 201, answer.text
        written.append((body["resourceType"], answer.json()["id"]))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(patient, "systolic"), "request": {"method": "POST", "url": "Observation"}}]}
    answer = fresh_client.post("/", json=bundle)
    assert answer.status_code == 200, answer.text
    written.append(("Observation", answer.json()["entry"][0]["response"]["location"].split("/")[1]))
    places = set()
    for resource_type, resource_id in written:
        found = partitions_of(fresh_server, resource_type, resource_id)
        assert {"resources", "resource_versions"} < set(found)  # and index rows
        if resource_type != "Patient":
            assert "search_reference" in found
        for suffixes in found.values():
            places |= suffixes
    assert len(places) == 1, places
    expected = shard_key("Patient", patient, patient)
    assert run_sql(fresh_server, "SELECT DISTINCT shard_key FROM resources WHERE patient_key = $1", patient) == [
        (expected,)]


def test_moving_a_resource_to_another_patient_takes_every_row_along(fresh_server, fresh_client):
    patients = [new_patient(fresh_client) for _ in range(12)]
    homes = {p: partitions_of(fresh_server, "Patient", p)["resources"] for p in patients}
    first = patients[0]
    second = next(p for p in patients if homes[p] != homes[first])  # 12 patients: another partition (1 - 4^-11)
    obs = fresh_client.post("/Observation", json=observation(first)).json()
    (pk,), = run_sql(fresh_server, "SELECT pk FROM resources WHERE id = $1", obs["id"])
    answer = fresh_client.put(f"/Observation/{obs['id']}", json={**observation(second), "id": obs["id"]})
    assert answer.status_code == 200, answer.text
    now = partitions_of(fresh_server, "Observation", obs["id"])
    assert now["resources"] == homes[second]
    assert now["search_reference"] == now["search_token"] == homes[second]
    assert now["resource_versions"] == homes[first] | homes[second]  # each version where its patient was
    assert run_sql(fresh_server, "SELECT pk FROM resources WHERE id = $1", obs["id"]) == [(pk,)]
    assert fresh_client.get(f"/Observation/{obs['id']}").json()["subject"]["reference"] == f"Patient/{second}"
    for patient, total in ((first, 0), (second, 1)):
        found = fresh_client.get("/Observation", params={"subject": f"Patient/{patient}", "_id": obs["id"]}).json()
        assert found["total"] == total
    history = fresh_client.get(f"/Observation/{obs['id']}/_history").json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]


def test_an_update_that_would_change_a_rows_distribution_value_is_refused(fresh_server, fresh_client):
    """The guard that keeps the layout Citus-compatible: only delete-and-insert moves a row."""
    patient = new_patient(fresh_client)
    before = run_sql(fresh_server, "SELECT shard_key, version_id FROM resources WHERE id = $1", patient)
    for table, where in (("resources", "id = $1"), ("search_string", "res_pk = (SELECT pk FROM resources"
                                                                     " WHERE id = $1)")):
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="never updated"):
            asyncio.run(pg_fetch(fresh_server.database_url,
                                 f"UPDATE {table} SET shard_key = shard_key + 1 WHERE {where}", patient))
    assert run_sql(fresh_server, "SELECT shard_key, version_id FROM resources WHERE id = $1", patient) == before


def test_a_bulk_load_of_an_id_stored_for_another_patient_updates_it_and_adds_no_row(fresh_server, fresh_client,
                                                                                     tmp_path):
    """`fhir-server load` creates in bulk with the file's ids, and updates what exists: an id already stored
    under another patient (another shard_key, so no unique key sees it) must be found, then moved."""
    first, second = new_patient(fresh_client), new_patient(fresh_client)
    obs_id = f"taken-{uuid.uuid4().hex[:8]}"
    assert fresh_client.put(f"/Observation/{obs_id}", json={**observation(first), "id": obs_id}).status_code == 201
    before = run_sql(fresh_server, "SELECT count(*) FROM resources")
    path = tmp_path / "obs.ndjson"
    path.write_text(json.dumps({**observation(second, "loaded"), "id": obs_id}) + "\n")
    env = {**os.environ, "FHIR_DATA_DIR": str(fresh_server.data_dir), "FHIR_DATABASE_URL": fresh_server.database_url,
           "FHIR_TERMINOLOGY_LOAD": "false"}
    done = subprocess.run([FHIR_SERVER, "load", "--quiet", "--rejects", str(tmp_path / "rejects.ndjson"), str(path)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert run_sql(fresh_server, "SELECT patient_key, version_id FROM resources WHERE id = $1", obs_id) == [
        (second, 2)]
    assert run_sql(fresh_server, "SELECT count(*) FROM resources") == before
    assert fresh_client.get(f"/Observation/{obs_id}").json()["code"]["text"] == "loaded"


def test_a_reindex_from_a_lagging_scan_writes_each_resource_as_it_is_now(fresh_server, fresh_client):
    """Re-indexing after a SearchParameter change scans on the read side (a replica may lag): a resource
    moved to another patient since must get index rows from its current version, in its current partition."""
    first, second = new_patient(fresh_client), new_patient(fresh_client)
    obs = fresh_client.post("/Observation", json=observation(first)).json()["id"]

    async def reindex_after_the_move() -> int:
        store = open_store(Settings(database_url=fresh_server.database_url, terminology_load=False))
        try:
            stale = [row for row in await store.scan(["Observation"], 0, 100000) if row[2] == obs]
            answer = await asyncio.to_thread(fresh_client.put, f"/Observation/{obs}",
                                             json={**observation(second), "id": obs})
            assert answer.status_code == 200, answer.text
            scans = iter([stale, []])

            async def lagging_scan(resource_types, after_pk, limit):
                return next(scans)
            store.scan = lagging_scan
            return await CustomParameters(store).reindex(["Observation"])
        finally:
            await store.close()

    assert asyncio.run(reindex_after_the_move()) == 1
    (pk, key), = run_sql(fresh_server, "SELECT pk, shard_key FROM resources WHERE id = $1", obs)
    assert key == shard_key("Observation", obs, second)
    assert run_sql(fresh_server, "SELECT DISTINCT target_id, shard_key FROM search_reference WHERE res_pk = $1"
                   " AND param = 'subject'", pk) == [(second, key)]
    found = fresh_client.get("/Observation", params={"subject": f"Patient/{first}", "_id": obs}).json()
    assert found["total"] == 0


def test_index_rows_never_outlive_or_stray_from_their_resource(fresh_server):
    """Across everything this module wrote: every index row has a resource row with its pk and shard_key.
    (Runs last: it checks what the tests above wrote, moves and re-indexing included.)"""
    assert run_sql(fresh_server, "SELECT count(*) FROM resources")[0][0] > 20
    for table in SEARCH_TABLES.values():
        strays = run_sql(fresh_server, f"SELECT count(*) FROM {table.name} t WHERE NOT EXISTS (SELECT 1 FROM"
                         " resources r WHERE r.shard_key = t.shard_key AND r.pk = t.res_pk)")
        assert strays == [(0,)], table.name
