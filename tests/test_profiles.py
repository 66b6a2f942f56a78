"""Profiles: $validate against the base model, the profile named by `profile` and those in meta.profile
(cardinality, fixed and pattern values, slices, choice types, required bindings, invariants), at type
and instance level; and creates/updates that claim a known profile must conform (422, nothing written)."""

from __future__ import annotations

import copy
import random
import uuid

import pytest

A = "http://alliance.example.org/fhir"
PATIENT_PROFILE = f"{A}/StructureDefinition/alliance-patient"
BP_PROFILE = f"{A}/StructureDefinition/alliance-blood-pressure"
ORG_PROFILE = f"{A}/StructureDefinition/alliance-organization"
RID = "urn:oid:2.16.156.10011.1.1"
CARD = "urn:oid:2.16.156.10011.1.19"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

PATIENT = {
    "resourceType": "Patient",
    "meta": {"profile": [PATIENT_PROFILE]},
    "identifier": [{"system": CARD, "value": "H0001"}, {"system": RID, "value": "11010519491231002X"}],
    "name": [{"family": "王", "given": ["丽"]}],
    "gender": "female",
    "birthDate": "1949-12-31",
}


def component(code: str, value: float, unit: str = "mm[Hg]") -> dict:
    return {
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


BLOOD_PRESSURE = {
    "resourceType": "Observation",
    "meta": {"profile": [BP_PROFILE]},
    "status": "final",
    "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}], "text": "BP"},
    "subject": {"reference": "Patient/bp-subject"},
    "effectiveDateTime": "2026-01-05T09:30:00+08:00",
    "interpretation": [{"coding": [{"system": INTERPRETATION, "code": "H"}]}],
    "component": [component("8480-6", 152), component("8462-4", 96)],
}


def changed(resource: dict, **fields) -> dict:
    """A copy with fields replaced (None: removed); a Patient gets a resident ID number of its own, as
    the server refuses a second active Patient with the same one."""
    out = copy.deepcopy(resource)
    for identifier in out.get("identifier", []) if out.get("resourceType") == "Patient" else []:
        if identifier.get("system") == RID:
            identifier["value"] = f"{random.randrange(10**16, 10**17)}X"
    for key, value in fields.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def issues(response) -> list[dict]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"]


def errors(response) -> dict[str, str]:
    """expression -> diagnostics of every error issue."""
    return {i["expression"][0]: i["diagnostics"] for i in issues(response) if i["severity"] == "error"}


def test_valid_resources_are_all_ok(client):
    for rt, resource in (("Patient", PATIENT), ("Observation", BLOOD_PRESSURE)):
        found = issues(client.post(f"/{rt}/$validate", json=resource))
        assert found == [{"severity": "information", "code": "informational", "diagnostics": "All OK"}]
    organization = {
        "resourceType": "Organization",
        "name": "青山村卫生室",
        "type": [{"coding": [{"system": f"{A}/CodeSystem/organization-level", "code": "village"}]}],
    }
    assert (
        issues(client.post("/Organization/$validate", params={"profile": ORG_PROFILE}, json=organization))[0][
            "severity"
        ]
        == "information"
    )


def test_patient_profile_issues(client, unchanged):
    patient = changed(
        PATIENT,
        name=None,
        birthDate=None,
        gender=None,
        identifier=[{"system": RID, "value": "123"}, {"system": RID, "value": "110105194912310021"}],
    )
    found = errors(client.post("/Patient/$validate", json=patient))
    assert set(found) == {
        "Patient.identifier",
        "Patient.identifier[0]",
        "Patient.name",
        "Patient.gender",
        "Patient.birthDate",
    }
    assert "slice 'residentId'" in found["Patient.identifier"] and "at most 1" in found["Patient.identifier"]
    assert "alliance-pat-1" in found["Patient.identifier[0]"]
    assert "at least 1" in found["Patient.name"] and PATIENT_PROFILE in found["Patient.name"]


def test_patient_without_resident_id(client, unchanged):
    found = errors(
        client.post("/Patient/$validate", json=changed(PATIENT, identifier=[{"system": CARD, "value": "H1"}]))
    )
    assert list(found) == ["Patient.identifier"] and "slice 'residentId'" in found["Patient.identifier"]


def test_blood_pressure_profile_issues(client, unchanged):
    bp = changed(
        BLOOD_PRESSURE,
        code={"coding": [{"system": LOINC, "code": "8867-4"}]},
        effectiveDateTime=None,
        interpretation=[{"coding": [{"system": INTERPRETATION, "code": "XX"}]}],
        component=[
            component("8480-6", 150, "mmHg"),
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueString": "90"},
        ],
    )
    found = errors(client.post("/Observation/$validate", json=bp))
    assert set(found) == {
        "Observation.code",
        "Observation.effective",
        "Observation.interpretation[0]",
        "Observation.component[0].valueQuantity.code",
        "Observation.component[1].valueString",
        "Observation.component[1].valueQuantity",
    }
    assert "85354-9" in found["Observation.code"]
    assert "'mm[Hg]'" in found["Observation.component[0].valueQuantity.code"]
    assert (
        "observation-interpretation" in found["Observation.interpretation[0]"]
        and "XX" in found["Observation.interpretation[0]"]
    )


def test_blood_pressure_missing_diastolic(client, unchanged):
    found = errors(
        client.post("/Observation/$validate", json=changed(BLOOD_PRESSURE, component=[component("8480-6", 1)]))
    )
    assert set(found) == {"Observation.component"}
    assert "at least 2" in found["Observation.component"] or "diastolic" in found["Observation.component"]


def test_base_model_errors_come_first_and_together(client, unchanged):
    bp = changed(BLOOD_PRESSURE, issued="yesterday", component=[component("8480-6", 1)])
    found = issues(client.post("/Observation/$validate", json=bp))
    expressions = [i["expression"][0] for i in found]
    assert expressions[0] == "Observation.issued" and "Observation.component" in expressions


def test_parameters_body_mode_and_profile(client, unchanged):
    org = {
        "resourceType": "Organization",
        "name": "x",
        "type": [{"coding": [{"system": f"{A}/CodeSystem/organization-level", "code": "city"}]}],
    }
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": org},
            {"name": "mode", "valueCode": "create"},
            {"name": "profile", "valueUri": ORG_PROFILE},
        ],
    }
    found = errors(client.post("/Organization/$validate", json=body))
    assert list(found) == ["Organization.type[0]"] and "city" in found["Organization.type[0]"]
    # without a profile the same organization is valid FHIR
    assert issues(client.post("/Organization/$validate", json=org))[0]["diagnostics"] == "All OK"


def test_instance_level_validates_the_stored_resource_or_the_body(client):
    stored = client.post("/Patient", json=changed(PATIENT, meta=None, name=None)).json()
    pid = stored["id"]
    found = errors(client.get(f"/Patient/{pid}/$validate", params={"profile": PATIENT_PROFILE}))
    assert list(found) == ["Patient.name"]
    assert issues(client.post(f"/Patient/{pid}/$validate", json=changed(PATIENT, id=pid)))[0]["diagnostics"] == "All OK"
    wrong_id = errors(client.post(f"/Patient/{pid}/$validate", json=changed(PATIENT, id="other")))
    assert "other" in wrong_id["Patient.id"]
    assert (
        issues(
            client.post(
                f"/Patient/{pid}/$validate",
                json={"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "delete"}]},
            )
        )[0]["severity"]
        == "information"
    )


def test_unknown_declared_profile_is_a_warning(client, unchanged):
    patient = changed(PATIENT, meta={"profile": ["http://example.org/StructureDefinition/none"]})
    found = issues(client.post("/Patient/$validate", json=patient))
    assert found[0]["severity"] == "warning" and found[0]["expression"] == ["Patient.meta.profile[0]"]


@pytest.mark.parametrize(
    "path, params, body, status, expression",
    [
        ("/Patient/$validate", {"profile": "http://example.org/StructureDefinition/none"}, PATIENT, 400, ["profile"]),
        ("/Patient/$validate", {"mode": "merge"}, PATIENT, 400, ["mode"]),
        ("/Patient/$validate", {}, {"resourceType": "Parameters", "parameter": []}, 400, ["resource"]),
        ("/Patient/$validate", {}, BLOOD_PRESSURE, 400, ["resourceType"]),
        ("/Patient/no-such-patient/$validate", {}, None, 404, None),
        ("/NoSuchType/$validate", {}, PATIENT, 404, None),
    ],
)
def test_validate_failures(client, unchanged, path, params, body, status, expression):
    r = client.post(path, params=params, json=body) if body is not None else client.post(path, params=params)
    assert r.status_code == status, r.text
    issue = r.json()["issue"][0]
    assert issue["severity"] == "error"
    if expression:
        assert issue["expression"] == expression


def test_validate_never_writes(client, unchanged):
    for resource in (PATIENT, changed(PATIENT, name=None)):
        client.post("/Patient/$validate", json=resource)


def test_profile_for_another_type(client, unchanged):
    found = errors(
        client.post(
            "/Organization/$validate",
            params={"profile": PATIENT_PROFILE},
            json={"resourceType": "Organization", "name": "x"},
        )
    )
    assert "is for Patient" in found["Organization"]


# ---------------------------------------------------------------- writes that claim a profile


def test_create_and_update_must_conform_to_a_claimed_profile(client, unchanged):
    bad = changed(PATIENT, birthDate=None)
    r = client.post("/Patient", json=bad)
    assert r.status_code == 422, r.text
    assert [i["expression"] for i in r.json()["issue"]] == [["Patient.birthDate"]]
    pid = f"p-{uuid.uuid4().hex[:10]}"
    r = client.put(f"/Patient/{pid}", json=changed(bad, id=pid))
    assert r.status_code == 422 and client.get(f"/Patient/{pid}").status_code == 404
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"fullUrl": "urn:uuid:1", "resource": bad, "request": {"method": "POST", "url": "Patient"}}],
    }
    assert client.post("/", json=bundle).status_code == 422


def test_conforming_writes_and_update_that_breaks_conformance(client):
    r = client.post("/Observation", json=BLOOD_PRESSURE)
    assert r.status_code == 201, r.text
    stored = r.json()
    broken = changed(stored, interpretation=[{"coding": [{"system": INTERPRETATION, "code": "XX"}]}])
    r = client.put(f"/Observation/{stored['id']}", json=broken)
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["Observation.interpretation[0]"]
    assert client.get(f"/Observation/{stored['id']}").json()["meta"]["versionId"] == "1"
    patch = [{"op": "remove", "path": "/effectiveDateTime"}]
    r = client.patch(
        f"/Observation/{stored['id']}", json=patch, headers={"Content-Type": "application/json-patch+json"}
    )
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["Observation.effective"]
    unknown = changed(PATIENT, meta={"profile": ["http://example.org/StructureDefinition/none"]}, name=None)
    assert client.post("/Patient", json=unknown).status_code == 201  # an unknown profile is not enforced


def test_a_user_profile_is_enforced_once_posted(client):
    url = f"http://clinic.example/StructureDefinition/{uuid.uuid4().hex}"
    profile = {
        "resourceType": "StructureDefinition",
        "url": url,
        "name": "ClinicFlag",
        "status": "active",
        "kind": "resource",
        "abstract": False,
        "type": "Flag",
        "derivation": "constraint",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Flag",
        "differential": {
            "element": [
                {"id": "Flag", "path": "Flag"},
                {"id": "Flag.period", "path": "Flag.period", "min": 1},
                {"id": "Flag.category", "path": "Flag.category", "max": "1"},
            ]
        },
    }
    assert client.post("/StructureDefinition", json=profile).status_code == 201
    flag = {
        "resourceType": "Flag",
        "meta": {"profile": [url]},
        "status": "active",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/x"},
        "category": [{"text": "a"}, {"text": "b"}],
    }
    r = client.post("/Flag", json=flag)
    assert r.status_code == 422
    assert sorted(i["expression"][0] for i in r.json()["issue"]) == ["Flag.category", "Flag.period"]
