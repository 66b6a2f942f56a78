"""The everyday interactions (read, vread, create, search, update, patch, delete of one type) matched first.

Starlette tries routes in order and FastAPI's route matching costs one to two microseconds a route: with
about ninety operation, terminology, DICOMweb and auth routes ahead of the generic `/{type}/{id}` (they
must come first, or `/{type}/{id}` would take `/Patient/$match`), finding it was about a fifth of a
read's CPU. Copies of the generic routes whose segments match only what a FHIR resource type and id can
look like (an id has no `$` or `_`, so no operation or `_history` fits) now go ahead of them. The few
specific routes a copy could still take (`GET /OperationDefinition/ecg-triage`) are moved ahead of the
copies, and the generic originals stay last for everything else (an id that is no FHIR id gets its 400
there)."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import BaseRoute


class _Segment(Convertor[str]):
    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return str(value)


class FhirTypeConvertor(_Segment):
    regex = "[A-Z][A-Za-z]{0,63}"


class FhirIdConvertor(_Segment):
    regex = r"[A-Za-z0-9\-.]{1,64}"


register_url_convertor("fhir_type", FhirTypeConvertor())
register_url_convertor("fhir_id", FhirIdConvertor())

# (method, generic path) of the interactions that get a fast copy
HOT = [
    ("GET", "/{resource_type}/{resource_id}"),
    ("GET", "/{resource_type}"),
    ("POST", "/{resource_type}"),
    ("PUT", "/{resource_type}/{resource_id}"),
    ("DELETE", "/{resource_type}/{resource_id}"),
    ("PATCH", "/{resource_type}/{resource_id}"),
    ("GET", "/{resource_type}/{resource_id}/_history/{version_id}"),
]
_TYPED = {"resource_type": "fhir_type", "resource_id": "fhir_id", "version_id": "fhir_id"}


def leaf_routes(routes: list[BaseRoute]) -> list[BaseRoute]:
    """Every route in matching order, through included routers."""
    out: list[BaseRoute] = []
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's wrapper of an included router
        out.extend(leaf_routes(inner.routes) if inner is not None else [route])
    return out


def sample_path(path: str) -> str:
    """A concrete path the route matches, its parameters filled with a value that fits a type and an id."""
    return re.sub(r"\{[^}]+\}", "Xa", path)


def install_hot_routes(app: FastAPI, generic: list[BaseRoute]) -> None:
    """Put typed copies of the HOT generic routes ahead of the included routers (call after including
    every router); specific routes the copies would take are moved ahead of them."""
    routes = app.router.routes
    first_included = next(i for i, r in enumerate(routes) if getattr(r, "original_router", None) is not None)
    by_key = {(m, r.path): r for r in generic if isinstance(r, APIRoute) for m in r.methods}
    hot = []
    for method, path in HOT:
        original = by_key[(method, path)]
        typed = re.sub(r"\{(\w+)\}", lambda m: f"{{{m[1]}:{_TYPED[m[1]]}}}", path)
        hot.append(APIRoute(typed, original.endpoint, methods=[method], include_in_schema=False,
                            name=f"{original.name}_typed"))
    hot_endpoints = {r.endpoint for r in hot}
    leaves = leaf_routes(routes[first_included:])
    hoisted = []
    for n, leaf in enumerate(leaves):
        methods = getattr(leaf, "methods", None)
        if not methods or getattr(leaf, "endpoint", None) in hot_endpoints:
            continue
        sample = sample_path(leaf.path)
        if any(h.methods & methods and h.path_regex.match(sample) for h in hot):
            earlier = [e for e in leaves[:n] if getattr(e, "methods", None) and e.methods & methods
                       and e.path_regex.match(sample)]
            if earlier:  # moving it ahead would change which route answers
                raise RuntimeError(f"{leaf.path} cannot be moved ahead of {earlier[0].path}")
            hoisted.append(leaf)
    routes[first_included:first_included] = [*hoisted, *hot]
