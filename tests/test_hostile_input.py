"""Hostile input: deep JSON, oversized pages, deep chains, floods. Each is refused with a clear
OperationOutcome (never a traceback) and leaves the store as it was; every answer carries the
security headers."""

from __future__ import annotations

import uuid

import httpx
import pytest
from conftest import start_server, stop_server


def nested_patient(depth: int) -> str:
    inner = '{"url": "http://example.org/x", "valueString": "a"}'
    for _ in range(depth):
        inner = '{"url": "http://example.org/x", "extension": [' + inner + "]}"
    return '{"resourceType": "Patient", "extension": [' + inner + "]}"


def test_json_nested_too_deep_is_refused(client, unchanged):
    for body, path in ((nested_patient(300), "/Patient"),
                       ('{"resourceType": "Bundle", "type": "batch", "entry": [{"resource": '
                        + nested_patient(100) + ', "request": {"method": "POST", "url": "Patient"}}]}', "/")):
        answer = client.post(path, content=body)
        assert answer.status_code == 400, answer.text
        issue = answer.json()["issue"][0]
        assert issue["code"] == "too-costly" and "nested deeper than 64 levels" in issue["diagnostics"]


def test_json_nested_within_the_limit_is_accepted(client):
    answer = client.post("/Patient", content=nested_patient(25))
    assert answer.status_code == 201, answer.text


def test_page_size_is_capped(client):
    answer = client.get("/Patient", params={"_count": "100000000"})
    assert answer.status_code == 200
    self_link = next(link["url"] for link in answer.json()["link"] if link["relation"] == "self")
    assert "_count=1000" in self_link


def test_chains_deeper_than_four_levels_are_refused(client):
    deep = "subject:Patient.general-practitioner:PractitionerRole.organization.partof.partof.name"
    answer = client.get("/Observation", params={deep: "x"}, headers={"Prefer": "handling=strict"})
    assert answer.status_code == 400
    assert "limited to 4 levels" in answer.json()["issue"][0]["diagnostics"]


def test_include_iterate_stops_five_levels_deep_and_says_so(client):
    run = uuid.uuid4().hex[:8]
    ids = [f"chain-{run}-{level}" for level in range(9)]  # ids[0] is part of ids[1], ... eight levels up
    for level, org_id in enumerate(ids):
        body = {"resourceType": "Organization", "id": org_id, "name": f"level {level}"}
        if level + 1 < len(ids):
            body["partOf"] = {"reference": f"Organization/{ids[level + 1]}"}
        assert client.put(f"/Organization/{org_id}", json=body).status_code == 201
    bundle = client.get("/Organization", params={"_id": ids[0], "_include:iterate": "Organization:partof"}).json()
    included = [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert included == ids[1:6]  # five levels followed
    outcome = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and "followed 5 levels deep" in outcome[0]["issue"][0]["diagnostics"]
    shallow = client.get("/Organization", params={"_id": ids[4], "_include:iterate": "Organization:partof"}).json()
    assert [e["resource"]["id"] for e in shallow["entry"]] == ids[4:]  # the whole chain: nothing to warn about
    assert not any(e["search"]["mode"] == "outcome" for e in shallow["entry"])


def test_more_than_a_thousand_to_include_are_cut_with_a_warning(client):
    patient = f"busy-{uuid.uuid4().hex[:8]}"
    assert client.put(f"/Patient/{patient}", json={"resourceType": "Patient", "id": patient}).status_code == 201
    pulse = {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
             "subject": {"reference": f"Patient/{patient}"}}
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": pulse, "request": {"method": "POST", "url": "Observation"}}] * 1001}
    assert client.post("/", json=bundle).status_code == 200
    found = client.get("/Patient", params={"_id": patient, "_revinclude": "Observation:subject"}).json()
    modes = [e["search"]["mode"] for e in found["entry"]]
    assert modes.count("include") == 1000
    outcome = next(e["resource"] for e in found["entry"] if e["search"]["mode"] == "outcome")
    assert "More than 1000 resources to include" in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize("path", ["/metadata", "/Patient/does-not-exist", "/Patient?_count=x"])
def test_security_headers_on_every_answer(client, path):
    answer = client.get(path, headers={"Prefer": "handling=strict"})
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    assert "Traceback" not in answer.text


def test_body_over_the_limit_gets_413_with_the_headers(client, unchanged):
    answer = client.post("/Patient", content=b"{" + b" " * (16 * 1024 * 1024) + b"}")
    assert answer.status_code == 413
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.json()["issue"][0]["code"] == "too-costly"


@pytest.fixture(scope="module")
def limited_server():
    running = start_server({"FHIR_DATABASE_URL": "", "FHIR_RATE_LIMIT_PER_S": "2", "FHIR_RATE_LIMIT_BURST": "5"})
    yield running
    stop_server(running)


def test_rate_limit_per_client(limited_server):
    with httpx.Client(base_url=limited_server.base_url, timeout=10) as http:
        statuses = [http.get("/Patient").status_code for _ in range(8)]
        assert statuses[:5] == [200] * 5
        assert 429 in statuses[5:]
        refused = http.get("/Patient")
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["issue"][0]["code"] == "throttled"
        assert refused.headers["x-request-id"]
        # another client (another bearer token) has a bucket of its own; health checks are never limited
        assert http.get("/Patient", headers={"Authorization": "Bearer other"}).status_code in (200, 401)
        assert http.get("/health").status_code == 200
