"""Search parameters: the official FHIR R4 definitions shipped with the package, plus SearchParameter
resources created at run time. One registry per process, keyed by resource type and code."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ..model.types import RESOURCE_TYPES

# Parameters handled by the query engine itself rather than through index tables.
RESULT_PARAMETERS = frozenset({
    "_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total", "_contained",
    "_containedType", "_format", "_pretty", "_cursor", "_type",
})
SPECIAL_PARAMETERS = frozenset({"_id", "_lastUpdated", "_has", "_text", "_content", "_list", "_query",
                                "_filter", "_source"})


@dataclass(frozen=True)
class Component:
    definition: str
    expression: str


@dataclass(frozen=True)
class SearchParam:
    code: str
    type: str  # number | date | string | token | reference | composite | quantity | uri | special
    expression: str  # FHIRPath, already narrowed to one resource type
    url: str = ""
    targets: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()


@dataclass
class Registry:
    by_type: dict[str, dict[str, SearchParam]] = field(default_factory=dict)
    by_url: dict[str, SearchParam] = field(default_factory=dict)
    # per resource type, what extraction runs (filled by search.extract; cleared when parameters change)
    plans: dict[str, Any] = field(default_factory=dict)

    def copy(self) -> Registry:
        return Registry({t: dict(params) for t, params in self.by_type.items()}, dict(self.by_url))

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        return self.by_type.get(resource_type, {}).get(code)

    def params(self, resource_type: str) -> dict[str, SearchParam]:
        return self.by_type.get(resource_type, {})

    def add(self, definition: dict[str, Any]) -> list[SearchParam]:
        """Register one SearchParameter definition for each of its base types; return what was added."""
        added = []
        expression = definition.get("expression") or ""
        bases = definition.get("base") or []
        if "Resource" in bases or "DomainResource" in bases:
            bases = sorted(RESOURCE_TYPES) if "Resource" in bases else sorted(
                RESOURCE_TYPES - {"Bundle", "Binary", "Parameters"})
            prefix = "Resource." if "Resource" in definition.get("base", []) else "DomainResource."
            expressions = {b: expression.replace(prefix, f"{b}.") for b in bases}
        else:
            expressions = {b: narrow_expression(expression, b) for b in bases}
        for base in bases:
            if base not in RESOURCE_TYPES:
                continue
            param = SearchParam(
                code=definition["code"],
                type=definition["type"],
                expression=expressions[base],
                url=definition.get("url", ""),
                targets=tuple(definition.get("target") or ()),
                components=tuple(Component(c["definition"], c["expression"])
                                 for c in definition.get("component") or ()),
            )
            self.by_type.setdefault(base, {})[param.code] = param
            self.plans.pop(base, None)
            added.append(param)
        if added and definition.get("url"):
            self.by_url[definition["url"]] = added[0]
        return added


def narrow_expression(expression: str, resource_type: str) -> str:
    """Keep the union branches of a multi-base expression that apply to one resource type."""
    branches = [b.strip() for b in expression.split("|")]
    mine = [b for b in branches if b.lstrip("(").startswith(f"{resource_type}.") or b == resource_type]
    return " | ".join(mine) if mine else expression


def _load_core() -> Registry:
    registry = Registry()
    data = json.loads(resources.files("fhir_server.search").joinpath("data/search-parameters.json").read_text())
    alliance = json.loads(resources.files("fhir_server.search").joinpath(
        "data/alliance-search-parameters.json").read_text())
    for definition in data["parameters"] + alliance["parameters"]:
        if definition.get("expression") or definition["type"] == "composite":
            registry.add(definition)
    return registry


CORE = _load_core()

PATIENT_COMPARTMENT: dict[str, list[str]] = json.loads(
    resources.files("fhir_server.search").joinpath("data/compartment-patient.json").read_text())
