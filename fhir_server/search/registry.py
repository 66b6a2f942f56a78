"""Search parameters: the official FHIR R4 definitions shipped with the package, plus SearchParameter
resources created at run time. One registry per process, keyed by resource type and code."""

from __future__ import annotations

import dataclasses
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
    # A union of other parameters of the same type (Observation's combo-code is code | component-code):
    # its index rows are exactly theirs, so none are stored for it and a search reads the parts' rows.
    parts: tuple[str, ...] = ()

    @property
    def stored_codes(self) -> tuple[str, ...]:
        """The parameter codes under which this parameter's index rows are stored."""
        return self.parts or (self.code,)


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

    def add(self, definition: dict[str, Any], *, link: bool = True) -> list[SearchParam]:
        """Register one SearchParameter definition for each of its base types; return what was added.
        link=False leaves finding unions (link_unions) to the caller, once after many additions."""
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
        if link:
            self.link_unions(base for base in bases if base in RESOURCE_TYPES)
        return added

    def link_unions(self, resource_types) -> None:
        """Mark each parameter whose values are the union of other parameters' (same kind, union terms
        covered exactly, no overlap; composites with the same components) with those parts."""
        for resource_type in resource_types:
            params = self.by_type.get(resource_type)
            if not params:
                continue
            plain = {code: dataclasses.replace(p, parts=()) for code, p in params.items()}
            terms = {code: _union_terms(p.expression) for code, p in plain.items()}
            for code in sorted(plain, key=lambda c: len(terms[c])):  # smaller unions first: parts may be unions
                param = plain[code]
                if param.type in _UNLINKED or len(terms[code]) < 2:
                    continue
                shape = self._shape(param)
                candidates = sorted(
                    (c for c, p in plain.items() if c != code and p.type == param.type and len(terms[c]) <
                     len(terms[code]) and terms[c] <= terms[code] and self._shape(p) == shape),
                    key=lambda c: (-len(terms[c]), c))
                covered: set[str] = set()
                parts = []
                for candidate in candidates:
                    if covered.isdisjoint(terms[candidate]):
                        covered |= terms[candidate]
                        parts.extend(plain[candidate].stored_codes)
                if covered == terms[code]:
                    plain[code] = dataclasses.replace(param, parts=tuple(sorted(set(parts))))
            replaced = {id(params[code]): new for code, new in plain.items() if new != params[code]}
            params.update(plain)
            if replaced:
                for url, param in self.by_url.items():
                    self.by_url[url] = replaced.get(id(param), param)
            self.plans.pop(resource_type, None)

    def _shape(self, param: SearchParam) -> tuple:
        """What besides the expression decides a parameter's rows: a composite's components."""
        return tuple((c.expression, getattr(self.by_url.get(c.definition), "type", None)) for c in param.components)


# References: chains, _include, _has and compartments name the reference parameters' codes directly.
_UNLINKED = frozenset({"reference", "special"})


def _union_terms(expression: str) -> frozenset[str]:
    return frozenset(" ".join(term.split()) for term in expression.split("|") if term.strip())


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
            registry.add(definition, link=False)
    registry.link_unions(registry.by_type)
    return registry


CORE = _load_core()

PATIENT_COMPARTMENT: dict[str, list[str]] = json.loads(
    resources.files("fhir_server.search").joinpath("data/compartment-patient.json").read_text())
