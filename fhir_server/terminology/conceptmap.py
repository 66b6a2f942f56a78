"""ConceptMap $translate: the targets one ConceptMap gives for a source code (or, reversed, the
sources that map to a target code), with each match's equivalence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# equivalences that mean "this is not a usable translation"
NEGATIVE = frozenset({"unmatched", "disjoint"})


@dataclass
class Match:
    equivalence: str
    system: str | None
    code: str | None
    display: str | None
    source: str  # the ConceptMap's url
    comment: str | None = None

    def part(self) -> dict[str, Any]:
        coding = {k: v for k, v in (("system", self.system), ("code", self.code), ("display", self.display)) if v}
        parts: list[dict[str, Any]] = [{"name": "equivalence", "valueCode": self.equivalence}]
        if coding:
            parts.append({"name": "concept", "valueCoding": coding})
        parts.append({"name": "source", "valueUri": self.source})
        return {"name": "match", "part": parts}


def applies(concept_map: dict[str, Any], system: str | None, target_system: str | None, reverse: bool) -> bool:
    """Whether the map has a group from `system` (to `target_system`), either way round when reversed."""
    for group in concept_map.get("group") or []:
        source, target = (group.get("target"), group.get("source")) if reverse else (group.get("source"),
                                                                                   group.get("target"))
        if (system is None or source == system) and (target_system is None or target == target_system):
            return True
    return False


def translate(concept_map: dict[str, Any], system: str | None, code: str, *, target_system: str | None = None,
              reverse: bool = False) -> list[Match]:
    url = concept_map.get("url", "")
    matches: list[Match] = []
    for group in concept_map.get("group") or []:
        source_system, target = group.get("source"), group.get("target")
        if reverse:
            if (system is not None and target != system) or (target_system is not None
                                                              and source_system != target_system):
                continue
            for element in group.get("element") or []:
                for t in element.get("target") or []:
                    if t.get("code") == code:
                        matches.append(Match(_reverse(t.get("equivalence", "equivalent")), source_system,
                                             element.get("code"), element.get("display"), url, t.get("comment")))
            continue
        if (system is not None and source_system != system) or (target_system is not None and target != target_system):
            continue
        element = next((e for e in group.get("element") or [] if e.get("code") == code), None)
        if element is not None:
            for t in element.get("target") or []:
                matches.append(Match(t.get("equivalence", "equivalent"), target if t.get("code") else None,
                                     t.get("code"), t.get("display"), url, t.get("comment")))
            continue
        unmapped = group.get("unmapped") or {}
        if unmapped.get("mode") == "provided":
            matches.append(Match("equal", target, code, None, url))
        elif unmapped.get("mode") == "fixed" and unmapped.get("code"):
            matches.append(Match("equivalent", target, unmapped["code"], unmapped.get("display"), url))
    return matches


def _reverse(equivalence: str) -> str:
    """Read the other way, a wider target is a narrower source."""
    return {"wider": "narrower", "narrower": "wider", "subsumes": "specializes",
            "specializes": "subsumes"}.get(equivalence, equivalence)
