"""A CodeSystem resource compiled for look-ups: its concepts by code, their is-a hierarchy (nested
concepts and `parent`/`child` properties), subsumption and the filters of ValueSet.compose."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# ValueSet.compose.include.filter.op values (R4 filter-operator) this server evaluates
FILTER_OPERATORS = ("=", "is-a", "descendent-of", "is-not-a", "regex", "in", "not-in", "generalizes", "exists")


class FilterError(ValueError):
    """A filter that cannot be evaluated on this code system (unknown property or operator, bad regex)."""


@dataclass
class Concept:
    code: str
    display: str | None
    definition: str | None = None
    designations: list[dict[str, Any]] = field(default_factory=list)
    properties: list[dict[str, Any]] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)

    @property
    def abstract(self) -> bool:
        return any(p.get("code") in ("notSelectable", "abstract") and p.get("valueBoolean") for p in self.properties)

    @property
    def inactive(self) -> bool:
        return any((p.get("code") == "inactive" and p.get("valueBoolean"))
                   or (p.get("code") == "status" and p.get("valueCode") in ("retired", "inactive"))
                   for p in self.properties)


def property_text(prop: dict[str, Any]) -> str | None:
    """The value of a concept property as text (for =, in, regex filters)."""
    for key, value in prop.items():
        if key.startswith("value"):
            if isinstance(value, bool):
                return "true" if value else "false"
            if isinstance(value, dict):  # valueCoding
                return value.get("code")
            return str(value)
    return None


class CodeSystemIndex:
    def __init__(self, resource: dict[str, Any]):
        self.resource = resource
        self.url: str = resource.get("url", "")
        self.version: str | None = resource.get("version")
        self.name: str = resource.get("title") or resource.get("name") or self.url
        self.content: str = resource.get("content", "complete")
        self.case_sensitive: bool = resource.get("caseSensitive", True)
        self.concepts: dict[str, Concept] = {}
        self._folded: dict[str, str] = {}
        self._walk(resource.get("concept") or [], None)
        for concept in list(self.concepts.values()):
            for prop in concept.properties:
                if prop.get("code") == "parent" and prop.get("valueCode"):
                    self._link(prop["valueCode"], concept.code)
                elif prop.get("code") == "child" and prop.get("valueCode"):
                    self._link(concept.code, prop["valueCode"])

    @property
    def complete(self) -> bool:
        """Holds every code of the system, so an unknown code is really not in it."""
        return self.content == "complete"

    def _walk(self, concepts: list[dict[str, Any]], parent: str | None) -> None:
        for raw in concepts:
            code = raw.get("code")
            if not code:
                continue
            self.concepts[code] = Concept(code, raw.get("display"), raw.get("definition"),
                                          raw.get("designation") or [], raw.get("property") or [])
            self._folded.setdefault(code.lower(), code)
            if parent is not None:
                self._link(parent, code)
            self._walk(raw.get("concept") or [], code)

    def _link(self, parent: str, child: str) -> None:
        if parent in self.concepts and child in self.concepts:
            if parent not in self.concepts[child].parents:
                self.concepts[child].parents.append(parent)
                self.concepts[parent].children.append(child)

    def get(self, code: str) -> Concept | None:
        found = self.concepts.get(code)
        if found is None and not self.case_sensitive:
            found = self.concepts.get(self._folded.get(code.lower(), ""))
        return found

    def _closure(self, code: str, step: str) -> set[str]:
        seen: set[str] = set()
        stack = [code]
        while stack:
            for nxt in getattr(self.concepts[stack.pop()], step):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    def descendants(self, code: str) -> set[str]:
        """Codes below `code` (not itself); empty for an unknown code."""
        return self._closure(code, "children") if code in self.concepts else set()

    def ancestors(self, code: str) -> set[str]:
        return self._closure(code, "parents") if code in self.concepts else set()

    def subsumes(self, code_a: str, code_b: str) -> str:
        """R4 $subsumes outcome of A against B (both known)."""
        if code_a == code_b:
            return "equivalent"
        if code_b in self.descendants(code_a):
            return "subsumes"
        if code_a in self.descendants(code_b):
            return "subsumed-by"
        return "not-subsumed"

    # ---- ValueSet filters ----

    def filter(self, prop: str, op: str, value: str) -> set[str]:
        """Codes that satisfy one compose filter."""
        if op not in FILTER_OPERATORS:
            raise FilterError(f"filter operator '{op}' is not supported")
        if prop in ("concept", "code"):
            return self._concept_filter(op, value)
        if prop == "display":
            return self._match_texts(op, value, lambda c: [c.display] if c.display else [])
        declared = {p.get("code") for p in self.resource.get("property") or []} | {"parent", "child", "inactive",
                                                                                    "status", "notSelectable"}
        if prop not in declared:
            raise FilterError(f"CodeSystem {self.url} has no property '{prop}'")
        return self._match_texts(op, value, lambda c: [t for p in c.properties if p.get("code") == prop
                                                       for t in [property_text(p)] if t is not None])

    def _known(self, value: str) -> str:
        concept = self.get(value)
        if concept is None:
            raise FilterError(f"code '{value}' is not in CodeSystem {self.url}")
        return concept.code

    def _concept_filter(self, op: str, value: str) -> set[str]:
        if op == "is-a":
            code = self._known(value)
            return {code} | self.descendants(code)
        if op == "descendent-of":
            return self.descendants(self._known(value))
        if op == "is-not-a":
            code = self._known(value)
            return set(self.concepts) - {code} - self.descendants(code)
        if op == "generalizes":
            code = self._known(value)
            return {code} | self.ancestors(code)
        if op in ("=", "in", "not-in", "regex", "exists"):
            return self._match_texts(op, value, lambda c: [c.code])
        raise FilterError(f"filter operator '{op}' does not apply to the concept property")

    def _match_texts(self, op: str, value: str, texts) -> set[str]:
        if op == "=":
            return {code for code, c in self.concepts.items() if value in texts(c)}
        if op in ("in", "not-in"):
            wanted = {v.strip() for v in value.split(",")}
            hits = {code for code, c in self.concepts.items() if wanted.intersection(texts(c))}
            return hits if op == "in" else set(self.concepts) - hits
        if op == "regex":
            try:
                pattern = re.compile(value)
            except re.error as exc:
                raise FilterError(f"'{value}' is not a valid regular expression: {exc}") from exc
            return {code for code, c in self.concepts.items() if any(pattern.fullmatch(t) for t in texts(c))}
        if op == "exists":
            if value not in ("true", "false"):
                raise FilterError("the exists filter takes true or false")
            return {code for code, c in self.concepts.items() if bool(texts(c)) == (value == "true")}
        raise FilterError(f"filter operator '{op}' does not apply to this property")
