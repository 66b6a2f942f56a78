"""SearchParameter resources created at run time: new parameters work, existing data is re-indexed."""

from __future__ import annotations

import time

VILLAGE = "http://alliance.example/fhir/StructureDefinition/village"


def village_patient(pid: str, village: str) -> dict:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": pid}],
            "extension": [{"url": VILLAGE, "valueCoding": {"system": "urn:alliance:village", "code": village}}]}


def _ids(client, params) -> set[str]:
    bundle = client.get("/Patient", params=params).json()
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


def test_custom_parameter_reindexes_existing_data(fresh_client):
    client = fresh_client
    client.put("/Patient/v-old", json=village_patient("v-old", "dongcun"))
    strict = {"Prefer": "handling=strict"}
    assert client.get("/Patient", params={"village": "dongcun"}, headers=strict).status_code == 400
    r = client.put("/SearchParameter/patient-village", json={
        "resourceType": "SearchParameter", "id": "patient-village", "url": "http://alliance.example/fhir/sp/village",
        "name": "village", "status": "active", "description": "Village of residence", "code": "village",
        "base": ["Patient"], "type": "token",
        "expression": f"Patient.extension.where(url='{VILLAGE}').value"})
    assert r.status_code == 201, r.text
    client.put("/Patient/v-new", json=village_patient("v-new", "dongcun"))
    client.put("/Patient/v-other", json=village_patient("v-other", "xicun"))
    deadline = time.monotonic() + 20
    while _ids(client, {"village": "dongcun"}) != {"v-old", "v-new"} and time.monotonic() < deadline:
        time.sleep(0.2)  # the existing patient is re-indexed in the background
    assert _ids(client, {"village": "urn:alliance:village|dongcun"}) == {"v-old", "v-new"}
    assert _ids(client, {"village": "xicun"}) == {"v-other"}
    assert client.get("/metadata").json()["rest"][0]["resource"]  # still serves its statement


def test_invalid_search_parameter_is_rejected(fresh_client):
    r = fresh_client.post("/SearchParameter", json={
        "resourceType": "SearchParameter", "url": "http://alliance.example/fhir/sp/bad", "name": "bad",
        "status": "active", "description": "broken", "code": "bad", "base": ["Patient"], "type": "token",
        "expression": "Patient.name.where(("})
    assert r.status_code == 422
    assert "expression" in r.json()["issue"][0]["diagnostics"]
