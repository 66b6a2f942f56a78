"""Number search (RiskAssessment.prediction.probability) and quantity search (Observation value-quantity):
prefixes, the implicit precision of the search value (0.8 means [0.75, 0.85)), and the unit forms
`value|system|code`, `value||code` (code or unit) and `value` alone. UCUM normalisation has its own module."""

from __future__ import annotations

import pytest
from conftest import on_every_layout
from search_data import LOINC, UCUM, concept, ids, observation, patient, put_all

pytestmark = on_every_layout("fresh_server")

RISKS = {"ra-02": 0.2, "ra-05": 0.5, "ra-078": 0.78, "ra-080": 0.80, "ra-085": 0.85}


def _risk(rid: str, probability: float | None) -> dict:
    prediction = {"outcome": {"text": "Stroke"}}
    if probability is None:
        prediction["qualitativeRisk"] = {"text": "moderate"}
    else:
        prediction["probabilityDecimal"] = probability
    return {"resourceType": "RiskAssessment", "id": rid, "status": "final",
            "subject": {"reference": "Patient/p-risk"}, "prediction": [prediction]}


GLUCOSE = concept(LOINC, "2339-0", "Glucose [Mass/volume] in Blood")

OBSERVATIONS = [
    observation("q-54mg", GLUCOSE, valueQuantity={"value": 5.4, "unit": "mg", "system": UCUM, "code": "mg"}),
    observation("q-72mg", GLUCOSE, valueQuantity={"value": 7.2, "unit": "mg", "system": UCUM, "code": "mg"}),
    observation("q-31mg", GLUCOSE, valueQuantity={"value": 3.1, "unit": "mg", "system": UCUM, "code": "mg"}),
    observation("q-54mmol", GLUCOSE, valueQuantity={"value": 5.4, "unit": "mmol/L", "system": UCUM,
                                                    "code": "mmol/L"}),
    observation("q-54-unit-only", GLUCOSE, valueQuantity={"value": 5.4, "unit": "mg"}),  # no system, no code
    observation("q-54-local", GLUCOSE, valueQuantity={"value": 5.4, "unit": "milligram",
                                                      "system": "http://alliance.example/units", "code": "mg"}),
    observation("q-none", GLUCOSE, valueString="not measured"),
]
ALL_OBS = {o["id"] for o in OBSERVATIONS}


@pytest.fixture(scope="module")
def api(fresh_client):
    put_all(fresh_client, [patient("p-risk", "Risk")] + [_risk(k, v) for k, v in RISKS.items()]
            + [_risk("ra-none", None)] + OBSERVATIONS)
    return fresh_client


# ---------------------------------------------------------------- number


@pytest.mark.parametrize("value, expected", [
    ("0.8", {"ra-078", "ra-080"}),  # [0.75, 0.85): 0.78 in, 0.85 out
    ("eq0.8", {"ra-078", "ra-080"}),
    ("0.80", {"ra-080"}),  # [0.795, 0.805)
    ("0.5", {"ra-05"}),
    ("0.85", {"ra-085"}),
    ("0.9", {"ra-085"}),  # [0.85, 0.95): the lower bound is included
    ("0.2,0.85", {"ra-02", "ra-085"}),
])
def test_probability_eq_uses_implicit_precision(api, value, expected):
    assert ids(api, "/RiskAssessment", {"probability": value}) == expected


@pytest.mark.parametrize("value, expected", [
    ("gt0.5", {"ra-078", "ra-080", "ra-085"}),
    ("ge0.5", {"ra-05", "ra-078", "ra-080", "ra-085"}),
    ("lt0.5", {"ra-02"}),
    ("le0.5", {"ra-05", "ra-02"}),
    ("ne0.8", {"ra-02", "ra-05", "ra-085"}),
    ("gt0.9", set()),
])
def test_probability_prefixes(api, value, expected):
    assert ids(api, "/RiskAssessment", {"probability": value}) == expected


def test_probability_and(api):
    assert ids(api, "/RiskAssessment", [("probability", "gt0.5"), ("probability", "lt0.82")]) == {
        "ra-078", "ra-080"}


def test_probability_missing(api):
    assert ids(api, "/RiskAssessment", {"probability:missing": "true"}) == {"ra-none"}
    assert ids(api, "/RiskAssessment", {"probability:missing": "false"}) == set(RISKS)


# ---------------------------------------------------------------- quantity


@pytest.mark.parametrize("value, expected", [
    (f"5.4|{UCUM}|mg", {"q-54mg"}),
    (f"eq5.4|{UCUM}|mg", {"q-54mg"}),
    (f"5|{UCUM}|mg", {"q-54mg"}),  # 5 means [4.5, 5.5)
    (f"5.40|{UCUM}|mg", {"q-54mg"}),
    (f"5.4|{UCUM}|mmol/L", {"q-54mmol"}),
    ("5.4|http://alliance.example/units|mg", {"q-54-local"}),
    (f"7.2|{UCUM}|mmol/L", set()),
])
def test_value_quantity_with_system_and_code(api, value, expected):
    assert ids(api, "/Observation", {"value-quantity": value}) == expected


@pytest.mark.parametrize("value, expected", [
    (f"gt5|{UCUM}|mg", {"q-54mg", "q-72mg"}),
    (f"ge5.4|{UCUM}|mg", {"q-54mg", "q-72mg"}),
    (f"lt5|{UCUM}|mg", {"q-31mg"}),
    (f"le5.4|{UCUM}|mg", {"q-31mg", "q-54mg"}),
    (f"ne5.4|{UCUM}|mg", {"q-31mg", "q-72mg"}),
    (f"gt100|{UCUM}|mg", set()),
])
def test_value_quantity_prefixes(api, value, expected):
    assert ids(api, "/Observation", {"value-quantity": value}) == expected


def test_value_quantity_code_or_unit_without_system(api):
    # value||code: the code, or the human unit, is "mg", in any (or no) system
    assert ids(api, "/Observation", {"value-quantity": "5.4||mg"}) == {"q-54mg", "q-54-unit-only", "q-54-local"}


def test_value_quantity_value_only(api):
    assert ids(api, "/Observation", {"value-quantity": "5.4"}) == {
        "q-54mg", "q-54mmol", "q-54-unit-only", "q-54-local"}
    assert ids(api, "/Observation", {"value-quantity": "gt7"}) == {"q-72mg"}


def test_value_quantity_or_and(api):
    assert ids(api, "/Observation", {"value-quantity": f"3.1|{UCUM}|mg,7.2|{UCUM}|mg"}) == {"q-31mg", "q-72mg"}
    assert ids(api, "/Observation", [("value-quantity", f"gt3|{UCUM}|mg"),
                                     ("value-quantity", f"lt6|{UCUM}|mg")]) == {"q-31mg", "q-54mg"}


def test_value_quantity_missing(api):
    assert ids(api, "/Observation", {"value-quantity:missing": "true"}) == {"q-none"}
    assert ids(api, "/Observation", {"value-quantity:missing": "false"}) == ALL_OBS - {"q-none"}
