"""Chronic care: the server interprets blood pressure, heart rate and glucose values (H/L/N, HH/LL
when critical) against their reference range, adding the range from mappings/chronic-care/
reference-ranges.json where the Observation has none. What the client set is left as it is."""

from __future__ import annotations

from functools import cache
from typing import Any

from ..mapping_tables import load_table
from . import WriteRule

_DISPLAY = {"N": "Normal", "L": "Low", "H": "High", "LL": "Critical low", "HH": "Critical high"}
_SEVERITY = {"N": 0, "L": 1, "H": 1, "LL": 2, "HH": 2}
_UCUM = "http://unitsofmeasure.org"


@cache
def _table() -> tuple[str, dict[tuple[str, str], dict[str, Any]]]:
    table = load_table("chronic-care/reference-ranges.json")
    return table["interpretationSystem"], {(row["system"], row["code"]): row for row in table["ranges"]}


def _row(code: Any) -> dict[str, Any] | None:
    rows = _table()[1]
    for coding in (code or {}).get("coding") or []:
        row = rows.get((coding.get("system"), coding.get("code")))
        if row is not None:
            return row
    return None


def _value(element: dict[str, Any], row: dict[str, Any]) -> float | None:
    quantity = element.get("valueQuantity")
    if not isinstance(quantity, dict) or not isinstance(quantity.get("value"), int | float):
        return None
    if quantity.get("comparator"):
        return None  # "<3.0" says too little to grade
    unit = quantity.get("code") or quantity.get("unit")
    return float(quantity["value"]) if unit in row["units"] else None


def _client_range(element: dict[str, Any], row: dict[str, Any]) -> tuple[float | None, float | None] | None:
    """(low, high) of the element's own reference range in the value's unit, or None when it has none usable."""
    for reference_range in element.get("referenceRange") or []:
        bounds = []
        for key in ("low", "high"):
            quantity = reference_range.get(key) or {}
            usable = isinstance(quantity.get("value"), int | float) and (
                quantity.get("code") or quantity.get("unit")) in row["units"]
            bounds.append(float(quantity["value"]) if usable else None)
        if bounds != [None, None]:
            return bounds[0], bounds[1]
    return None


def grade(value: float, low: float | None, high: float | None, row: dict[str, Any]) -> str:
    if value < row["criticalLow"]:
        return "LL"
    if value >= row["criticalHigh"]:
        return "HH"
    if low is not None and value < low:
        return "L"
    if high is not None and value > high:
        return "H"
    return "N"


def _concept(code: str) -> dict[str, Any]:
    return {"coding": [{"system": _table()[0], "code": code, "display": _DISPLAY[code]}]}


def _quantity(value: float, row: dict[str, Any]) -> dict[str, Any]:
    unit = row["units"][0]
    return {"value": value, "unit": unit, "system": _UCUM, "code": unit}


def interpret(element: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The element (an Observation or one of its components) with interpretation and referenceRange filled
    in where the table knows its code; and the grade of its value (None when it has no gradable value)."""
    row = _row(element.get("code"))
    value = _value(element, row) if row else None
    if value is None:
        return element, None
    own = _client_range(element, row)
    low, high = own if own is not None else (row["low"], row["high"])
    code = grade(value, low, high, row)
    element = dict(element)
    if not element.get("referenceRange"):
        element["referenceRange"] = [{"low": _quantity(row["low"], row), "high": _quantity(row["high"], row)}]
    if not element.get("interpretation"):
        element["interpretation"] = [_concept(code)]
    return element, code


class Interpretation(WriteRule):
    types = ("Observation",)
    checks = False

    def fill(self, resource_type: str, resource: dict[str, Any]) -> dict[str, Any]:
        if resource.get("status") == "entered-in-error":
            return resource
        observation, code = interpret(resource)
        components = observation.get("component")
        if isinstance(components, list) and any(isinstance(c, dict) and _row(c.get("code")) for c in components):
            graded = [interpret(c) if isinstance(c, dict) else (c, None) for c in components]
            observation = {**observation, "component": [c for c, _ in graded]}
            grades = [g for _, g in graded if g is not None]
            if grades and code is None and not observation.get("interpretation"):
                # a panel (blood pressure) is as abnormal as its worst component
                observation["interpretation"] = [_concept(max(grades, key=lambda g: _SEVERITY[g]))]
        return observation
