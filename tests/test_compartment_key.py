"""The patient-compartment key on every stored row, and the distribution value (shard_key) derived from it.

Each way of writing (create, update, PATCH, delete, transaction with urn:uuid references, `fhir-server load`)
must leave every current row and every history row of a patient's record carrying that patient's id, and
resources outside any patient's compartment none; and every row of a resource (its current row, its search
index rows) the shard_key of that patient, so that the record stays together when the tables are split by
it. The rows are read straight from the database, on both backends and on the partitioned layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import on_every_layout, run_sql

from fhir_server.model.compartment import shard_key
from fhir_server.store.schema import SEARCH_TABLES

FHIR_SERVER = str(Path(sys.executable).parent / "fhir-server")
pytestmark = on_every_layout("fresh_server")


def stored_keys(server, table: str, resource_type: str, resource_id: str) -> list[str | None]:
    """patient_key of the rows of one resource (history rows oldest first)."""
    order = " ORDER BY version_id" if table == "resource_versions" else ""
    rows = run_sql(server, f"SELECT patient_key FROM {table} WHERE resource_type = $1 AND id = $2{order}",
                   resource_type, resource_id)
    keys = [row[0] for row in rows]
    assert_rows_keyed(server, resource_type, resource_id)
    return keys


def assert_rows_keyed(server, resource_type: str, resource_id: str) -> None:
    """Every row of the resource carries the shard_key of its patient: the current row and its index rows
    that of the current patient_key, each history row that of its own version's."""
    (pk, patient, key), = run_sql(server, "SELECT pk, patient_key, shard_key FROM resources"
                                  " WHERE resource_type = $1 AND id = $2", resource_type, resource_id)
    assert key == shard_key(resource_type, resource_id, patient)
    index_keys = set()
    for table in SEARCH_TABLES.values():
        index_keys |= {row[0] for row in run_sql(server, f"SELECT shard_key FROM {table.name} WHERE res_pk = $1", pk)}
    assert index_keys <= {key}, f"index rows of {resource_type}/{resource_id} keyed apart from it"
    for patient, key in run_sql(server, "SELECT patient_key, shard_key FROM resource_versions"
                                " WHERE resource_type = $1 AND id = $2", resource_type, resource_id):
        assert key == shard_key(resource_type, resource_id, patient)


@pytest.fixture(scope="module")
def patients(fresh_client):
    ids = [f"key-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for patient_id in ids:
        assert fresh_client.put(f"/Patient/{patient_id}", json={"resourceType": "Patient", "id": patient_id}
                                ).status_code == 201
    return ids


def observation(patient_id: str, text: str = "pulse") -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": text},
            "subject": {"reference": f"Patient/{patient_id}"}, "valueQuantity": {"value": 72, "unit": "/min"}}


def new_patient(client: httpx.Client) -> str:
    answer = client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Wang"}]})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def test_a_patient_and_what_is_about_them_carry_the_patients_id(fresh_server, fresh_client, patients):
    first = patients[0]
    assert stored_keys(fresh_server, "resources", "Patient", first) == [first]
    created = {
        "Observation": observation(first),
        "Encounter": {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                      "subject": {"reference": f"Patient/{first}"}},
        "AllergyIntolerance": {"resourceType": "AllergyIntolerance", "patient": {"reference": f"Patient/{first}"}},
        "Task": {"resourceType": "Task", "status": "requested", "intent": "order",
                 "for": {"reference": f"Patient/{first}"}},
        "Coverage": {"resourceType": "Coverage", "status": "active", "beneficiary": {"reference": f"Patient/{first}"},
                     "payor": [{"display": "county scheme"}]},
    }
    for resource_type, body in created.items():
        answer = fresh_client.post(f"/{resource_type}", json=body)
        assert answer.status_code == 201, answer.text
        resource_id = answer.json()["id"]
        assert stored_keys(fresh_server, "resources", resource_type, resource_id) == [first], resource_type
        assert stored_keys(fresh_server, "resource_versions", resource_type, resource_id) == [first], resource_type
    org = fresh_client.post("/Organization", json={"resourceType": "Organization", "name": "Xiaba clinic"}).json()
    assert stored_keys(fresh_server, "resources", "Organization", org["id"]) == [None]


def test_a_write_that_moves_a_resource_to_another_patient_moves_its_key(fresh_server, fresh_client, patients):
    first, second = patients
    obs = fresh_client.post("/Observation", json=observation(first)).json()
    moved = {**observation(second), "id": obs["id"]}
    assert fresh_client.put(f"/Observation/{obs['id']}", json=moved).status_code == 200
    assert stored_keys(fresh_server, "resources", "Observation", obs["id"]) == [second]
    patch = [{"op": "replace", "path": "/subject/reference", "value": f"Patient/{first}"}]
    answer = fresh_client.patch(f"/Observation/{obs['id']}", content=json.dumps(patch),
                                headers={"Content-Type": "application/json-patch+json"})
    assert answer.status_code == 200, answer.text
    assert stored_keys(fresh_server, "resources", "Observation", obs["id"]) == [first]
    # history keeps each version's own key
    assert stored_keys(fresh_server, "resource_versions", "Observation", obs["id"]) == [first, second, first]
    # the search index moved with it: found under the patient it is about now, not the one before
    found = fresh_client.get("/Observation", params={"subject": f"Patient/{second}", "_id": obs["id"]}).json()
    assert found["total"] == 0
    found = fresh_client.get("/Observation", params={"subject": f"Patient/{first}", "_id": obs["id"]}).json()
    assert found["total"] == 1


def test_a_deleted_resource_stays_in_its_patients_record(fresh_server, fresh_client, patients):
    first = patients[0]
    obs = fresh_client.post("/Observation", json=observation(first)).json()
    (pk_before,), = run_sql(fresh_server, "SELECT pk FROM resources WHERE id = $1", obs["id"])
    assert fresh_client.delete(f"/Observation/{obs['id']}").status_code in (200, 204)
    assert stored_keys(fresh_server, "resources", "Observation", obs["id"]) == [first]
    assert stored_keys(fresh_server, "resource_versions", "Observation", obs["id"]) == [first, first]
    assert run_sql(fresh_server, "SELECT pk FROM resources WHERE id = $1", obs["id"]) == [(pk_before,)]
    # brought back for the other patient: moved, under the same row key
    revived = {**observation(patients[1]), "id": obs["id"]}
    assert fresh_client.put(f"/Observation/{obs['id']}", json=revived).status_code == 201
    assert stored_keys(fresh_server, "resources", "Observation", obs["id"]) == [patients[1]]
    assert run_sql(fresh_server, "SELECT pk FROM resources WHERE id = $1", obs["id"]) == [(pk_before,)]


def test_a_transaction_keys_its_entries_by_the_patient_it_creates(fresh_server, fresh_client):
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": patient_urn, "resource": {"resourceType": "Patient"},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {**observation("x"), "subject": {"reference": patient_urn}},
         "request": {"method": "POST", "url": "Observation"}}]}
    answer = fresh_client.post("/", json=bundle)
    assert answer.status_code == 200, answer.text
    locations = [e["response"]["location"].split("/_history")[0].split("/")[-2:] for e in answer.json()["entry"]]
    (_, patient_id), (_, obs_id) = locations
    assert stored_keys(fresh_server, "resources", "Observation", obs_id) == [patient_id]
    assert stored_keys(fresh_server, "resources", "Patient", patient_id) == [patient_id]


def test_a_bulk_load_keys_what_it_writes(fresh_server, patients, tmp_path):
    obs_id = f"loaded-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "obs.ndjson"
    path.write_text(json.dumps({**observation(patients[1]), "id": obs_id}) + "\n")
    env = {"FHIR_DATA_DIR": str(fresh_server.data_dir), "FHIR_DATABASE_URL": fresh_server.database_url,
           "FHIR_TERMINOLOGY_LOAD": "false"}
    command = [FHIR_SERVER, "load", "--quiet", "--rejects", str(tmp_path / "rejects.ndjson"), str(path)]
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert stored_keys(fresh_server, "resources", "Observation", obs_id) == [patients[1]]


def test_a_bulk_load_naming_one_id_twice_for_two_patients_writes_one_resource(fresh_server, patients, tmp_path):
    """Within one batch too: under two patients the two rows would have two shard_keys (two partitions)."""
    obs_id = f"twice-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "twice.ndjson"
    path.write_text("".join(json.dumps({**observation(p), "id": obs_id}) + "\n" for p in patients))
    env = {"FHIR_DATA_DIR": str(fresh_server.data_dir), "FHIR_DATABASE_URL": fresh_server.database_url,
           "FHIR_TERMINOLOGY_LOAD": "false"}
    command = [FHIR_SERVER, "load", "--quiet", "--rejects", str(tmp_path / "rejects.ndjson"), str(path)]
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert run_sql(fresh_server, "SELECT patient_key, version_id FROM resources WHERE id = $1", obs_id) == [
        (patients[1], 2)]
    assert stored_keys(fresh_server, "resource_versions", "Observation", obs_id) == patients


def test_concurrent_writers_of_one_id_for_different_patients_make_one_resource(fresh_server, fresh_client):
    """Each PUT after the first moves the resource to another patient: on the partitioned layout no unique key
    spans the partitions and a move deletes and inserts the row, yet there must be one row, every version kept."""
    patients = [new_patient(fresh_client) for _ in range(8)]
    for _ in range(5):
        obs_id = f"race-{uuid.uuid4().hex[:10]}"

        def put(patient: str, obs_id: str = obs_id) -> int:
            with httpx.Client(base_url=fresh_server.base_url, timeout=30,
                              headers={"Content-Type": "application/fhir+json"}) as http:
                return http.put(f"/Observation/{obs_id}", json={**observation(patient), "id": obs_id}).status_code

        with ThreadPoolExecutor(len(patients)) as pool:
            codes = list(pool.map(put, patients))
        assert sorted(codes) == [200] * (len(patients) - 1) + [201], codes
        assert run_sql(fresh_server, "SELECT count(*), max(version_id) FROM resources WHERE id = $1",
                       obs_id) == [(1, len(patients))]
        assert run_sql(fresh_server, "SELECT count(*) FROM resource_versions WHERE id = $1",
                       obs_id) == [(len(patients),)]
        assert_rows_keyed(fresh_server, "Observation", obs_id)

