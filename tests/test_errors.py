"""Bad input gets the right status and an OperationOutcome, and the store is left exactly as it was."""

from __future__ import annotations

from conftest import newest_history_entry


def _expect_rejected(client, response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error"
    assert "Traceback" not in response.text
    return outcome




def test_unknown_resource_type_is_404(client, unchanged):
    for r in (client.get("/Banana/1"), client.post("/Banana", json={"resourceType": "Banana"}),
              client.put("/Banana/1", json={"resourceType": "Banana", "id": "1"}), client.delete("/Banana/1"),
              client.get("/Banana/_history"), client.get("/Banana/1/_history/1")):
        outcome = _expect_rejected(client, r, 404)
        assert "Banana" in outcome["issue"][0]["diagnostics"]
    # R4B-only types are not R4 types
    _expect_rejected(client, client.post("/SubscriptionTopic", json={"resourceType": "SubscriptionTopic"}), 404)


def test_malformed_json_is_400(client, unchanged):
    r = client.post("/Patient", content=b'{"resourceType": "Patient", "name": [', )
    outcome = _expect_rejected(client, r, 400)
    assert "Malformed JSON" in outcome["issue"][0]["diagnostics"]
    _expect_rejected(client, client.post("/Patient", content=b"[1, 2]"), 400)
    _expect_rejected(client, client.post("/Patient", content=b""), 400)
    _expect_rejected(client, client.post("/Patient", content=b"\xff\xfe"), 400)


def test_wrong_content_type_is_415(client, unchanged):
    body = b'{"resourceType": "Patient"}'
    for content_type in ("application/fhir+xml", "text/plain", "application/x-www-form-urlencoded"):
        _expect_rejected(client, client.post("/Patient", content=body, headers={"Content-Type": content_type}),
                         415)
    _expect_rejected(client, client.post("/Patient", content=body, headers={"Content-Type": ""}), 415)


def test_plain_json_content_type_is_accepted(client):
    body = b'{"resourceType": "Patient"}'
    r = client.post("/Patient", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 201


def test_resource_type_mismatch_is_400(client, unchanged):
    outcome = _expect_rejected(client, client.post("/Patient", json={"resourceType": "Observation"}), 400)
    assert outcome["issue"][0]["expression"] == ["resourceType"]
    _expect_rejected(client, client.post("/Patient", json={"name": [{"family": "X"}]}), 400)


def test_id_mismatch_on_update_is_400(client):
    rid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    before = newest_history_entry(client)
    outcome = _expect_rejected(client, client.put(f"/Patient/{rid}", json={"resourceType": "Patient",
                                                                          "id": "other"}), 400)
    assert outcome["issue"][0]["expression"] == ["Patient.id"]
    _expect_rejected(client, client.put(f"/Patient/{rid}", json={"resourceType": "Patient"}), 400)
    assert newest_history_entry(client) == before


def test_invalid_id_in_url_is_400(client, unchanged):
    _expect_rejected(client, client.put("/Patient/bad_id!", json={"resourceType": "Patient", "id": "bad_id!"}),
                     400)
    _expect_rejected(client, client.get("/Patient/" + "x" * 65), 400)


def test_validation_failure_names_each_element(client, unchanged):
    r = client.post("/Patient", json={"resourceType": "Patient", "birthDate": "1990-13-45",
                                      "name": [{"family": 42}], "favouriteColour": "blue"})
    outcome = _expect_rejected(client, r, 400)
    expressions = {i["expression"][0] for i in outcome["issue"]}
    assert {"Patient.birthDate", "Patient.name[0].family", "Patient.favouriteColour"} <= expressions


def test_missing_required_and_choice_rules(client, unchanged):
    outcome = _expect_rejected(client, client.post("/Observation", json={"resourceType": "Observation",
                                                                         "code": {"text": "x"}}), 400)
    assert outcome["issue"][0]["expression"] == ["Observation.status"]
    _expect_rejected(client, client.post("/Observation", json={
        "resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "valueString": "a", "valueBoolean": True}), 400)


def test_empty_values_are_invalid(client, unchanged):
    outcome = _expect_rejected(client, client.post("/Patient", json={"resourceType": "Patient", "name": []}),
                               400)
    assert outcome["issue"][0]["expression"] == ["Patient.name"]
    _expect_rejected(client, client.post("/Patient", json={"resourceType": "Patient", "gender": ""}), 400)
    _expect_rejected(client, client.post("/Patient", json={"resourceType": "Patient", "gender": None}), 400)


def test_invalid_update_leaves_resource_as_it_was(client):
    p = client.post("/Patient", json={"resourceType": "Patient", "gender": "male"}).json()
    before = newest_history_entry(client)
    _expect_rejected(client, client.put(f"/Patient/{p['id']}", json={**p, "birthDate": "not-a-date"}), 400)
    assert newest_history_entry(client) == before
    assert client.get(f"/Patient/{p['id']}").json() == p


def test_format_negotiation(client):
    p = client.post("/Patient", json={"resourceType": "Patient"}).json()
    url = f"/Patient/{p['id']}"
    assert client.get(url, params={"_format": "json"}).headers["content-type"].startswith("application/fhir+json")
    assert client.get(url, headers={"Accept": "application/json"}).headers["content-type"].startswith(
        "application/json")
    assert client.get(url, headers={"Accept": "text/html,*/*;q=0.8"}).status_code == 200
    _expect_rejected(client, client.get(url, params={"_format": "xml"}), 406)
    _expect_rejected(client, client.get(url, headers={"Accept": "application/fhir+xml"}), 406)
    _expect_rejected(client, client.get("/metadata", params={"_format": "text/turtle"}), 406)
    pretty = client.get(url, params={"_pretty": "true"})
    assert pretty.text.startswith("{\n") and pretty.json() == p


def test_unknown_endpoint_and_method(client):
    _expect_rejected(client, client.get("/Patient/1/2/3/4"), 404)
    _expect_rejected(client, client.patch("/"), 405)


def test_body_too_large_is_413(client, unchanged):
    huge = b'{"resourceType":"Patient","text":{"status":"generated","div":"' + b"x" * (17 * 1024 * 1024) + b'"}}'
    _expect_rejected(client, client.post("/Patient", content=huge), 413)
