"""SMART on FHIR resource scopes, v1 and v2 syntax (SMART App Launch 2.x, section "Scopes and Launch
Context"): `patient/Observation.read`, `user/*.write`, `patient/Observation.rs?category=vital-signs`.
Scopes that name no resource access (openid, fhirUser, launch, offline_access, ...) parse to None."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from ..model.types import is_resource_type

ACTIONS = "cruds"
CONTEXTS = ("patient", "user", "system")
# v1 permissions as v2 actions: read covers read, vread, history and search; write covers c, u and d.
_V1 = {"read": frozenset("rs"), "write": frozenset("cud"), "*": frozenset(ACTIONS)}
_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)(?:\?(.*))?$")
_V2_ORDER = re.compile(r"^c?r?u?d?s?$")


@dataclass(frozen=True)
class ResourceScope:
    context: str  # patient | user | system
    resource_type: str  # a resource type, or "*"
    actions: frozenset[str]  # subset of c r u d s
    params: tuple[tuple[str, str], ...] = ()  # v2 restriction: search parameters the data must match
    text: str = ""

    def covers(self, resource_type: str, action: str) -> bool:
        return action in self.actions and self.resource_type in ("*", resource_type)


def parse_scope(text: str) -> ResourceScope | None:
    """A resource scope, or None for a scope that grants no resource access (or is malformed: a
    token's scopes were issued by us, so an unparseable one simply grants nothing)."""
    m = _SCOPE.match(text)
    if m is None:
        return None
    context, resource_type, permission, query = m.groups()
    if resource_type != "*" and not is_resource_type(resource_type):
        return None
    if permission in _V1:
        if query is not None:
            return None  # restrictions are v2 syntax only
        actions = _V1[permission]
    elif permission and _V2_ORDER.match(permission):
        actions = frozenset(permission)
    else:
        return None
    params = tuple(parse_qsl(query, keep_blank_values=True)) if query else ()
    return ResourceScope(context, resource_type, actions, params, text)


def parse_scopes(scope: str | tuple[str, ...] | list[str]) -> list[ResourceScope]:
    items = scope.split() if isinstance(scope, str) else scope
    return [parsed for parsed in map(parse_scope, items) if parsed is not None]
