"""Token search modifiers that need terminology: `:in` / `:not-in` (a ValueSet) and `:below` /
`:above` (subsumption in a code system's hierarchy). The parser leaves their values unresolved; here
they become the (system, codes) groups that the SQL matches, before the query runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..model.outcome import BadRequest, FhirError, Issue, NotFound
from ..search.query import TERMINOLOGY_MODIFIERS, Clause, SearchQuery, TermValue

if TYPE_CHECKING:
    from . import Terminology


def _pending(clause: Clause) -> bool:
    if clause.inner is not None:
        return _pending(clause.inner)
    return clause.kind == "token" and clause.modifier in TERMINOLOGY_MODIFIERS


async def resolve_search(term: Terminology, query: SearchQuery, strict: bool) -> None:
    """Resolve every terminology modifier of the query. A value that cannot be resolved (unknown ValueSet
    or code) is a 400 in strict mode; in lenient mode its parameter is dropped and reported."""
    for clause in [c for c in query.clauses if _pending(c)]:
        name = clause.source[0] if clause.source else clause.code
        try:
            warnings = await _resolve(term, clause)
        except FhirError as exc:
            message = f"Invalid value for search parameter '{name}': {exc}"
            if strict:
                raise BadRequest(message, expression=[name]) from exc
            query.warnings.append(Issue("not-found" if isinstance(exc, NotFound) else "invalid", message, "warning",
                                        [name]))
            query.clauses.remove(clause)
            if clause.source in query.self_params:
                query.self_params.remove(clause.source)
            continue
        query.warnings += [Issue("incomplete", w, "warning", [name]) for w in warnings]


async def _resolve(term: Terminology, clause: Clause) -> list[str]:
    if clause.inner is not None:
        return await _resolve(term, clause.inner)
    warnings: list[str] = []
    resolved = []
    for v in clause.values:
        if clause.modifier in ("in", "not-in"):
            vs = await term.valuesets.resolve(v.raw, expression=clause.code)
            groups, more = await term.valuesets.token_groups(vs)
            warnings += more
        else:
            system, _, code = v.raw.partition("|")
            cs = await term.definitions.code_system(system)
            if cs is None:
                raise NotFound(f"CodeSystem {system} is not known to this server, so its hierarchy cannot be searched")
            concept = cs.get(code)
            if concept is None:
                raise NotFound(f"Code '{code}' is not in CodeSystem {system}")
            related = cs.descendants(concept.code) if clause.modifier == "below" else cs.ancestors(concept.code)
            groups = [(system, frozenset({concept.code} | related))]
            if not cs.complete:
                warnings.append(f"CodeSystem {system} is held as a fragment: ':{clause.modifier}' matched the codes "
                                "of its hierarchy that this server holds")
        resolved.append(TermValue(v.raw, tuple(groups)))
    clause.values = resolved
    return warnings
