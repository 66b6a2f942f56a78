"""$export at system, Patient and Group level on both backends: what the files hold against the store,
_type/_typeFilter/_since, compartment confinement, the POST form and every refusal."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
import pytest
from bulk_data import (
    ASYNC,
    GROUP_MEMBERS,
    PATIENTS,
    exported,
    fetch_ndjson,
    kick_off,
    population,
    put_all,
    wait_for,
)

COMPARTMENT = {"Patient", "Observation", "Encounter"}


@pytest.fixture(scope="module")
def http(fresh_client):
    put_all(fresh_client, population())
    return fresh_client


def _store_counts(http, types) -> dict[str, int]:
    counts = {t: http.get(f"/{t}", params={"_summary": "count"}).json()["total"] for t in types}
    return {t: n for t, n in counts.items() if n}


def test_system_export_equals_the_store(http):
    status = kick_off(http, "/$export")
    manifest = wait_for(http, status)
    assert manifest["request"].endswith("/$export") and manifest["requiresAccessToken"] is False
    assert manifest["error"] == [] and "deleted" not in manifest
    datetime.fromisoformat(manifest["transactionTime"])
    files = exported(http, manifest)
    types = {"Organization", "Practitioner", "Patient", "Encounter", "Observation", "Group",
             # the terminology definitions every store holds from its start
             "CodeSystem", "ValueSet", "ConceptMap", "NamingSystem", "StructureDefinition"}
    assert {t: len(rs) for t, rs in files.items()} == _store_counts(http, types)
    for resources in files.values():  # field by field, meta included
        for resource in resources:
            assert resource == http.get(f"/{resource['resourceType']}/{resource['id']}").json()
    again = http.get(status)  # the manifest can be fetched again, until it expires
    assert again.status_code == 200 and parsedate_to_datetime(again.headers["Expires"]) > datetime.now(UTC)


def test_type_and_type_filter(http):
    manifest = wait_for(http, kick_off(http, "/$export", params={
        "_type": "Patient,Observation", "_typeFilter": "Observation?code=http://loinc.org|85354-9&subject=pt-1",
        "_outputFormat": "application/fhir+ndjson"}))
    files = exported(http, manifest)
    assert set(files) == {"Patient", "Observation"}
    assert len(files["Patient"]) == PATIENTS
    assert sorted(o["id"] for o in files["Observation"]) == ["bp-3", "bp-4", "bp-5"]
    # two filters of one type are ORed; other types are not filtered
    manifest = wait_for(http, kick_off(http, "/$export", params=[
        ("_type", "Observation"), ("_typeFilter", "Observation?subject=pt-0&code=8867-4"),
        ("_typeFilter", "Observation?subject=pt-2&code=8867-4"), ("_outputFormat", "ndjson")]))
    assert sorted(o["id"] for o in exported(http, manifest)["Observation"]) == ["hr-0", "hr-2"]


def test_patient_level_export_keeps_to_the_compartments(http):
    manifest = wait_for(http, kick_off(http, "/Patient/$export"))
    files = exported(http, manifest)
    assert set(files) == COMPARTMENT  # no Organization, Practitioner or Group
    assert {t: len(rs) for t, rs in files.items()} == _store_counts(http, COMPARTMENT)
    manifest = wait_for(http, kick_off(http, "/Patient/$export", params={"_type": "Encounter"}))
    assert [item["type"] for item in manifest["output"]] == ["Encounter"]


def _patients_of(files) -> set[str]:
    out = set()
    for resource in (r for rs in files.values() for r in rs):
        out.add(resource["id"] if resource["resourceType"] == "Patient"
                else resource["subject"]["reference"].removeprefix("Patient/"))
    return out


def test_group_level_export_keeps_to_its_members(http):
    manifest = wait_for(http, kick_off(http, "/Group/village-east-hypertension/$export"))
    files = exported(http, manifest)
    assert set(files) == COMPARTMENT
    assert _patients_of(files) == set(GROUP_MEMBERS)
    assert len(files["Observation"]) == 4 * len(GROUP_MEMBERS)


def test_post_kick_off_with_parameters(http):
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient,Observation"},
        {"name": "_outputFormat", "valueString": "application/ndjson"},
        {"name": "patient", "valueReference": {"reference": "Patient/pt-1"}},
        {"name": "patient", "valueReference": {"reference": "Patient/pt-9"}}]}
    status = kick_off(http, "/Group/village-east-hypertension/$export", method="POST", json=body)
    files = exported(http, wait_for(http, status))
    assert _patients_of(files) == {"pt-1"}  # pt-9 is not a member of the group
    status = kick_off(http, "/Patient/$export", method="POST", json=body)
    assert _patients_of(exported(http, wait_for(http, status))) == {"pt-1", "pt-9"}


def test_since_exports_changes_and_deletions(http):
    time.sleep(0.01)
    since = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    time.sleep(0.01)
    patient = http.get("/Patient/pt-5").json()
    patient["active"] = False
    assert http.put("/Patient/pt-5", json=patient).status_code == 200
    assert http.delete("/Observation/hr-7").status_code == 200
    manifest = wait_for(http, kick_off(http, "/$export", params={"_since": since}))
    files = exported(http, manifest)
    assert {t: [r["id"] for r in rs] for t, rs in files.items()} == {"Patient": ["pt-5"]}
    assert files["Patient"][0]["active"] is False and files["Patient"][0]["meta"]["versionId"] == "2"
    deleted = exported(http, manifest, "deleted")["Bundle"]
    assert deleted == [{"resourceType": "Bundle", "type": "transaction",
                        "entry": [{"request": {"method": "DELETE", "url": "Observation/hr-7"}}]}]
    # the Patient level reports changed resources of the compartments only
    manifest = wait_for(http, kick_off(http, "/Patient/$export", params={"_since": since}))
    assert [(i["type"], i["count"]) for i in manifest["output"]] == [("Patient", 1)] and "deleted" not in manifest


def test_lenient_handling_ignores_unknown_parameters(http):
    status = kick_off(http, "/$export", params={"_type": "Group", "includeAssociatedData": "LatestProvenanceResources"},
                      headers={"Prefer": "respond-async, handling=lenient"})
    manifest = wait_for(http, status)
    assert [i["type"] for i in manifest["output"]] == ["Group"]
    assert manifest["extension"]["ignoredParameters"] == ["includeAssociatedData"]


def test_cancel_of_a_finished_job_removes_it_and_its_files(http, fresh_server):
    status = kick_off(http, "/$export", params={"_type": "Organization"})
    manifest = wait_for(http, status)
    job = status.rsplit("/", 1)[1]
    assert (fresh_server.data_dir / "bulk" / job).is_dir()
    response = http.delete(status)
    assert response.status_code == 202
    assert not (fresh_server.data_dir / "bulk" / job).exists()
    gone = http.get(status)
    assert gone.status_code == 404 and gone.json()["issue"][0]["code"] == "not-found"
    assert http.get(manifest["output"][0]["url"]).status_code == 404
    assert http.delete(status).status_code == 404


# ---- refusals: 400/404 with an OperationOutcome naming the element, nothing stored, no job ----

def _jobs(server) -> set[str]:
    directory = server.data_dir / "bulk"
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


@pytest.mark.parametrize(("path", "params", "headers", "where"), [
    ("/$export", {}, {}, "Prefer"),
    ("/$export", {"_outputFormat": "application/fhir+json"}, ASYNC, "_outputFormat"),
    ("/$export", {"_since": "2026-01-01"}, ASYNC, "_since"),
    ("/$export", {"_since": "yesterday"}, ASYNC, "_since"),
    ("/$export", {"_type": "Patient,Spaceship"}, ASYNC, "_type"),
    ("/$export", {"_elements": "id"}, ASYNC, "_elements"),
    ("/$export", {"patient": "Patient/x"}, ASYNC, "patient"),
    ("/$export", {"_typeFilter": "Observation?colour=red"}, ASYNC, "_typeFilter"),
    ("/$export", {"_typeFilter": "Observation"}, ASYNC, "_typeFilter"),
    ("/$export", {"_typeFilter": "Observation?_count=5"}, ASYNC, "_typeFilter"),
    ("/$export", {"_type": "Patient", "_typeFilter": "Observation?code=1"}, ASYNC, "_typeFilter"),
    ("/Patient/$export", {"_type": "Organization"}, ASYNC, "_type"),
    ("/Group/x/$export", {}, {}, "Prefer"),
])
def test_bad_kick_off_is_400(client, server, unchanged, path, params, headers, where):
    before = _jobs(server)
    response = client.get(path, params=params, headers=headers)
    assert response.status_code == 400, response.text
    issue = response.json()["issue"][0]
    assert issue["severity"] == "error" and issue["expression"] == [where] and issue["diagnostics"]
    assert _jobs(server) == before


def test_bad_post_kick_off_names_the_parameter(client, server, unchanged):
    before = _jobs(server)
    body = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Patient"},
                                                        {"name": "patient", "valueString": "pt-1"}]}
    response = client.post("/Patient/$export", json=body, headers=ASYNC)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Parameters.parameter[1].value"]
    response = client.post("/$export", json={"resourceType": "Patient"}, headers=ASYNC)
    assert response.status_code == 400 and response.json()["issue"][0]["expression"] == ["resourceType"]
    assert _jobs(server) == before


def test_unknown_group_job_and_file_are_404(client, server, unchanged):
    before = _jobs(server)
    response = client.get("/Group/no-such-group/$export", headers=ASYNC)
    assert response.status_code == 404 and response.json()["issue"][0]["code"] == "not-found"
    assert _jobs(server) == before
    for response in (client.get("/bulkstatus/0123456789abcdef"), client.delete("/bulkstatus/0123456789abcdef"),
                     client.get("/bulkfiles/0123456789abcdef/Patient-1.ndjson")):
        assert response.status_code == 404
        assert response.json()["issue"][0]["expression"] == ["job"]


def test_files_are_only_those_of_the_manifest(http):
    manifest = wait_for(http, kick_off(http, "/$export", params={"_type": "Practitioner"}))
    url = httpx.URL(manifest["output"][0]["url"]).path
    assert [r["id"] for r in fetch_ndjson(http, url)] == ["dr-li"]
    for other in ("Patient-1.ndjson", "Practitioner-2.ndjson", "upload.ndjson", ".Practitioner-1.ndjson"):
        response = http.get(url.rsplit("/", 1)[0] + "/" + other)
        assert response.status_code == 404
        assert response.json()["issue"][0]["expression"] == ["file"]


def test_capability_statement_lists_the_bulk_operations(client):
    statement = client.get("/metadata").json()
    assert statement["instantiates"] == ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"]
    rest = statement["rest"][0]
    assert rest["operation"] == [{"name": "export",
                                  "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}]
    by_type = {r["type"]: r for r in rest["resource"]}
    def export_of(resource_type: str) -> str:
        return next(o["definition"] for o in by_type[resource_type]["operation"] if o["name"] == "export")
    assert export_of("Group").endswith("/OperationDefinition/group-export")
    assert export_of("Patient").endswith("/OperationDefinition/patient-export")
