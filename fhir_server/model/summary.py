"""_summary and _elements: the subsets of a resource a client may ask for."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

_DATA = json.loads(resources.files("fhir_server.model").joinpath("data/r4-summary-elements.json").read_text())
SUMMARY_ELEMENTS: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in _DATA["summary"].items()}
MANDATORY_ELEMENTS: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in _DATA["mandatory"].items()}
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
_ALWAYS = {"resourceType", "id", "meta"}


def _base(key: str) -> str:
    """JSON key to element name: valueQuantity -> value (choice), _birthDate -> birthDate."""
    key = key.lstrip("_")
    for i, ch in enumerate(key):
        if ch.isupper() and i > 0:
            return key[:i]
    return key


def _keep(resource: dict[str, Any], wanted: set[str] | frozenset[str]) -> dict[str, Any]:
    out = {k: v for k, v in resource.items() if k in _ALWAYS or k.lstrip("_") in wanted or _base(k) in wanted}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return out


def subset(resource: dict[str, Any], summary: str | None, elements: list[str] | None) -> dict[str, Any]:
    rt = resource.get("resourceType", "")
    if summary == "true":
        return _keep(resource, SUMMARY_ELEMENTS.get(rt, frozenset()))
    if summary == "text":
        return _keep(resource, {"text"} | MANDATORY_ELEMENTS.get(rt, frozenset()))
    if summary == "data":
        return _keep({k: v for k, v in resource.items() if k != "text"}, set(resource))
    if elements:
        return _keep(resource, {e.split(".")[0] for e in elements} | MANDATORY_ELEMENTS.get(rt, frozenset()))
    return resource
