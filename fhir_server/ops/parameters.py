"""Reading the input Parameters of an operation, with errors that name the parameter."""

from __future__ import annotations

from typing import Any

from ..model.outcome import BadRequest


def parameter_items(body: dict[str, Any], operation: str) -> list[tuple[str, dict[str, Any]]]:
    """(expression, parameter) of each Parameters.parameter."""
    if body.get("resourceType") != "Parameters":
        raise BadRequest(f"{operation} takes a Parameters resource, not {body.get('resourceType')!r}",
                         expression=["resourceType"])
    items = body.get("parameter") or []
    if not isinstance(items, list):
        raise BadRequest("Parameters.parameter must be an array", expression=["Parameters.parameter"])
    out = []
    for position, item in enumerate(items):
        where = f"Parameters.parameter[{position}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("Every parameter needs a name", expression=[where])
        out.append((where, item))
    return out


def value(where: str, item: dict[str, Any], kind: str) -> Any:
    """The parameter's value[kind] (e.g. "Boolean", "Reference"), or 400 saying which it needs."""
    key = f"value{kind}"
    found = item.get(key)
    expected = {"Boolean": bool, "Integer": int, "String": str, "Code": str}.get(kind, dict)
    if found is None or not isinstance(found, expected) or (expected is int and isinstance(found, bool)):
        raise BadRequest(f"Parameter '{item['name']}' takes {key}", expression=[f"{where}.{key}"])
    return found


def single(items: list[tuple[str, dict[str, Any]]], name: str) -> tuple[str, dict[str, Any]] | None:
    """The one parameter of that name (None when absent; 400 when repeated)."""
    found = [(where, item) for where, item in items if item["name"] == name]
    if len(found) > 1:
        raise BadRequest(f"Parameter '{name}' may appear once", expression=[found[1][0]])
    return found[0] if found else None
