"""Composite search (`code$value`, both parts holding on the SAME component) and uri search (exact by
default, `:below`, `:above`, `:missing`)."""

from __future__ import annotations

import pytest
from conftest import on_every_layout
from search_data import LOINC, UCUM, concept, ids, observation, put_all

pytestmark = on_every_layout("fresh_server")

SYSTOLIC = concept(LOINC, "8480-6", "Systolic blood pressure")
DIASTOLIC = concept(LOINC, "8462-4", "Diastolic blood pressure")
BP_PANEL = concept(LOINC, "85354-9", "Blood pressure panel with all children optional")


def _mmhg(value: int) -> dict:
    return {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}


def _bp(oid: str, systolic: int, diastolic: int) -> dict:
    return observation(oid, BP_PANEL, component=[{"code": SYSTOLIC, "valueQuantity": _mmhg(systolic)},
                                                 {"code": DIASTOLIC, "valueQuantity": _mmhg(diastolic)}])


OBSERVATIONS = [
    _bp("bp-150", 150, 90),
    _bp("bp-120", 120, 80),
    _bp("bp-dia150", 110, 150),  # a high value, but on the diastolic component
    observation("sys-150", SYSTOLIC, valueQuantity=_mmhg(150)),  # a stand-alone systolic observation
    observation("sys-120", SYSTOLIC, valueQuantity=_mmhg(120)),
]

VS = "http://alliance.example/fhir/ValueSet"


def _value_set(vid: str, url: str | None) -> dict:
    resource = {"resourceType": "ValueSet", "id": vid, "status": "active"}
    if url:
        resource["url"] = url
    return resource


VALUE_SETS = [
    _value_set("vs-gender", f"{VS}/gender"),
    _value_set("vs-lab", f"{VS}/lab"),
    _value_set("vs-glucose", f"{VS}/lab/glucose"),
    _value_set("vs-other", "http://other.example/fhir/ValueSet/gender"),
    _value_set("vs-sibling", "http://alliance.example/fhir/ValueSetDrafts/gender"),
    _value_set("vs-nourl", None),
]
CODE_SYSTEMS = [{"resourceType": "CodeSystem", "id": "cs-lab", "status": "active", "content": "complete",
                 "url": "http://alliance.example/fhir/CodeSystem/lab"}]


@pytest.fixture(scope="module")
def api(fresh_client):
    put_all(fresh_client, OBSERVATIONS + VALUE_SETS + CODE_SYSTEMS)
    return fresh_client


# ---------------------------------------------------------------- composite


@pytest.mark.parametrize("value, expected", [
    (f"{LOINC}|8480-6$gt140", {"bp-150"}),  # not bp-dia150: its 150 is the diastolic component's
    (f"{LOINC}|8462-4$gt140", {"bp-dia150"}),
    (f"{LOINC}|8480-6$lt130", {"bp-120", "bp-dia150"}),
    (f"{LOINC}|8480-6$150|{UCUM}|mm[Hg]", {"bp-150"}),
    (f"{LOINC}|8480-6$150", {"bp-150"}),
    (f"{LOINC}|8480-6$gt200", set()),
    (f"{LOINC}|8480-6$gt140,{LOINC}|8462-4$gt140", {"bp-150", "bp-dia150"}),
])
def test_component_code_value_quantity(api, value, expected):
    assert ids(api, "/Observation", {"component-code-value-quantity": value}) == expected


def test_separate_component_parameters_may_match_different_components(api):
    # the contrast with the composite: here code and value may come from two components
    assert ids(api, "/Observation", {"component-code": f"{LOINC}|8480-6",
                                     "component-value-quantity": "gt140"}) == {"bp-150", "bp-dia150"}


def test_code_value_quantity_is_on_the_observation_itself(api):
    assert ids(api, "/Observation", {"code-value-quantity": f"{LOINC}|8480-6$gt140"}) == {"sys-150"}
    assert ids(api, "/Observation", {"code-value-quantity": f"{LOINC}|8480-6$120"}) == {"sys-120"}


def test_combo_code_value_quantity_covers_both(api):
    assert ids(api, "/Observation", {"combo-code-value-quantity": f"{LOINC}|8480-6$gt140"}) == {
        "bp-150", "sys-150"}


# ---------------------------------------------------------------- uri


@pytest.mark.parametrize("params, expected", [
    ({"url": f"{VS}/lab"}, {"vs-lab"}),  # exact: no prefix matching by default
    ({"url": VS}, set()),
    ({"url": f"{VS}/LAB"}, set()),  # uris are case-sensitive
    ({"url:below": VS}, {"vs-gender", "vs-lab", "vs-glucose"}),  # not .../ValueSetDrafts/...
    ({"url:below": f"{VS}/lab"}, {"vs-lab", "vs-glucose"}),
    ({"url:below": "http://alliance.example/fhir"}, {"vs-gender", "vs-lab", "vs-glucose", "vs-sibling"}),
    ({"url:above": f"{VS}/lab/glucose/v2"}, {"vs-lab", "vs-glucose"}),
    ({"url:above": f"{VS}/lab/glucose"}, {"vs-lab", "vs-glucose"}),
    ({"url:above": f"{VS}/lab"}, {"vs-lab"}),
    ({"url:missing": "true"}, {"vs-nourl"}),
    ({"url": f"{VS}/gender,http://other.example/fhir/ValueSet/gender"}, {"vs-gender", "vs-other"}),
], ids=lambda v: str(v))
def test_value_set_url(api, params, expected):
    assert ids(api, "/ValueSet", params) == expected


def test_code_system_url_below(api):
    assert ids(api, "/CodeSystem", {"url:below": "http://alliance.example/fhir"}) == {"cs-lab"}
