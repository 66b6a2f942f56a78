"""Bulk data with FHIR_AUTH=on and real tokens (two workers): an export holds what its token may read,
a patient-context token exports only its own compartment, files need the token, other clients do not
see the job, and a read-only token cannot import."""

from __future__ import annotations

import httpx
import pytest
from bulk_data import ASYNC, exported, kick_off, population, put_all, wait_for
from smart_auth import auth_server_for, code_flow, oauth_client


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request):
    for server in auth_server_for(request):
        with httpx.Client(base_url=server.base, timeout=30,
                          headers={"Authorization": f"Bearer {server.system_token()}"}) as http:
            put_all(http, population())
            wang = server.patients["Wang"]
            answer = http.put("/Observation/wang-hr", json={
                "resourceType": "Observation", "id": "wang-hr", "status": "final", "code": {"text": "pulse"},
                "subject": {"reference": f"Patient/{wang}"}})
            assert answer.status_code == 201, answer.text
        yield server


def _client(server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.base, timeout=30, headers={"Authorization": f"Bearer {token}"})


def test_a_system_export_holds_what_the_token_may_read(world):
    with _client(world, world.system_token("system/Observation.read")) as http:
        status = kick_off(http, "/$export")
        manifest = wait_for(http, status)
        assert manifest["requiresAccessToken"] is True
        assert [item["type"] for item in manifest["output"]] == ["Observation"]
        assert len(exported(http, manifest)["Observation"]) == 12 * 4 + 1
        url = httpx.URL(manifest["output"][0]["url"]).path
        assert httpx.get(world.base + url).status_code == 401  # the file needs the token too
        refused = http.get("/$export", params={"_type": "Observation,Patient"}, headers=ASYNC)
        assert refused.status_code == 403 and "Patient" in refused.json()["issue"][0]["diagnostics"]
    app, _ = world.add_client("public", "launch/patient patient/*.read")
    token, _ = code_flow(world, oauth_client(world, app.client_id, "launch/patient patient/*.read"),
                         patient=world.patients["Zhao"])
    with _client(world, token["access_token"]) as other:  # another client does not see the job
        assert other.get(status).status_code == 404 and other.get(url).status_code == 404


def test_a_patient_token_exports_its_own_compartment(world):
    wang = world.patients["Wang"]
    app, _ = world.add_client("public", "launch/patient patient/*.read")
    token, _ = code_flow(world, oauth_client(world, app.client_id, "launch/patient patient/*.read"), patient=wang)
    with _client(world, token["access_token"]) as http:
        files = exported(http, wait_for(http, kick_off(http, "/Patient/$export")))
        assert {t: [r["id"] for r in rs] for t, rs in files.items()} == {"Patient": [wang],
                                                                           "Observation": ["wang-hr"]}


def test_an_import_writes_under_the_token_of_its_kick_off(world):
    with _client(world, world.system_token("system/*.read")) as http:
        status = kick_off(http, "/$import", method="POST", content='{"resourceType": "Patient", "id": "x"}\n',
                          headers={"Content-Type": "application/fhir+ndjson"})
        manifest = wait_for(http, status)
        assert manifest["output"][0]["count"] == 0 and manifest["error"][0]["count"] == 1
        [outcome] = [line for line in exported(http, manifest, "error")["OperationOutcome"]]
        assert "line 1" in outcome["issue"][0]["diagnostics"] and outcome["issue"][0]["code"] == "forbidden"
        assert http.get("/Patient/x").status_code == 404
