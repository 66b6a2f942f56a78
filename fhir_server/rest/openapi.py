"""The OpenAPI description served at /openapi.json, in FHIR's own terms.

FastAPI describes the generic routes as taking any string and answering `application/json` with 422
validation errors, none of which is true here. This rewrites what it generates: the resource type path
parameters list the R4 types, ids carry the FHIR id pattern, search and history routes list the common
parameters, bodies are FHIR resources (a Bundle for `POST /`, JSON Patch or Parameters for PATCH), and every
error is an `OperationOutcome` in `application/fhir+json`. Clients and API fuzzers (schemathesis) then
generate requests the server really takes, and the refusals it really gives."""

from __future__ import annotations

import re
import warnings
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..model.types import RESOURCE_TYPES
from .negotiation import FHIR_JSON, JSON, JSON_PATCH

ID_PATTERN = r"^[A-Za-z0-9\-.]{1,64}$"
_TYPES = sorted(RESOURCE_TYPES)
_TYPE_PARAMS = {"resource_type", "compartment_type"}
_ID_PARAMS = {"resource_id", "compartment_id", "patient_id", "group_id", "version_id"}

_SEARCH = [
    ("_id", {"type": "string"}), ("_lastUpdated", {"type": "string"}),
    ("_count", {"type": "integer", "minimum": 0}), ("_sort", {"type": "string"}),
    ("_include", {"type": "string"}), ("_revinclude", {"type": "string"}),
    ("_summary", {"type": "string", "enum": ["true", "false", "text", "data", "count"]}),
    ("_elements", {"type": "string"}), ("_total", {"type": "string", "enum": ["none", "estimate", "accurate"]}),
]
_HISTORY = [("_since", {"type": "string", "format": "date-time"}), ("_count", {"type": "integer", "minimum": 0})]

SCHEMAS: dict[str, Any] = {
    "Resource": {
        "type": "object", "required": ["resourceType"], "additionalProperties": True,
        "properties": {"resourceType": {"type": "string", "enum": _TYPES},
                       "id": {"type": "string", "pattern": ID_PATTERN}, "meta": {"type": "object"}},
    },
    "Bundle": {
        "type": "object", "required": ["resourceType", "type"], "additionalProperties": True,
        "properties": {
            "resourceType": {"const": "Bundle"},
            "type": {"type": "string", "enum": ["transaction", "batch", "searchset", "history", "collection"]},
            "entry": {"type": "array", "items": {"type": "object", "properties": {
                "fullUrl": {"type": "string"}, "resource": {"$ref": "#/components/schemas/Resource"},
                "request": {"type": "object", "required": ["method", "url"], "properties": {
                    "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]},
                    "url": {"type": "string"}}}}}},
        },
    },
    "Parameters": {
        "type": "object", "required": ["resourceType"], "additionalProperties": True,
        "properties": {"resourceType": {"const": "Parameters"}, "parameter": {"type": "array", "items": {
            "type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}},
    },
    "JsonPatch": {"type": "array", "items": {"type": "object", "required": ["op", "path"], "properties": {
        "op": {"type": "string", "enum": ["add", "remove", "replace", "move", "copy", "test"]},
        "path": {"type": "string"}, "from": {"type": "string"}, "value": {}}}},
    "OperationOutcome": {
        "type": "object", "required": ["resourceType", "issue"],
        "properties": {"resourceType": {"const": "OperationOutcome"}, "issue": {"type": "array", "items": {
            "type": "object", "required": ["severity", "code"],
            "properties": {"severity": {"type": "string"}, "code": {"type": "string"},
                           "diagnostics": {"type": "string"},
                           "expression": {"type": "array", "items": {"type": "string"}}}}}},
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _fhir(name: str) -> dict[str, Any]:
    return {FHIR_JSON: {"schema": _ref(name)}, JSON: {"schema": _ref(name)}}


def _path_parameter(parameter: dict[str, Any]) -> None:
    if parameter["name"] in _TYPE_PARAMS:
        parameter["schema"] = {"type": "string", "enum": _TYPES}
    elif parameter["name"] == "version_id":
        parameter["schema"] = {"type": "string", "pattern": r"^[0-9]{1,9}$"}
    elif parameter["name"] in _ID_PARAMS:
        parameter["schema"] = {"type": "string", "pattern": ID_PATTERN}


def _query(params: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [{"name": name, "in": "query", "required": False, "schema": schema} for name, schema in params]


def _body(method: str, path: str) -> dict[str, Any]:
    if method == "patch":
        return {"required": True, "content": {JSON_PATCH: {"schema": _ref("JsonPatch")},
                                              FHIR_JSON: {"schema": _ref("Parameters")}}}
    if path.endswith("/_search"):
        return {"content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "additionalProperties": {"type": "string"}}}}}
    if path == "/":
        return {"required": True, "content": _fhir("Bundle")}
    if "$" in path:  # operations take Parameters, or the resource they work on
        return {"content": {FHIR_JSON: {"schema": {"anyOf": [_ref("Parameters"), _ref("Resource")]}}}}
    return {"required": True, "content": _fhir("Resource")}


_BUNDLE_PATHS = ("/", "/_search", "/_history", "/{resource_type}", "/{resource_type}/_search",
                 "/{resource_type}/_history", "/{resource_type}/{resource_id}/_history",
                 "/{compartment_type}/{compartment_id}/{resource_type}")


def _success(method: str, path: str) -> dict[str, Any]:
    body = "Bundle" if path in _BUNDLE_PATHS and (method == "get" or path != "/{resource_type}") else "Resource"
    answers = {"200": {"description": "OK", "content": _fhir(body)}}
    if method in ("post", "put") and "$" not in path and body == "Resource":
        answers["201"] = {"description": "Created", "headers": {
            "Location": {"schema": {"type": "string"}}, "ETag": {"schema": {"type": "string"}}},
            "content": _fhir("Resource")}
    if method == "delete":
        answers["204"] = {"description": "Deleted (Prefer: return=minimal)"}
    if method == "get" and body == "Resource":
        answers["304"] = {"description": "Not modified (If-None-Match / If-Modified-Since)"}
    return answers


def describe(app: FastAPI) -> dict[str, Any]:
    with warnings.catch_warnings():  # routes serving GET and POST share a name; ids are made unique below
        warnings.simplefilter("ignore", UserWarning)
        spec = get_openapi(title=app.title, version=app.version, routes=app.routes,
                           description="FHIR R4 REST API (application/fhir+json). Errors are OperationOutcomes.")
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            operation["operationId"] = method + re.sub(r"[^A-Za-z0-9]+", "_", path).rstrip("_")
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path":
                    _path_parameter(parameter)
            if method == "get" and (path in ("/{resource_type}", "/{resource_type}/_search", "/")
                                    or path.startswith("/{compartment_type}")):
                operation.setdefault("parameters", []).extend(_query(_SEARCH))
            elif method == "get" and path.endswith("_history"):
                operation.setdefault("parameters", []).extend(_query(_HISTORY))
            if method in ("post", "put", "patch") and "requestBody" not in operation:
                operation["requestBody"] = _body(method, path)
            operation["responses"] = {**_success(method, path), "default": {
                "description": "Refused or failed: an OperationOutcome says what and where",
                "content": {FHIR_JSON: {"schema": _ref("OperationOutcome")}}}}
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(SCHEMAS)
    return spec


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:  # built once, kept where FastAPI keeps its own
        if app.openapi_schema is None:
            app.openapi_schema = describe(app)
        return app.openapi_schema

    app.openapi = openapi
