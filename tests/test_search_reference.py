"""Reference search, chaining, reverse chaining (_has), _include / _revinclude / _include:iterate, and the
patient compartment search."""

from __future__ import annotations

import pytest
from conftest import on_every_layout
from search_data import (
    LOINC,
    base_of,
    concept,
    entries,
    ids,
    include_refs,
    match_ids,
    observation,
    organization,
    patient,
    put_all,
    ref,
    search,
)

pytestmark = on_every_layout("fresh_server")

SYSTOLIC = concept(LOINC, "8480-6", "Systolic blood pressure")
GLUCOSE = concept(LOINC, "2339-0", "Glucose [Mass/volume] in Blood")
PANEL = concept(LOINC, "24323-8", "Comprehensive metabolic panel")

RESOURCES = [
    organization("org-a", "Anyang County Hospital"),
    organization("org-b", "Township Health Centre"),
    patient("p-wang", "Wang", ["Wei"], gender="male", managingOrganization=ref("Organization/org-a")),
    patient("p-li", "Li", ["Xiaohong"], gender="female", managingOrganization=ref("Organization/org-b")),
    {"resourceType": "Group", "id": "g-1", "type": "person", "actual": True},
    {"resourceType": "Location", "id": "loc-1", "name": "Wangfujing Clinic"},
    {"resourceType": "Practitioner", "id": "pr-1", "name": [{"family": "Zhou"}]},
    observation("obs-wang-1", SYSTOLIC, "Patient/p-wang", performer=[ref("Practitioner/pr-1")]),
    observation("obs-wang-2", GLUCOSE, "Patient/p-wang"),
    observation("obs-li", SYSTOLIC, "Patient/p-li"),
    observation("obs-group", SYSTOLIC, "Group/g-1"),
    observation("obs-loc", SYSTOLIC, "Location/loc-1"),
    observation("obs-logical", SYSTOLIC, {"identifier": {"system": "urn:oid:1.2.3", "value": "12345"}}),
    observation("obs-none", SYSTOLIC),
    {"resourceType": "DiagnosticReport", "id": "dr-1", "status": "final", "code": PANEL,
     "subject": ref("Patient/p-li"), "result": [ref("Observation/obs-li")]},
    {"resourceType": "MedicationRequest", "id": "mr-1", "status": "active", "intent": "order",
     "medicationCodeableConcept": {"text": "Metformin 500 mg"}, "subject": ref("Patient/p-li")},
    {"resourceType": "MedicationDispense", "id": "md-1", "status": "completed",
     "medicationCodeableConcept": {"text": "Metformin 500 mg"},
     "authorizingPrescription": [ref("MedicationRequest/mr-1")]},
]
ALL_OBS = {r["id"] for r in RESOURCES if r["resourceType"] == "Observation"}
WANG_OBS = {"obs-wang-1", "obs-wang-2"}


@pytest.fixture(scope="module")
def api(fresh_client):
    put_all(fresh_client, RESOURCES)
    return fresh_client


# ---------------------------------------------------------------- reference


@pytest.mark.parametrize("params, expected", [
    ({"subject": "Patient/p-wang"}, WANG_OBS),
    ({"subject": "p-wang"}, WANG_OBS),
    ({"subject:Patient": "p-wang"}, WANG_OBS),
    ({"patient": "p-wang"}, WANG_OBS),
    ({"patient": "Patient/p-wang"}, WANG_OBS),
    ({"subject": "Group/g-1"}, {"obs-group"}),
    ({"subject:Group": "g-1"}, {"obs-group"}),
    ({"subject:Location": "loc-1"}, {"obs-loc"}),
    ({"subject:Patient": "g-1"}, set()),
    ({"patient": "g-1"}, set()),  # patient = subject where it is a Patient
    ({"subject": "Patient/p-wang,Patient/p-li"}, WANG_OBS | {"obs-li"}),
    ({"subject": "Patient/nobody"}, set()),
], ids=lambda v: str(v))
def test_subject_reference(api, params, expected):
    assert ids(api, "/Observation", params) == expected


def test_absolute_reference_to_this_server(api):
    assert ids(api, "/Observation", {"subject": f"{base_of(api)}/Patient/p-wang"}) == WANG_OBS


def test_reference_identifier_modifier(api):
    assert ids(api, "/Observation", {"subject:identifier": "urn:oid:1.2.3|12345"}) == {"obs-logical"}
    assert ids(api, "/Observation", {"subject:identifier": "urn:oid:1.2.3|99999"}) == set()


def test_reference_missing(api):
    assert ids(api, "/Observation", {"performer:missing": "false"}) == {"obs-wang-1"}
    assert ids(api, "/Observation", {"performer:missing": "true"}) == ALL_OBS - {"obs-wang-1"}


def test_patient_organization_reference(api):
    assert ids(api, "/Patient", {"organization": "org-a"}) == {"p-wang"}
    assert ids(api, "/Patient", {"organization": "Organization/org-b"}) == {"p-li"}


# ---------------------------------------------------------------- chaining


@pytest.mark.parametrize("params, expected", [
    ({"subject:Patient.name": "wang"}, WANG_OBS),  # not obs-loc, whose Location is named "Wangfujing"
    ({"subject:Location.name": "wang"}, {"obs-loc"}),
    ({"subject.family": "wang"}, WANG_OBS),  # only Patient among subject's targets has "family"
    ({"patient.family": "li"}, {"obs-li"}),
    ({"subject:Patient.gender": "female"}, {"obs-li"}),
    ({"patient.organization": "Organization/org-b"}, {"obs-li"}),
    ({"subject:Patient.name": "nobody"}, set()),
], ids=lambda v: str(v))
def test_chained(api, params, expected):
    assert ids(api, "/Observation", params) == expected


@pytest.mark.parametrize("params, expected", [
    ({"subject:Patient.organization.name": "anyang"}, WANG_OBS),
    ({"subject:Patient.organization.name": "township"}, {"obs-li"}),
    ({"patient.organization.name": "township"}, {"obs-li"}),
    ({"subject:Patient.organization.name": "nowhere"}, set()),
], ids=lambda v: str(v))
def test_two_level_chain(api, params, expected):
    assert ids(api, "/Observation", params) == expected


def test_chain_on_patient(api):
    assert ids(api, "/Patient", {"organization.name": "anyang"}) == {"p-wang"}


def test_chain_and_plain_parameter(api):
    assert ids(api, "/Observation", {"subject:Patient.name": "wang", "code": f"{LOINC}|2339-0"}) == {"obs-wang-2"}


# ---------------------------------------------------------------- reverse chaining (_has)


@pytest.mark.parametrize("params, expected", [
    ({"_has:Observation:patient:code": f"{LOINC}|8480-6"}, {"p-wang", "p-li"}),
    ({"_has:Observation:patient:code": f"{LOINC}|2339-0"}, {"p-wang"}),
    ({"_has:Observation:subject:code": f"{LOINC}|2339-0"}, {"p-wang"}),
    ({"_has:Observation:patient:code": f"{LOINC}|9999-9"}, set()),
    ({"_has:Observation:patient:_has:DiagnosticReport:result:code": f"{LOINC}|24323-8"}, {"p-li"}),
    ({"_has:MedicationRequest:subject:status": "active"}, {"p-li"}),
], ids=lambda v: str(v))
def test_has(api, params, expected):
    assert ids(api, "/Patient", params) == expected


def test_has_with_other_parameters(api):
    assert ids(api, "/Patient", {"_has:Observation:patient:code": f"{LOINC}|8480-6", "gender": "female"}) == {
        "p-li"}


# ---------------------------------------------------------------- _include / _revinclude


def test_include_subject(api):
    bundle = search(api, "/Observation", {"code": f"{LOINC}|8480-6", "_include": "Observation:subject"})
    assert match_ids(bundle) == ALL_OBS - {"obs-wang-2"}
    assert sorted(include_refs(bundle)) == ["Group/g-1", "Location/loc-1", "Patient/p-li", "Patient/p-wang"]


def test_include_subject_restricted_to_a_type(api):
    bundle = search(api, "/Observation", {"code": f"{LOINC}|8480-6", "_include": "Observation:subject:Patient"})
    assert match_ids(bundle) == ALL_OBS - {"obs-wang-2"}
    assert sorted(include_refs(bundle)) == ["Patient/p-li", "Patient/p-wang"]


def test_included_resource_appears_once(api):
    bundle = search(api, "/Observation", {"subject": "Patient/p-wang", "_include": "Observation:subject",
                                          "_total": "accurate"})
    assert match_ids(bundle) == WANG_OBS
    assert include_refs(bundle) == ["Patient/p-wang"]
    assert bundle["total"] == 2  # includes are not counted


def test_include_on_patient_search(api):
    bundle = search(api, "/Patient", {"_id": "p-wang,p-li", "_include": "Patient:organization"})
    assert match_ids(bundle) == {"p-wang", "p-li"}
    assert sorted(include_refs(bundle)) == ["Organization/org-a", "Organization/org-b"]


def test_revinclude(api):
    bundle = search(api, "/Patient", {"_id": "p-wang", "_revinclude": "Observation:subject"})
    assert match_ids(bundle) == {"p-wang"}
    assert sorted(include_refs(bundle)) == ["Observation/obs-wang-1", "Observation/obs-wang-2"]


def test_several_revincludes(api):
    bundle = search(api, "/Patient", [("_id", "p-li"), ("_revinclude", "Observation:subject"),
                                      ("_revinclude", "DiagnosticReport:subject")])
    assert match_ids(bundle) == {"p-li"}
    assert sorted(include_refs(bundle)) == ["DiagnosticReport/dr-1", "Observation/obs-li"]


def test_include_without_iterate_applies_to_matches_only(api):
    bundle = search(api, "/MedicationDispense", [("_id", "md-1"), ("_include", "MedicationDispense:prescription"),
                                                 ("_include", "MedicationRequest:subject")])
    assert match_ids(bundle) == {"md-1"}
    assert include_refs(bundle) == ["MedicationRequest/mr-1"]


def test_include_iterate_follows_included_resources(api):
    bundle = search(api, "/MedicationDispense", [("_id", "md-1"), ("_include", "MedicationDispense:prescription"),
                                                 ("_include:iterate", "MedicationRequest:subject")])
    assert match_ids(bundle) == {"md-1"}
    assert sorted(include_refs(bundle)) == ["MedicationRequest/mr-1", "Patient/p-li"]
    for entry in entries(bundle, "include"):
        assert entry["search"]["mode"] == "include"


# ---------------------------------------------------------------- compartment


def test_patient_compartment_observations(api):
    assert ids(api, "/Patient/p-wang/Observation") == WANG_OBS
    assert ids(api, "/Patient/p-li/Observation") == {"obs-li"}


def test_patient_compartment_with_parameters(api):
    assert ids(api, "/Patient/p-wang/Observation", {"code": f"{LOINC}|8480-6"}) == {"obs-wang-1"}


def test_patient_compartment_other_types(api):
    assert ids(api, "/Patient/p-li/DiagnosticReport") == {"dr-1"}
    assert ids(api, "/Patient/p-li/MedicationRequest") == {"mr-1"}
    assert ids(api, "/Patient/p-wang/MedicationRequest") == set()
