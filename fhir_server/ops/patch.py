"""PATCH: JSON Patch (RFC 6902) and FHIRPath Patch (a Parameters resource), applied to a copy of the
current resource; the caller validates the result and writes it as a new version."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonpatch

from ..model.elements import child
from ..model.outcome import BadRequest, Unprocessable

JSON_PATCH = "application/json-patch+json"


_JSON_PATCH_MEMBERS = {"add": ("path", "value"), "remove": ("path",), "replace": ("path", "value"),
                       "move": ("from", "path"), "copy": ("from", "path"), "test": ("path", "value")}


def apply_json_patch(resource: dict[str, Any], operations: Any) -> dict[str, Any]:
    if not isinstance(operations, list):
        raise BadRequest("A JSON Patch document is an array of operations")
    for number, op in enumerate(operations):  # a malformed document is 400 (RFC 5789), before anything applies
        if not isinstance(op, dict) or op.get("op") not in _JSON_PATCH_MEMBERS:
            raise BadRequest(f"JSON Patch operation {number} needs an 'op' of {sorted(_JSON_PATCH_MEMBERS)}")
        missing = [m for m in _JSON_PATCH_MEMBERS[op["op"]] if m not in op]
        if missing or not all(isinstance(op.get(m), str) for m in ("path", "from") if m in op):
            raise BadRequest(f"JSON Patch operation {number} ({op['op']}) needs {', '.join(missing or ['path'])}")
    try:
        return jsonpatch.apply_patch(resource, operations, in_place=False)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise Unprocessable(f"JSON Patch could not be applied: {exc}") from exc
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise BadRequest(f"Malformed JSON Patch: {exc}") from exc


# ---- FHIRPath Patch ----

_STEP = re.compile(r"\.(?:where\((?P<wfield>[a-zA-Z]+)\s*=\s*'(?P<wvalue>[^']*)'\)"
                   r"|(?P<field>[a-zA-Z][A-Za-z0-9]*)(?:\[(?P<index>\d+)\])?(?![A-Za-z0-9(]))")


class _Node:
    """A value in the resource with a way to replace or remove it."""

    def __init__(self, value: Any, parent: Any, key: Any, context: str | None):
        self.value, self.parent, self.key, self.context = value, parent, key, context

    def set(self, value: Any) -> None:
        self.parent[self.key] = value

    def remove(self) -> None:
        del self.parent[self.key]


def _prune(value: Any) -> Any:
    """Drop the empty lists and objects a delete can leave behind (FHIR JSON has none)."""
    if isinstance(value, dict):
        for key in list(value):
            if _prune(value[key]) in ({}, []):
                del value[key]
    elif isinstance(value, list):
        value[:] = [v for v in value if _prune(v) not in ({}, [])]
    return value


def _resolve(resource: dict[str, Any], path: str) -> list[_Node]:
    """The nodes a simple FHIRPath (Type.a.b[0].where(x='y').c) selects, with their parents."""
    rtype = resource["resourceType"]
    if path == rtype:
        return [_Node(resource, None, None, rtype)]
    if not path.startswith(rtype + "."):
        raise Unprocessable(f"Path '{path}' does not start with {rtype}", expression=[path])
    nodes = [_Node(resource, None, None, rtype)]
    pos, rest = 0, path[len(rtype):]
    while pos < len(rest):
        m = _STEP.match(rest, pos)
        if not m:
            raise Unprocessable(f"Path '{path}' uses FHIRPath this server does not support for patching "
                                "(fields, [index] and where(field='value'))", expression=[path])
        pos = m.end()
        out = []
        if m["field"]:
            for node in nodes:
                if not isinstance(node.value, dict):
                    continue
                info = child(node.context, m["field"]) if node.context else None
                ctx = info[0] if info else None
                value = node.value.get(m["field"])
                if isinstance(value, list):
                    out.extend(_Node(v, value, i, ctx) for i, v in enumerate(value))
                elif value is not None:
                    out.append(_Node(value, node.value, m["field"], ctx))
            if m["index"] is not None:
                index = int(m["index"])
                out = out[index:index + 1]
        else:
            out = [n for n in nodes if isinstance(n.value, dict) and n.value.get(m["wfield"]) == m["wvalue"]]
        nodes = out
    return nodes


def _one(resource: dict[str, Any], path: str) -> _Node:
    nodes = _resolve(resource, path)
    if len(nodes) != 1:
        raise Unprocessable(f"Path '{path}' must select exactly one element, it selects {len(nodes)}",
                            expression=[path])
    return nodes[0]


def _part(parts: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((p for p in parts if p.get("name") == name), None)


def _value(part: dict[str, Any] | None) -> Any:
    """value[x] of a parameter part, or an object built from its nested parts (backbone elements)."""
    if part is None:
        return None
    for key, value in part.items():
        if key.startswith("value"):
            return copy.deepcopy(value)
    if "part" in part:
        return {p["name"]: _value(p) for p in part["part"]}
    return None


def _int(parts: list[dict[str, Any]], name: str) -> int:
    part = _part(parts, name)
    if part is None or not isinstance(part.get("valueInteger"), int):
        raise BadRequest(f"FHIRPath Patch operation needs an integer '{name}'")
    return part["valueInteger"]


def apply_fhirpath_patch(resource: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    if parameters.get("resourceType") != "Parameters":
        raise BadRequest("A FHIRPath Patch is a Parameters resource")
    result = copy.deepcopy(resource)
    for number, operation in enumerate(parameters.get("parameter") or []):
        if operation.get("name") != "operation":
            raise BadRequest(f"Parameter {number} is not an 'operation'")
        parts = operation.get("part") or []
        kind = (_part(parts, "type") or {}).get("valueCode")
        path = (_part(parts, "path") or {}).get("valueString")
        if kind not in ("add", "insert", "delete", "replace", "move") or not path:
            raise BadRequest(f"Operation {number} needs a type (add|insert|delete|replace|move) and a path")
        if kind == "delete":
            nodes = _resolve(result, path)
            if len(nodes) > 1:
                raise Unprocessable(f"delete path '{path}' selects {len(nodes)} elements", expression=[path])
            if nodes:
                nodes[0].remove()
            continue
        if kind == "replace":
            value = _value(_part(parts, "value"))
            if value is None:
                raise BadRequest(f"replace at '{path}' needs a value")
            _one(result, path).set(value)
        elif kind == "add":
            name = (_part(parts, "name") or {}).get("valueString")
            value = _value(_part(parts, "value"))
            if not name or value is None:
                raise BadRequest(f"add at '{path}' needs a name and a value")
            target = _one(result, path)
            if not isinstance(target.value, dict):
                raise Unprocessable(f"add: '{path}' is not an element that can have children", expression=[path])
            info = child(target.context, name) if target.context else None
            existing = target.value.get(name)
            if isinstance(existing, list):
                existing.append(value)
            elif existing is not None:
                raise Unprocessable(f"add: '{path}.{name}' already has a value; use replace", expression=[path])
            else:
                target.value[name] = [value] if info and info[1] else value
        else:  # insert / move within a list
            nodes = _resolve(result, path)
            container = nodes[0].parent if nodes else None
            if kind == "insert":
                index = _int(parts, "index")
                value = _value(_part(parts, "value"))
                if container is None or not isinstance(container, list) or not 0 <= index <= len(container):
                    raise Unprocessable(f"insert: '{path}' is not a list with position {index}", expression=[path])
                container.insert(index, value)
            else:
                source, destination = _int(parts, "source"), _int(parts, "destination")
                if container is None or not isinstance(container, list) or not (
                        0 <= source < len(container) and 0 <= destination < len(container)):
                    raise Unprocessable(f"move: '{path}' has no positions {source} and {destination}",
                                        expression=[path])
                container.insert(destination, container.pop(source))
    return _prune(result)


def apply_patch(resource: dict[str, Any], content_type: str, patch: Any) -> dict[str, Any]:
    """The patched copy of resource; id and resourceType cannot change."""
    if content_type == JSON_PATCH:
        patched = apply_json_patch(resource, patch)
    else:
        patched = apply_fhirpath_patch(resource, patch)
    if not isinstance(patched, dict) or patched.get("resourceType") != resource["resourceType"] \
            or patched.get("id") != resource["id"]:
        raise Unprocessable("A patch cannot change the resource's type or id")
    return patched
