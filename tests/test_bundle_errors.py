"""Bundles POSTed to the base URL that are not a valid transaction or batch: the right status, an
OperationOutcome, and nothing written."""

from __future__ import annotations

import pytest
from conftest import newest_history_entry
from write_data import SYS, uid


def rejected(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] in ("error", "fatal")
    assert "Traceback" not in response.text
    return outcome


def bundle(kind: str | None, entries: list[dict]) -> dict:
    out: dict = {"resourceType": "Bundle", "entry": entries}
    if kind is not None:
        out["type"] = kind
    return out


def post_patient(value: str) -> dict:
    return {"resource": {"resourceType": "Patient", "identifier": [{"system": SYS, "value": value}]},
            "request": {"method": "POST", "url": "Patient"}}


def find(client, value: str) -> set[str]:
    r = client.get("/Patient", params={"identifier": f"{SYS}|{value}"})
    return {e["resource"]["id"] for e in r.json().get("entry", [])}


@pytest.fixture
def unchanged(client):
    before = newest_history_entry(client)
    yield
    assert newest_history_entry(client) == before


def test_not_a_bundle_is_400(client, unchanged):
    rejected(client.post("/", json={"resourceType": "Patient", "gender": "male"}), 400)
    rejected(client.post("/", json={"type": "transaction", "entry": []}), 400)


@pytest.mark.parametrize("kind", ["collection", "document", "searchset", "history", None, "nonsense"])
def test_bundle_type_other_than_transaction_or_batch_is_400(client, unchanged, kind):
    value = uid()
    rejected(client.post("/", json=bundle(kind, [post_patient(value)])), 400)
    assert find(client, value) == set()


@pytest.mark.parametrize("kind", ["transaction", "batch"])
@pytest.mark.parametrize("request_part", [None, {"url": "Patient"}, {"method": "POST"},
                                          {"method": "FETCH", "url": "Patient"}])
def test_entry_without_a_usable_request_is_400(client, unchanged, kind, request_part):
    value = uid()
    bad = {"resource": {"resourceType": "Patient"}}
    if request_part is not None:
        bad["request"] = request_part
    rejected(client.post("/", json=bundle(kind, [post_patient(value), bad])), 400)
    assert find(client, value) == set()


def test_unknown_type_in_request_url_fails_a_transaction_with_404(client, unchanged):
    value = uid()
    outcome = rejected(client.post("/", json=bundle("transaction", [
        post_patient(value),
        {"resource": {"resourceType": "Banana"}, "request": {"method": "POST", "url": "Banana"}}])), 404)
    assert "Banana" in str(outcome)
    assert find(client, value) == set()


def test_resource_type_not_matching_request_url_fails_the_transaction(client, unchanged):
    value = uid()
    rejected(client.post("/", json=bundle("transaction", [
        post_patient(value),
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
         "request": {"method": "POST", "url": "Patient"}}])), 400)
    assert find(client, value) == set()


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_instance_method_without_id_or_criteria_is_400(client, unchanged, method):
    resource = {"PUT": {"resourceType": "Patient"},
                "PATCH": {"resourceType": "Parameters", "parameter": []}}.get(method)
    bad: dict = {"request": {"method": method, "url": "Patient"}}
    if resource is not None:
        bad["resource"] = resource
    rejected(client.post("/", json=bundle("transaction", [bad])), 400)


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_write_entry_without_a_resource_is_400(client, unchanged, method):
    url = "Patient" if method == "POST" else f"Patient/be-{uid()}"
    rejected(client.post("/", json=bundle("transaction", [{"request": {"method": method, "url": url}}])), 400)


def test_entry_must_be_a_list(client, unchanged):
    rejected(client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": {"x": 1}}), 400)


def test_malformed_json_is_400(client, unchanged):
    rejected(client.post("/", content=b'{"resourceType": "Bundle", "type": "transaction", "entry": ['), 400)
    rejected(client.post("/", content=b""), 400)
    rejected(client.post("/", content=b"[1, 2]"), 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/fhir+xml", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(client, unchanged, content_type):
    body = b'{"resourceType": "Bundle", "type": "batch", "entry": []}'
    rejected(client.post("/", content=body, headers={"Content-Type": content_type}), 415)
