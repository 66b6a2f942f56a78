"""Scope enforcement: what the request's Grant lets it do with a resource type, and the SQL conditions
and checks that confine it to exactly that.

Every scope that covers (type, action) contributes one alternative, a `Filter`: the Patient compartment
it is confined to (patient/ scopes: the launch patient; user/ scopes of a Patient user: that patient)
and the v2 search-parameter restriction it carries. The token may do the action on a resource that
passes any one of its alternatives. Searches get the alternatives as one more SQL condition; reads,
writes and included resources are checked by the same condition, through the same search machinery,
so "what a search may find" and "what a read may return" cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..model.outcome import FhirError, Forbidden
from ..search.extract import extract
from ..search.query import Clause, SearchQuery, compartment_clause, parse_search
from ..search.registry import PATIENT_COMPARTMENT, Registry
from .grant import Grant, current_grant
from .scopes import ResourceScope, parse_scopes

ACTION_NAMES = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


@dataclass(frozen=True)
class Filter:
    patient: str | None  # confined to this Patient's compartment
    params: tuple[tuple[str, str], ...]  # v2 restriction: the resource must match these search parameters

    @property
    def unrestricted(self) -> bool:
        return self.patient is None and not self.params


def in_patient_compartment(resource_type: str) -> bool:
    return resource_type == "Patient" or bool(PATIENT_COMPARTMENT.get(resource_type))


class Access:
    """The enforcement rules of one grant."""

    def __init__(self, grant: Grant):
        self.grant = grant
        self.scopes: list[ResourceScope] = parse_scopes(grant.scopes)
        user = grant.fhir_user or ""
        # A user/ scope is confined to the user's own record when the user is a Patient.
        self.user_patient = user.split("/", 1)[1] if user.startswith("Patient/") else None

    def filters(self, resource_type: str, action: str) -> list[Filter] | None:
        """None: the action is allowed on every resource of the type; []: not at all; else the alternatives."""
        found: list[Filter] = []
        for scope in self.scopes:
            if not scope.covers(resource_type, action):
                continue
            patient = {"patient": self.grant.patient, "user": self.user_patient, "system": None}[scope.context]
            if scope.context == "patient" and patient is None:
                continue  # a patient/ scope without a patient in context grants nothing
            if patient is not None and not in_patient_compartment(resource_type):
                if action in "cud":
                    continue  # not patient data: a patient context may read it, never write it
                patient = None
            alternative = Filter(patient, scope.params)
            if alternative.unrestricted:
                return None
            if alternative not in found:
                found.append(alternative)
        return found

    def require(self, resource_type: str, action: str) -> list[Filter] | None:
        found = self.filters(resource_type, action)
        if found == []:
            raise Forbidden(f"The access token's scopes do not allow {ACTION_NAMES[action]} of {resource_type} "
                            f"(granted: {' '.join(s.text for s in self.scopes) or 'no resource scopes'})")
        return found

    def unrestricted(self, resource_type: str, action: str) -> None:
        """For interfaces that cannot confine what they return (DICOMweb): the type in full, or 403."""
        if self.require(resource_type, action) is not None:
            raise Forbidden(f"{ACTION_NAMES[action].capitalize()} of {resource_type} here needs a user/ or system/ "
                            "scope without restrictions; a patient-context token cannot use it")

    # ---- SQL conditions ----

    def clause(self, registry: Registry, resource_type: str, found: list[Filter]) -> Clause:
        """The alternatives as one condition on resources of resource_type."""
        groups = [g for g in (_group(registry, resource_type, f) for f in found) if g is not None]
        return Clause("_access", "any", values=groups)

    def search_clause(self, registry: Registry, query: SearchQuery, action: str = "s") -> Clause | None:
        """The condition a search runs under (403 when a searched or chained type is not allowed)."""
        for resource_type in _referenced_types(query):
            self.require(resource_type, "s")
        per_type = {t: self.filters(t, action) for t in query.resource_types}
        allowed = {t: f for t, f in per_type.items() if f != []}
        if not allowed:
            self.require(query.resource_types[0], action)  # raises
        if len(query.resource_types) == 1:
            found = allowed[query.resource_types[0]]
            return None if found is None else self.clause(registry, query.resource_types[0], found)
        if len(allowed) == len(per_type) and all(f is None for f in allowed.values()):
            return None
        # system search: each type under its own alternatives; types the token may not search drop out
        groups = []
        for resource_type, found in allowed.items():
            kind = Clause("_type", "type", values=[resource_type])
            groups.append([kind] if found is None else [kind, self.clause(registry, resource_type, found)])
        return Clause("_access", "any", values=groups)

    # ---- checks of single resources ----

    async def check(self, service, resource_type: str, resource_id: str, action: str, tx=None,
                    found: list[Filter] | None | bool = False) -> None:
        """403 unless the current version of the resource passes one of the action's alternatives."""
        if found is False:
            found = self.require(resource_type, action)
        await self.check_many(service, resource_type, [resource_id], action, tx, found)

    async def check_many(self, service, resource_type: str, ids: list[str], action: str, tx,
                         found: list[Filter] | None) -> None:
        """403 naming the first of the ids whose current version passes none of the alternatives."""
        if found is None:
            return
        allowed = await self.matching(service, resource_type, ids, found, tx)
        outside = next((i for i in ids if i not in allowed), None)
        if outside is not None:
            raise Forbidden(f"{resource_type}/{outside} is outside what the access token's scopes allow "
                            f"for {ACTION_NAMES[action]}")

    async def matching(self, service, resource_type: str, ids: list[str], found: list[Filter], tx=None) -> set[str]:
        """Which of the ids (current versions) pass the alternatives."""
        query = parse_search(service.registry, (resource_type,), [("_id", ",".join(ids))], base_url="",
                             strict=True, default_count=len(ids), max_count=len(ids))
        query.total = "none"
        page = await (tx or service.store).search(query, [self.clause(service.registry, resource_type, found)])
        return {m.id for m in page.matches}

    def version_allowed(self, registry: Registry, resource_type: str, resource: dict[str, Any] | None,
                        found: list[Filter] | None) -> bool:
        """A history entry (an old version, perhaps): its own content must be in an allowed compartment.
        Restrictions by search parameters are checked on the current version by the caller."""
        if found is None:
            return True
        if resource is None:  # a deletion: whose it was cannot be told from the entry
            return all(f.patient is None for f in found)
        return any(f.patient is None or _references_patient(registry, resource_type, resource, f.patient)
                   for f in found)

    async def filter_versions(self, service, versions: list, action: str, tx=None) -> list:
        """Included resources: keep those the token could read itself."""
        kept = []
        by_type: dict[str, list] = {}
        for version in versions:
            by_type.setdefault(version.resource_type, []).append(version)
        allowed_ids: dict[str, set[str] | None] = {}
        for resource_type, group in by_type.items():
            found = self.filters(resource_type, action)
            if found == []:
                allowed_ids[resource_type] = set()
            elif found is None:
                allowed_ids[resource_type] = None
            else:
                allowed_ids[resource_type] = await self.matching(service, resource_type, [v.id for v in group],
                                                                 found, tx)
        for version in versions:
            ids = allowed_ids[version.resource_type]
            if ids is None or version.id in ids:
                kept.append(version)
        return kept


def _group(registry: Registry, resource_type: str, alternative: Filter) -> list[Clause] | None:
    group: list[Clause] = []
    if alternative.patient is not None:
        if resource_type == "Patient":
            group.append(Clause("_id", "id", values=[alternative.patient]))
        else:
            group.append(compartment_clause(registry, resource_type, alternative.patient))
    if alternative.params:
        restriction = _restriction(registry, resource_type, alternative.params)
        if restriction is None:
            return None  # a restriction this type cannot evaluate matches nothing
        group.extend(restriction)
    return group


def _restriction(registry: Registry, resource_type: str, params: tuple[tuple[str, str], ...]) -> list[Clause] | None:
    try:
        return parse_search(registry, (resource_type,), list(params), base_url="", strict=True, default_count=1,
                            max_count=1).clauses
    except FhirError:  # a parameter this type does not know: the restriction matches nothing
        return None


def _referenced_types(query: SearchQuery) -> set[str]:
    """Types a search reaches into through chains and _has: the token must be allowed to search them."""
    found: set[str] = set()
    stack = list(query.clauses)
    while stack:
        clause = stack.pop()
        if clause.kind == "chain":
            found.update(clause.target_types)
        elif clause.kind == "has" and clause.has_type:
            found.add(clause.has_type)
        if clause.inner is not None:
            stack.append(clause.inner)
    return found


def _references_patient(registry: Registry, resource_type: str, resource: dict[str, Any], patient: str) -> bool:
    if resource_type == "Patient":
        return resource.get("id") == patient
    codes = set(PATIENT_COMPARTMENT.get(resource_type) or ())
    rows = extract(resource_type, resource, registry).reference
    return any(row[0] in codes and row[1] == "Patient" and row[2] == patient for row in rows)


@lru_cache(maxsize=256)
def _access_for(grant: Grant) -> Access:
    return Access(grant)


def current_access() -> Access | None:
    """The enforcement rules of the request's grant; None when the caller is not limited."""
    grant = current_grant.get()
    return None if grant is None else _access_for(grant)
