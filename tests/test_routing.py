"""The typed copies of the everyday routes that are matched first (rest/hot_routes.py) change which
route answers nothing: every route of the app answers its own paths as it did in declaration order."""

from __future__ import annotations

import pytest
from starlette.routing import Match

from fhir_server.app import create_app
from fhir_server.rest.hot_routes import leaf_routes, sample_path
from fhir_server.settings import Settings


def _first(routes, method: str, path: str):
    """The route that answers, as Starlette picks it: the first full match, else the first partial one."""
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "query_string": b""}
    partial = None
    for route in routes:
        match, _ = route.matches(dict(scope))
        if match == Match.FULL:
            return route
        if match == Match.PARTIAL and partial is None:
            partial = route
    return partial


@pytest.fixture(scope="module", params=[True, False], ids=["auth", "no-auth"])
def app(request, tmp_path_factory):
    return create_app(Settings(data_dir=tmp_path_factory.mktemp("routing"), auth="on" if request.param else "off"))


def _endpoint(route):
    return getattr(route, "endpoint", route)


def test_every_route_answers_its_paths_as_in_declaration_order(app):
    served = leaf_routes(app.router.routes)  # what the app matches, copies first
    declared = [r for r in served if not getattr(r, "name", "").endswith("_typed")]
    last = {id(r): n for n, r in enumerate(declared)}
    declared = [r for n, r in enumerate(declared) if last[id(r)] == n]  # a moved route: where it was declared
    checked = 0
    for route in declared:
        for method in sorted(getattr(route, "methods", None) or ()):
            for path in (sample_path(route.path), sample_path(route.path).replace("Xa", "Observation")):
                assert _endpoint(_first(served, method, path)) is _endpoint(_first(declared, method, path)), \
                    (method, path)
                checked += 1
    assert checked > 150


@pytest.mark.parametrize("method, path, endpoint", [
    ("GET", "/Observation/bp-1", "read"),
    ("GET", "/Observation", "type_search"),
    ("POST", "/Observation", "create"),
    ("PUT", "/Patient/p-1", "update"),
    ("DELETE", "/Patient/p-1", "delete"),
    ("PATCH", "/Patient/p-1", "patch"),
    ("GET", "/Patient/p-1/_history/2", "vread"),
    ("GET", "/OperationDefinition/ecg-triage", "ecg_triage_definition"),  # a specific route the copies fit
    ("GET", "/Patient/bad_id", "read"),  # not a FHIR id: the generic route, which answers 400
    ("GET", "/Patient/p-1/_history", "instance_history"),
    ("POST", "/Patient/$match", "match"),
    ("GET", "/CodeSystem/$lookup", "type_level"),
    ("GET", "/metadata", "metadata"),
    ("GET", "/dicomweb/studies", "search_studies"),
])
def test_what_answers(app, method, path, endpoint):
    assert _first(app.router.routes, method, path) is not None
    route = _first(leaf_routes(app.router.routes), method, path)
    assert route.endpoint.__name__ == endpoint


def test_the_copies_come_first(app):
    route = _first(app.router.routes, "GET", "/Observation/bp-1")
    assert route.name == "read_typed"
    assert app.router.routes.index(route) < 10
