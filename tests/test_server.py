"""The server as an operator sees it: metadata, health, request ids and structured logs."""

from __future__ import annotations

import json

from conftest import newest_history_entry  # noqa: F401  (shared helpers live in conftest)


def test_capability_statement(client, server):
    r = client.get("/metadata")
    assert r.status_code == 200
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    assert cs["kind"] == "instance"
    assert "application/fhir+json" in cs["format"]
    rest = cs["rest"][0]
    types = {res["type"]: res for res in rest["resource"]}
    assert len(types) == 146 and "Patient" in types and "MedicinalProduct" in types
    assert {i["code"] for i in types["Observation"]["interaction"]} == {
        "read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"}
    assert types["Patient"]["conditionalCreate"] is True and types["Patient"]["conditionalDelete"] == "multiple"
    observation_params = {p["name"]: p["type"] for p in types["Observation"]["searchParam"]}
    assert observation_params["code"] == "token" and observation_params["date"] == "date"
    assert observation_params["code-value-quantity"] == "composite"
    assert "Observation:subject" in types["Observation"]["searchInclude"]
    assert types["Patient"]["versioning"] == "versioned-update"
    assert [i["code"] for i in rest["interaction"]] == ["transaction", "batch", "history-system", "search-system"]
    assert cs["implementation"]["url"] == server.base_url


def test_health(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"


def test_request_id_echoed_and_logged(client, server):
    r = client.get("/metadata", headers={"X-Request-ID": "trace-abc-123"})
    assert r.headers["x-request-id"] == "trace-abc-123"
    assert len(client.get("/health").headers["x-request-id"]) == 32
    lines = [json.loads(line) for line in server.log_lines() if line.startswith("{")]
    access = [e for e in lines if e.get("request_id") == "trace-abc-123"]
    assert access and access[-1]["path"] == "/metadata" and access[-1]["status"] == 200
    assert "duration_ms" in access[-1]
