"""UCUM normalisation in quantity search: a value stored in one UCUM unit is found by an equivalent value in
another unit of the same dimension (R4 search.html, quantity: servers MAY/SHOULD canonicalise UCUM units).
A module of its own, so that a server without normalisation fails only here."""

from __future__ import annotations

import pytest
from conftest import on_every_layout
from search_data import LOINC, UCUM, concept, ids, observation, put_all

pytestmark = on_every_layout("fresh_server")

GLUCOSE = concept(LOINC, "2339-0", "Glucose [Mass/volume] in Blood")

OBSERVATIONS = [
    observation("u-5400ug", GLUCOSE, valueQuantity={"value": 5400, "unit": "µg", "system": UCUM, "code": "ug"}),
    observation("u-54mg", GLUCOSE, valueQuantity={"value": 5.4, "unit": "mg", "system": UCUM, "code": "mg"}),
    observation("u-0054g", GLUCOSE, valueQuantity={"value": 0.0054, "unit": "g", "system": UCUM, "code": "g"}),
    observation("u-3mg", GLUCOSE, valueQuantity={"value": 3, "unit": "mg", "system": UCUM, "code": "mg"}),
    observation("u-54mmol", GLUCOSE, valueQuantity={"value": 5.4, "unit": "mmol/L", "system": UCUM,
                                                    "code": "mmol/L"}),
]


@pytest.fixture(scope="module")
def api(fresh_client):
    put_all(fresh_client, OBSERVATIONS)
    return fresh_client


@pytest.mark.parametrize("value, expected", [
    (f"5.4|{UCUM}|mg", {"u-5400ug", "u-54mg", "u-0054g"}),
    (f"5400|{UCUM}|ug", {"u-5400ug", "u-54mg", "u-0054g"}),
    (f"0.0054|{UCUM}|g", {"u-5400ug", "u-54mg", "u-0054g"}),
    (f"gt5|{UCUM}|mg", {"u-5400ug", "u-54mg", "u-0054g"}),
    (f"lt4000|{UCUM}|ug", {"u-3mg"}),
    (f"5.4|{UCUM}|mmol/L", {"u-54mmol"}),  # another dimension is never converted into mass
])
def test_value_quantity_ucum_normalised(api, value, expected):
    assert ids(api, "/Observation", {"value-quantity": value}) == expected
