"""The patient-compartment key on every stored row: the column a sharded (Citus) deployment distributes by.

Each way of writing (create, update, PATCH, transaction with urn:uuid references, `fhir-server load`) must
leave every current row and every history row of a patient's record carrying that patient's id, and
resources outside any patient's compartment none. The rows are read straight from the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import run_sql

FHIR_SERVER = str(Path(sys.executable).parent / "fhir-server")


def stored_keys(server, table: str, resource_type: str, resource_id: str) -> list[str | None]:
    """patient_key of the rows of one resource (history rows oldest first)."""
    order = " ORDER BY version_id" if table == "resource_versions" else ""
    rows = run_sql(server, f"SELECT patient_key FROM {table} WHERE resource_type = $1 AND id = $2{order}",
                   resource_type, resource_id)
    return [row[0] for row in rows]


@pytest.fixture(scope="module")
def patients(fresh_client):
    ids = [f"key-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for patient_id in ids:
        assert fresh_client.put(f"/Patient/{patient_id}", json={"resourceType": "Patient", "id": patient_id}
                                ).status_code == 201
    return ids


def observation(patient_id: str) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
            "subject": {"reference": f"Patient/{patient_id}"}}


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
