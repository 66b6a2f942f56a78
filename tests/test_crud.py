"""Create, read, vread, update and delete over real HTTP, on both backends."""

from __future__ import annotations

import uuid

from conftest import newest_history_entry, on_every_layout

pytestmark = on_every_layout("server", scope="session")


def bp_observation(patient: str = "Patient/p1", systolic: int = 120) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": patient},
        "effectiveDateTime": "2026-11-01T08:30:00+08:00",
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": systolic, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                               "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 80, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                               "code": "mm[Hg]"}},
        ],
    }


def test_create_assigns_id_and_version(client, server):
    body = {"resourceType": "Patient", "id": "client-chosen", "name": [{"family": "Wang", "given": ["Li"]}],
            "meta": {"tag": [{"system": "urn:test", "code": "t1"}]}}
    r = client.post("/Patient", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["id"] != "client-chosen"  # the server ignores a client id on create
    assert created["meta"]["versionId"] == "1"
    assert created["meta"]["tag"] == [{"system": "urn:test", "code": "t1"}]  # client meta kept
    assert created["name"] == body["name"]
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"] == f"{server.base_url}/Patient/{created['id']}/_history/1"
    assert r.headers["last-modified"].endswith("GMT")
    assert r.headers["content-type"] == "application/fhir+json; charset=utf-8"


def test_read_returns_current_version(client):
    created = client.post("/Observation", json=bp_observation()).json()
    r = client.get(f"/Observation/{created['id']}")
    assert r.status_code == 200
    assert r.json() == created
    assert r.headers["etag"] == 'W/"1"'


def test_update_creates_new_version(client, server):
    created = client.post("/Observation", json=bp_observation()).json()
    changed = {**created, "status": "amended"}
    r = client.put(f"/Observation/{created['id']}", json=changed)
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "2"
    assert r.json()["status"] == "amended"
    assert r.headers["etag"] == 'W/"2"'
    assert r.headers["location"].endswith(f"/Observation/{created['id']}/_history/2")
    assert r.json()["meta"]["lastUpdated"] >= created["meta"]["lastUpdated"]


def test_update_with_client_id_creates(client):
    rid = f"resident-{uuid.uuid4().hex[:12]}"
    r = client.put(f"/Patient/{rid}", json={"resourceType": "Patient", "id": rid, "gender": "female"})
    assert r.status_code == 201, r.text
    assert r.json()["meta"]["versionId"] == "1"
    assert client.get(f"/Patient/{rid}").json()["gender"] == "female"


def test_vread_every_version(client):
    created = client.post("/Observation", json=bp_observation(systolic=130)).json()
    rid = created["id"]
    client.put(f"/Observation/{rid}", json={**bp_observation(systolic=150), "id": rid})
    v1 = client.get(f"/Observation/{rid}/_history/1")
    v2 = client.get(f"/Observation/{rid}/_history/2")
    assert v1.status_code == v2.status_code == 200
    assert v1.json()["component"][0]["valueQuantity"]["value"] == 130
    assert v2.json()["component"][0]["valueQuantity"]["value"] == 150
    assert v1.headers["etag"] == 'W/"1"' and v2.headers["etag"] == 'W/"2"'
    assert client.get(f"/Observation/{rid}/_history/3").status_code == 404
    assert client.get(f"/Observation/{rid}/_history/abc").status_code == 404


def test_delete_is_logical_and_gone(client):
    rid = client.post("/Patient", json={"resourceType": "Patient", "active": True}).json()["id"]
    r = client.delete(f"/Patient/{rid}")
    assert r.status_code == 200
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.headers["etag"] == 'W/"2"'
    gone = client.get(f"/Patient/{rid}")
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"
    assert client.get(f"/Patient/{rid}/_history/2").status_code == 410  # the deletion version
    assert client.get(f"/Patient/{rid}/_history/1").status_code == 200  # older versions stay readable
    # deleting again changes nothing
    before = newest_history_entry(client)
    again = client.delete(f"/Patient/{rid}")
    assert again.status_code == 200
    assert "already deleted" in again.json()["issue"][0]["diagnostics"]
    assert newest_history_entry(client) == before
    # an update brings it back as a new version
    back = client.put(f"/Patient/{rid}", json={"resourceType": "Patient", "id": rid, "active": False})
    assert back.status_code == 201
    assert back.json()["meta"]["versionId"] == "3"
    assert client.get(f"/Patient/{rid}").status_code == 200


def test_delete_unknown_is_404(client):
    before = newest_history_entry(client)
    r = client.delete("/Patient/never-existed-1")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"
    assert newest_history_entry(client) == before


def test_delete_prefer_minimal_is_204(client):
    rid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    r = client.delete(f"/Patient/{rid}", headers={"Prefer": "return=minimal"})
    assert r.status_code == 204 and r.content == b""


def test_every_r4_type_is_served(client):
    # A type that the R4B models lack (validated by the R4 JSON schema) and one that they cover.
    r = client.post("/MedicinalProduct", json={"resourceType": "MedicinalProduct",
                                               "name": [{"productName": "Aspirin 100 mg"}]})
    assert r.status_code == 201, r.text
    assert client.get(f"/MedicinalProduct/{r.json()['id']}").status_code == 200
    bad = client.post("/MedicinalProduct", json={"resourceType": "MedicinalProduct", "name": [{"productName": 5}]})
    assert bad.status_code == 400
    assert bad.json()["issue"][0]["expression"] == ["MedicinalProduct.name[0].productName"]
    assert client.post("/Basic", json={"resourceType": "Basic",
                                       "code": {"text": "alliance note"}}).status_code == 201
