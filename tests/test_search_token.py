"""Token search: code, Coding, CodeableConcept, Identifier and boolean; `system|code`, `|code`, `system|`,
bare code; the modifiers `:not`, `:text`, `:of-type`, `:missing`; OR with commas."""

from __future__ import annotations

import pytest
from conftest import on_every_layout
from search_data import LOINC, V2_0203, concept, ids, observation, patient, put_all

pytestmark = on_every_layout("fresh_server")

MRN = "http://alliance.example/mrn"
NHID = "http://alliance.example/nhid"
LOCAL = "http://alliance.example/codes"


def _mr(value: str) -> dict:
    return {"type": {"coding": [{"system": V2_0203, "code": "MR"}]}, "system": MRN, "value": value}


PATIENTS = [
    patient("t-m1", "Male", gender="male", active=True, identifier=[_mr("12345")]),
    patient("t-f1", "Female", gender="female", active=False, identifier=[{"system": NHID, "value": "12345"}]),
    patient("t-f2", "Female", gender="female", identifier=[{"value": "12345"}]),
    patient("t-o", "Other", gender="other", identifier=[_mr("67890"),
                                                        {"type": {"coding": [{"system": V2_0203, "code": "NI"}]},
                                                         "system": NHID, "value": "12345"}]),
    patient("t-u", "Unknown"),
]
ALL_PATIENTS = {p["id"] for p in PATIENTS}

OBSERVATIONS = [
    observation("o-sys", concept(LOINC, "8480-6", "Systolic blood pressure")),
    observation("o-sys-local", concept(LOCAL, "8480-6", text="Blood pressure systolic")),
    observation("o-glu", concept(LOINC, "2339-0", "Glucose [Mass/volume] in Blood", text="Blood glucose")),
    observation("o-hr", concept(LOINC, "8867-4", "Heart rate")),
    observation("o-nosys", {"coding": [{"code": "8867-4"}]}),
]
ALL_OBS = {o["id"] for o in OBSERVATIONS}


@pytest.fixture(scope="module")
def api(fresh_client):
    put_all(fresh_client, PATIENTS + OBSERVATIONS)
    return fresh_client


# ---------------------------------------------------------------- code (Patient.gender)


@pytest.mark.parametrize("value, expected", [
    ("male", {"t-m1"}),
    ("female", {"t-f1", "t-f2"}),
    ("male,female", {"t-m1", "t-f1", "t-f2"}),
    ("female,other", {"t-f1", "t-f2", "t-o"}),
    ("http://hl7.org/fhir/administrative-gender|male", {"t-m1"}),
    ("unknown", set()),
])
def test_gender(api, value, expected):
    assert ids(api, "/Patient", {"gender": value}) == expected


def test_gender_not_includes_resources_without_a_value(api):
    # R4: :not returns every resource that does not match, including those with no value at all
    assert ids(api, "/Patient", {"gender:not": "male"}) == {"t-f1", "t-f2", "t-o", "t-u"}


def test_gender_missing(api):
    assert ids(api, "/Patient", {"gender:missing": "true"}) == {"t-u"}
    assert ids(api, "/Patient", {"gender:missing": "false"}) == ALL_PATIENTS - {"t-u"}


# ---------------------------------------------------------------- Identifier


@pytest.mark.parametrize("value, expected", [
    (f"{MRN}|12345", {"t-m1"}),
    (f"{NHID}|12345", {"t-f1", "t-o"}),
    ("|12345", {"t-f2"}),  # explicitly no system
    (f"{MRN}|", {"t-m1", "t-o"}),  # any value in the system
    ("12345", {"t-m1", "t-f1", "t-f2", "t-o"}),  # any system
    ("67890", {"t-o"}),
    ("1234", set()),  # tokens are not prefixes
    (f"{MRN}|67890,|12345", {"t-o", "t-f2"}),
])
def test_identifier(api, value, expected):
    assert ids(api, "/Patient", {"identifier": value}) == expected


@pytest.mark.parametrize("value, expected", [
    (f"{V2_0203}|MR|12345", {"t-m1"}),
    (f"{V2_0203}|MR|67890", {"t-o"}),
    (f"{V2_0203}|NI|12345", {"t-o"}),
    (f"{V2_0203}|NI|67890", set()),  # type and value must hold on the same Identifier
    (f"{V2_0203}|MR|99999", set()),
])
def test_identifier_of_type(api, value, expected):
    assert ids(api, "/Patient", {"identifier:of-type": value}) == expected


def test_identifier_missing(api):
    assert ids(api, "/Patient", {"identifier:missing": "true"}) == {"t-u"}


# ---------------------------------------------------------------- boolean


def test_boolean_active(api):
    assert ids(api, "/Patient", {"active": "true"}) == {"t-m1"}
    assert ids(api, "/Patient", {"active": "false"}) == {"t-f1"}
    assert ids(api, "/Patient", {"active:missing": "true"}) == {"t-f2", "t-o", "t-u"}
    assert ids(api, "/Patient", {"active:missing": "false"}) == {"t-m1", "t-f1"}


# ---------------------------------------------------------------- CodeableConcept (Observation.code)


@pytest.mark.parametrize("value, expected", [
    (f"{LOINC}|8480-6", {"o-sys"}),
    ("8480-6", {"o-sys", "o-sys-local"}),
    (f"{LOCAL}|8480-6", {"o-sys-local"}),
    (f"{LOINC}|", {"o-sys", "o-glu", "o-hr"}),
    ("|8867-4", {"o-nosys"}),
    ("8867-4", {"o-hr", "o-nosys"}),
    (f"{LOINC}|8480-6,{LOINC}|8867-4", {"o-sys", "o-hr"}),
    (f"{LOINC}|8480", set()),
])
def test_observation_code(api, value, expected):
    assert ids(api, "/Observation", {"code": value}) == expected


def test_code_not(api):
    assert ids(api, "/Observation", {"code:not": f"{LOINC}|8480-6"}) == ALL_OBS - {"o-sys"}
    assert ids(api, "/Observation", {"code:not": "8867-4"}) == {"o-sys", "o-sys-local", "o-glu"}


@pytest.mark.parametrize("value, expected", [
    ("systolic", {"o-sys"}),  # Coding.display "Systolic blood pressure"
    ("SYSTOLIC BLOOD", {"o-sys"}),
    ("blood", {"o-sys-local", "o-glu"}),  # CodeableConcept.text
    ("glucose", {"o-glu"}),  # Coding.display "Glucose [Mass/volume] in Blood"
    ("heart", {"o-hr"}),
    ("8480-6", set()),  # :text never matches the code itself
])
def test_code_text(api, value, expected):
    assert ids(api, "/Observation", {"code:text": value}) == expected
