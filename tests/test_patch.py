"""PATCH [base]/[type]/[id] with a JSON Patch (RFC 6902, application/json-patch+json) or a FHIRPath Patch
(a Parameters resource, fhirpatch.html), checked against FHIR R4 http.html and RFC 5789: the patched result
is a new version; a patch that cannot be applied or whose result is not a valid resource is 422 and
changes nothing; a malformed patch document is 400; If-Match is honoured."""

from __future__ import annotations

import httpx
import pytest
from conftest import newest_history_entry, on_every_layout
from write_data import uid

pytestmark = on_every_layout("server", scope="session")

JSON_PATCH = {"Content-Type": "application/json-patch+json"}
FHIR = {"Content-Type": "application/fhir+json"}


BASE_PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "x", "value": "1"}, {"system": "y", "value": "2"}],
    "active": True,
    "name": [{"family": "Doe", "given": ["A", "B", "C"]}],
    "telecom": [{"system": "phone", "value": "555-0100"}, {"system": "email", "value": "doe@example.org"}],
    "gender": "male",
    "birthDate": "1970-01-01",
}


@pytest.fixture
def patient(client) -> dict:
    """A fresh Patient at version 1."""
    pid = f"pt-{uid()}"
    r = client.put(f"/Patient/{pid}", json={**BASE_PATIENT, "id": pid})
    assert r.status_code == 201, r.text
    return r.json()


def body_of(resource: dict) -> dict:
    """The resource without id and meta (what a patch is meant to change)."""
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


def current(client: httpx.Client, resource: dict) -> dict:
    r = client.get(f"/Patient/{resource['id']}")
    assert r.status_code == 200, r.text
    return r.json()


def json_patch(client: httpx.Client, resource: dict, ops: list, headers: dict | None = None) -> httpx.Response:
    return client.patch(f"/Patient/{resource['id']}", json=ops, headers={**JSON_PATCH, **(headers or {})})


def fhirpath_patch(client: httpx.Client, resource: dict, *operations: dict,
                   headers: dict | None = None) -> httpx.Response:
    params = {"resourceType": "Parameters", "parameter": list(operations)}
    return client.patch(f"/Patient/{resource['id']}", json=params, headers={**FHIR, **(headers or {})})


def op(kind: str, path: str, **parts) -> dict:
    """A FHIRPath Patch operation; parts: name=..., index=..., source=..., destination=..., value={"valueX": ...}."""
    out = [{"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}]
    if "name" in parts:
        out.append({"name": "name", "valueString": parts["name"]})
    for key in ("index", "source", "destination"):
        if key in parts:
            out.append({"name": key, "valueInteger": parts[key]})
    if "value" in parts:
        out.append({"name": "value", **parts["value"]})
    return {"name": "operation", "part": out}


def patched(r: httpx.Response, resource: dict, version: int = 2) -> dict:
    """A successful patch: 200, the new version's ETag; the resource (from the body or a read)."""
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == f'W/"{version}"'
    body = r.json()
    assert body["resourceType"] == "Patient" and body["id"] == resource["id"]
    assert body["meta"]["versionId"] == str(version)
    return body


def unprocessable(client: httpx.Client, r: httpx.Response, resource: dict, status: int = 422) -> dict:
    """A refused patch: the status, an OperationOutcome, and the resource still at version 1, unchanged."""
    assert r.status_code == status, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] in ("error", "fatal")
    assert current(client, resource) == resource
    return outcome




# ---------------------------------------------------------------- JSON Patch


def test_json_patch_replace(client, patient):
    body = patched(json_patch(client, patient, [{"op": "replace", "path": "/gender", "value": "female"}]), patient)
    assert body_of(body) == {**body_of(patient), "gender": "female"}
    assert current(client, patient) == body


def test_json_patch_add_to_a_list(client, patient):
    body = patched(json_patch(client, patient, [{"op": "add", "path": "/name/0/given/-", "value": "D"}]), patient)
    assert body["name"] == [{"family": "Doe", "given": ["A", "B", "C", "D"]}]


def test_json_patch_add_a_new_element(client, patient):
    body = patched(json_patch(client, patient, [
        {"op": "add", "path": "/maritalStatus", "value": {"text": "married"}},
        {"op": "add", "path": "/identifier/0", "value": {"system": "z", "value": "0"}},
    ]), patient)
    assert body["maritalStatus"] == {"text": "married"}
    assert [i["system"] for i in body["identifier"]] == ["z", "x", "y"]


def test_json_patch_remove(client, patient):
    body = patched(json_patch(client, patient, [{"op": "remove", "path": "/telecom/0"},
                                                {"op": "remove", "path": "/active"}]), patient)
    assert body["telecom"] == [{"system": "email", "value": "doe@example.org"}]
    assert "active" not in body


def test_json_patch_test_that_passes_then_applies(client, patient):
    body = patched(json_patch(client, patient, [{"op": "test", "path": "/gender", "value": "male"},
                                                {"op": "replace", "path": "/gender", "value": "other"}]), patient)
    assert body["gender"] == "other"


def test_json_patch_test_that_fails_is_422(client, patient, unchanged):
    unprocessable(client, json_patch(client, patient, [
        {"op": "replace", "path": "/gender", "value": "other"},  # earlier ops are undone too
        {"op": "test", "path": "/birthDate", "value": "1999-09-09"},
    ]), patient)


@pytest.mark.parametrize("ops", [
    [{"op": "replace", "path": "/maritalStatus/text", "value": "x"}],  # no such element
    [{"op": "remove", "path": "/address/0"}],
    [{"op": "add", "path": "/name/5/given/-", "value": "x"}],  # list index past the end
    [{"op": "move", "from": "/deceasedBoolean", "path": "/active"}],
])
def test_json_patch_on_a_path_that_does_not_exist_is_422(client, patient, unchanged, ops):
    # RFC 6902 makes this an error; RFC 5789 suggests 422 (or 409), this server says 422
    unprocessable(client, json_patch(client, patient, ops), patient)


def test_json_patch_changing_the_id_is_422(client, patient, unchanged):
    unprocessable(client, json_patch(client, patient, [{"op": "replace", "path": "/id", "value": "someone-else"}]),
                  patient)
    unprocessable(client, json_patch(client, patient, [{"op": "remove", "path": "/id"}]), patient)
    unprocessable(client, json_patch(client, patient, [{"op": "replace", "path": "/resourceType",
                                                        "value": "Practitioner"}]), patient)
    assert client.get("/Patient/someone-else").status_code == 404


def test_json_patch_result_that_is_not_valid_is_422(client, patient, unchanged):
    outcome = unprocessable(client, json_patch(client, patient, [
        {"op": "replace", "path": "/birthDate", "value": "not-a-date"}]), patient)
    assert "birthDate" in str(outcome)
    unprocessable(client, json_patch(client, patient, [{"op": "add", "path": "/noSuchElement", "value": 1}]),
                  patient)
    unprocessable(client, json_patch(client, patient, [{"op": "replace", "path": "/gender", "value": 7}]), patient)


@pytest.mark.parametrize("document", [
    {"op": "replace", "path": "/gender", "value": "female"},  # not an array
    [{"path": "/gender", "value": "female"}],  # no op
    [{"op": "frobnicate", "path": "/gender"}],  # unknown op
    [{"op": "replace", "value": "female"}],  # no path
])
def test_malformed_json_patch_is_400(client, patient, unchanged, document):
    r = client.patch(f"/Patient/{patient['id']}", json=document, headers=JSON_PATCH)
    unprocessable(client, r, patient, 400)


def test_malformed_json_is_400(client, patient, unchanged):
    r = client.patch(f"/Patient/{patient['id']}", content=b'[{"op": "replace", ', headers=JSON_PATCH)
    unprocessable(client, r, patient, 400)


# ---------------------------------------------------------------- FHIRPath Patch


def test_fhirpath_add(client, patient):
    body = patched(fhirpath_patch(
        client, patient,
        op("add", "Patient", name="maritalStatus", value={"valueCodeableConcept": {"text": "married"}}),
        op("add", "Patient", name="identifier", value={"valueIdentifier": {"system": "z", "value": "3"}}),
        op("add", "Patient.name[0]", name="given", value={"valueString": "D"}),
    ), patient)
    assert body["maritalStatus"] == {"text": "married"}
    assert body["identifier"] == [*BASE_PATIENT["identifier"], {"system": "z", "value": "3"}]  # added at the end
    assert body["name"][0]["given"] == ["A", "B", "C", "D"]


def test_fhirpath_add_an_element_of_an_anonymous_type(client, patient):
    contact = {"name": "value", "part": [{"name": "name", "valueHumanName": {"family": "Kin"}},
                                         {"name": "gender", "valueCode": "female"}]}
    params = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
        {"name": "name", "valueString": "contact"}, contact]}]}
    r = client.patch(f"/Patient/{patient['id']}", json=params, headers=FHIR)
    body = patched(r, patient)
    assert body["contact"] == [{"name": {"family": "Kin"}, "gender": "female"}]


def test_fhirpath_insert(client, patient):
    body = patched(fhirpath_patch(
        client, patient,
        op("insert", "Patient.name[0].given", index=1, value={"valueString": "X"}),
        op("insert", "Patient.identifier", index=0, value={"valueIdentifier": {"system": "w", "value": "0"}}),
    ), patient)
    assert body["name"][0]["given"] == ["A", "X", "B", "C"]
    assert [i["system"] for i in body["identifier"]] == ["w", "x", "y"]


def test_fhirpath_delete(client, patient):
    body = patched(fhirpath_patch(
        client, patient,
        op("delete", "Patient.identifier.where(system='x')"),
        op("delete", "Patient.name[0].given[1]"),
        op("delete", "Patient.active"),
    ), patient)
    assert body["identifier"] == [{"system": "y", "value": "2"}]
    assert body["name"][0]["given"] == ["A", "C"]
    assert "active" not in body


def test_fhirpath_delete_of_nothing_is_not_an_error(client, patient):
    # fhirpatch.html: except for delete, it is an error if no element matches the path
    body = patched(fhirpath_patch(client, patient, op("delete", "Patient.identifier.where(system='nope')")),
                   patient)
    assert body_of(body) == body_of(patient)


def test_fhirpath_delete_of_the_last_item_removes_the_list(client, patient):
    body = patched(fhirpath_patch(client, patient, op("delete", "Patient.identifier.where(system='x')"),
                                  op("delete", "Patient.identifier.where(system='y')")), patient)
    assert "identifier" not in body  # FHIR JSON has no empty arrays


def test_fhirpath_replace(client, patient):
    body = patched(fhirpath_patch(
        client, patient,
        op("replace", "Patient.identifier.where(system='y').value", value={"valueString": "22"}),
        op("replace", "Patient.birthDate", value={"valueDate": "1980-02-02"}),
        op("replace", "Patient.name[0].given[0]", value={"valueString": "Alpha"}),
    ), patient)
    assert body["identifier"] == [{"system": "x", "value": "1"}, {"system": "y", "value": "22"}]
    assert body["birthDate"] == "1980-02-02"
    assert body["name"][0]["given"] == ["Alpha", "B", "C"]


def test_fhirpath_move(client, patient):
    body = patched(fhirpath_patch(client, patient, op("move", "Patient.name[0].given", source=0, destination=2)),
                   patient)
    assert body["name"][0]["given"] == ["B", "C", "A"]


def test_fhirpath_operations_apply_in_order(client, patient):
    body = patched(fhirpath_patch(
        client, patient,
        op("add", "Patient.name[0]", name="given", value={"valueString": "D"}),
        op("move", "Patient.name[0].given", source=3, destination=0),
        op("delete", "Patient.name[0].given[1]"),
    ), patient)
    assert body["name"][0]["given"] == ["D", "B", "C"]


@pytest.mark.parametrize("operation", [
    op("replace", "Patient.maritalStatus", value={"valueCodeableConcept": {"text": "x"}}),  # matches nothing
    op("replace", "Patient.identifier.value", value={"valueString": "9"}),  # matches two
    op("replace", "Patient.identifier.where(system='nope').value", value={"valueString": "9"}),
    op("insert", "Patient.name[0].given", index=9, value={"valueString": "X"}),  # index out of range
    op("move", "Patient.name[0].given", source=0, destination=7),
    op("add", "Patient.address", name="city", value={"valueString": "Anyang"}),  # no address to add to
    op("delete", "Patient.identifier"),  # delete may remove one element only
])
def test_fhirpath_operation_that_cannot_be_applied_is_422(client, patient, unchanged, operation):
    unprocessable(client, fhirpatch_with_valid_first(client, patient, operation), patient)


def fhirpatch_with_valid_first(client, patient, operation):
    """The failing operation after one that would succeed: it must be undone too."""
    return fhirpath_patch(client, patient, op("replace", "Patient.gender", value={"valueCode": "other"}), operation)


def test_fhirpath_result_that_is_not_valid_is_422(client, patient, unchanged):
    outcome = unprocessable(client, fhirpath_patch(
        client, patient, op("replace", "Patient.birthDate", value={"valueDate": "not-a-date"})), patient)
    assert "birthDate" in str(outcome)
    unprocessable(client, fhirpath_patch(
        client, patient, op("add", "Patient", name="noSuchElement", value={"valueString": "x"})), patient)


def test_fhirpath_patch_changing_the_id_is_422(client, patient, unchanged):
    unprocessable(client, fhirpath_patch(client, patient, op("replace", "Patient.id", value={"valueId": "other"})),
                  patient)


@pytest.mark.parametrize("params", [
    {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "path", "valueString": "Patient.gender"}]}]},  # no type
    {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "frobnicate"}, {"name": "path", "valueString": "Patient.gender"}]}]},
    {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.gender"}]}]},  # no value
    {"resourceType": "Patient", "gender": "female"},  # a resource is not a FHIRPath Patch
])
def test_malformed_fhirpath_patch_is_400(client, patient, unchanged, params):
    r = client.patch(f"/Patient/{patient['id']}", json=params, headers=FHIR)
    unprocessable(client, r, patient, 400)


# ---------------------------------------------------------------- versions, preconditions, errors


def test_patch_makes_versions_and_history(client, patient):
    patched(json_patch(client, patient, [{"op": "replace", "path": "/gender", "value": "female"}]), patient, 2)
    patched(fhirpath_patch(client, patient, op("replace", "Patient.gender", value={"valueCode": "other"})),
            patient, 3)
    history = client.get(f"/Patient/{patient['id']}/_history").json()
    assert history["total"] == 3
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["3", "2", "1"]
    assert [e["resource"]["gender"] for e in history["entry"]] == ["other", "female", "male"]
    assert client.get(f"/Patient/{patient['id']}/_history/2").json()["gender"] == "female"
    assert client.get(f"/Patient/{patient['id']}/_history/1").json() == patient
    assert current(client, patient)["meta"]["lastUpdated"] >= patient["meta"]["lastUpdated"]


def test_if_match(client, patient):
    ops = [{"op": "replace", "path": "/gender", "value": "female"}]
    before = newest_history_entry(client)
    unprocessable(client, json_patch(client, patient, ops, headers={"If-Match": 'W/"2"'}), patient, 412)
    unprocessable(client, fhirpath_patch(client, patient, op("replace", "Patient.gender", value={"valueCode": "other"}),
                                         headers={"If-Match": 'W/"7"'}), patient, 412)
    assert newest_history_entry(client) == before
    patched(json_patch(client, patient, ops, headers={"If-Match": 'W/"1"'}), patient)


def test_patch_of_an_unknown_resource_is_404(client, unchanged):
    r = client.patch(f"/Patient/pt-never-{uid()}", json=[{"op": "replace", "path": "/gender", "value": "female"}],
                     headers=JSON_PATCH)
    assert r.status_code == 404, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    r = client.patch("/Banana/1", json=[{"op": "replace", "path": "/gender", "value": "female"}], headers=JSON_PATCH)
    assert r.status_code == 404, r.text


def test_patch_of_a_deleted_resource_is_410(client, patient):
    assert client.delete(f"/Patient/{patient['id']}").status_code in (200, 204)
    before = newest_history_entry(client)
    r = json_patch(client, patient, [{"op": "replace", "path": "/gender", "value": "female"}])
    assert r.status_code == 410, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    r = fhirpath_patch(client, patient, op("replace", "Patient.gender", value={"valueCode": "other"}))
    assert r.status_code == 410, r.text
    assert newest_history_entry(client) == before


@pytest.mark.parametrize("content_type", ["text/plain", "application/merge-patch+json", "application/xml-patch+xml",
                                          "application/x-www-form-urlencoded"])
def test_unsupported_content_type_is_415(client, patient, unchanged, content_type):
    r = client.patch(f"/Patient/{patient['id']}", content=b'[{"op": "replace", "path": "/gender", "value": "other"}]',
                     headers={"Content-Type": content_type})
    unprocessable(client, r, patient, 415)


def test_prefer_return_minimal(client, patient):
    r = json_patch(client, patient, [{"op": "replace", "path": "/gender", "value": "female"}],
                   headers={"Prefer": "return=minimal"})
    assert r.status_code == 200 and r.content == b""
    assert r.headers["etag"] == 'W/"2"'
    assert current(client, patient)["gender"] == "female"


def test_patched_resource_is_reindexed_for_search(client, patient):
    value = uid()
    patched(json_patch(client, patient, [{"op": "add", "path": "/identifier/-",
                                          "value": {"system": "urn:oid:1.2.3", "value": value}}]), patient)
    r = client.get("/Patient", params={"identifier": f"urn:oid:1.2.3|{value}"})
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [patient["id"]]


# ---------------------------------------------------------------- conditional patch


def test_conditional_patch(client):
    value = uid()
    pid = f"pt-{uid()}"
    assert client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "gender": "male",
                                                "identifier": [{"system": "urn:oid:1.2.3", "value": value}]}
                      ).status_code == 201
    r = client.patch(f"/Patient?identifier=urn:oid:1.2.3|{value}",
                     json=[{"op": "replace", "path": "/gender", "value": "female"}], headers=JSON_PATCH)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == pid and r.json()["gender"] == "female" and r.json()["meta"]["versionId"] == "2"


def test_conditional_patch_with_two_matches_is_412(client, unchanged_after_setup):
    value, ids = unchanged_after_setup
    r = client.patch(f"/Patient?identifier=urn:oid:1.2.3|{value}",
                     json=[{"op": "replace", "path": "/gender", "value": "female"}], headers=JSON_PATCH)
    assert r.status_code == 412, r.text


def test_conditional_patch_with_no_match_is_404(client, unchanged):
    r = client.patch(f"/Patient?identifier=urn:oid:1.2.3|{uid()}",
                     json=[{"op": "replace", "path": "/gender", "value": "female"}], headers=JSON_PATCH)
    assert r.status_code == 404, r.text


@pytest.fixture
def unchanged_after_setup(client):
    value = uid()
    ids = []
    for _ in range(2):
        pid = f"pt-{uid()}"
        client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                            "identifier": [{"system": "urn:oid:1.2.3", "value": value}]})
        ids.append(pid)
    before = newest_history_entry(client)
    yield value, ids
    assert newest_history_entry(client) == before


def test_capability_statement_declares_patch(client):
    resources = {r["type"]: r for r in client.get("/metadata").json()["rest"][0]["resource"]}
    assert "patch" in {i["code"] for i in resources["Patient"]["interaction"]}
