"""Structural validation of resources: fhir.resources R4B models, plus the R4 JSON schema for the
types those models lack or changed incompatibly. Errors carry FHIRPath-style element paths."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from .outcome import BadRequest, Issue
from .types import is_valid_id

_SCHEMA_SUBSET = json.loads(
    resources.files("fhir_server.model").joinpath("data/r4-schema-subset.json").read_text()
)
SCHEMA_VALIDATED_TYPES: frozenset[str] = frozenset(_SCHEMA_SUBSET["types"])


class InvalidResource(BadRequest):
    """The resource is not valid FHIR R4 (spec: 400 for create/update; PATCH reports 422)."""


def _expression(resource_type: str, loc: tuple[Any, ...] | list[Any]) -> str:
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}"
    return out


def _empty_value_issues(value: Any, path: str, issues: list[Issue]) -> None:
    """FHIR JSON forbids empty strings, arrays and objects, and nulls outside primitive arrays."""
    if isinstance(value, dict):
        if not value:
            issues.append(Issue("invalid", "Empty objects are not allowed in FHIR JSON", expression=[path]))
        for key, item in value.items():
            if item is None:
                issues.append(Issue("invalid", "null is not allowed here", expression=[f"{path}.{key}"]))
            else:
                _empty_value_issues(item, f"{path}.{key}", issues)
    elif isinstance(value, list):
        if not value:
            issues.append(Issue("invalid", "Empty arrays are not allowed in FHIR JSON", expression=[path]))
        for index, item in enumerate(value):
            if item is not None:  # nulls are allowed in primitive arrays paired with _element arrays
                _empty_value_issues(item, f"{path}[{index}]", issues)
    elif isinstance(value, str) and not value.strip():
        issues.append(Issue("invalid", "Empty or blank strings are not allowed in FHIR JSON", expression=[path]))


@cache
def _schema_validator(resource_type: str) -> jsonschema.Draft6Validator:
    schema = {"$ref": f"#/definitions/{resource_type}", "definitions": _SCHEMA_SUBSET["definitions"]}
    return jsonschema.Draft6Validator(schema)


def validate_resource(resource: dict[str, Any], resource_type: str) -> None:
    """Raise InvalidResource listing every problem found, each with the element's path."""
    issues: list[Issue] = []
    rid = resource.get("id")
    if rid is not None and (not isinstance(rid, str) or not is_valid_id(rid)):
        issues.append(Issue("invalid", f"Invalid resource id {rid!r}: 1-64 of A-Z a-z 0-9 - .",
                            expression=[f"{resource_type}.id"]))
    _empty_value_issues(resource, resource_type, issues)
    if resource_type in SCHEMA_VALIDATED_TYPES:
        for err in _schema_validator(resource_type).iter_errors(resource):
            issues.append(Issue("structure", err.message[:500],
                                expression=[_expression(resource_type, list(err.absolute_path))]))
    else:
        try:
            get_fhir_model_class(resource_type).model_validate(resource)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                msg = err["msg"].removeprefix("Value error, ")
                issues.append(Issue("structure", msg, expression=[_expression(resource_type, err["loc"])]))
    if issues:
        summary = "; ".join(f"{i.expression[0] if i.expression else resource_type}: {i.diagnostics}"
                            for i in issues[:5])
        raise InvalidResource(f"Invalid {resource_type}: {summary}", issues=issues)
