"""Operation inputs from the query string and a Parameters body, and Parameters outputs."""

from __future__ import annotations

from typing import Any

from ..model.outcome import BadRequest

_PRIMITIVES = ("valueString", "valueCode", "valueUri", "valueCanonical", "valueUrl", "valueId", "valueDateTime",
               "valueDate", "valueMarkdown", "valueOid")


class OperationInput:
    """Named inputs of one call. A Parameters body (POST) wins over the query string for the same name."""

    def __init__(self, query: list[tuple[str, str]], body: dict[str, Any] | None = None):
        self.query = query
        self.body: list[dict[str, Any]] = []
        if body is not None:
            if body.get("resourceType") != "Parameters":
                raise BadRequest(f"The body must be a Parameters resource, not {body.get('resourceType')!r}",
                                 expression=["resourceType"])
            self.body = [p for p in body.get("parameter") or [] if isinstance(p, dict)]

    def _part(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.body if p.get("name") == name), None)

    def _query(self, name: str) -> str | None:
        values = [v for k, v in self.query if k == name]
        if len(values) > 1:
            raise BadRequest(f"Parameter '{name}' is given more than once", expression=[name])
        return values[0] if values else None

    def string(self, name: str) -> str | None:
        part = self._part(name)
        if part is not None:
            for key in _PRIMITIVES:
                if isinstance(part.get(key), str):
                    return part[key]
            raise BadRequest(f"Parameter '{name}' must have a string, code or uri value", expression=[name])
        return self._query(name)

    def integer(self, name: str) -> int | None:
        part = self._part(name)
        if part is not None:
            value = part.get("valueInteger", part.get("valueUnsignedInt", part.get("valuePositiveInt")))
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BadRequest(f"Parameter '{name}' must be a non-negative integer", expression=[name])
            return value
        raw = self._query(name)
        if raw is None:
            return None
        if not raw.isdigit() or len(raw) > 9:
            raise BadRequest(f"Parameter '{name}' must be a non-negative integer, not {raw[:20]!r}", expression=[name])
        return int(raw)

    def _typed(self, name: str, key: str, kind: type, what: str) -> tuple[bool, Any]:
        """(given in the body, its value) for a body parameter that must be value[x] of one type."""
        part = self._part(name)
        if part is None:
            return False, None
        if not isinstance(part.get(key), kind):
            raise BadRequest(f"Parameter '{name}' must be {what}", expression=[name])
        return True, part[key]

    def boolean(self, name: str) -> bool | None:
        given, found = self._typed(name, "valueBoolean", bool, "a boolean")
        if given:
            return found
        raw = self._query(name)
        if raw is None:
            return None
        if raw not in ("true", "false"):
            raise BadRequest(f"Parameter '{name}' must be true or false", expression=[name])
        return raw == "true"

    def coding(self, name: str) -> dict[str, Any] | None:
        """A Coding; in a query string written system|code."""
        given, found = self._typed(name, "valueCoding", dict, "a Coding")
        if given:
            return found
        raw = self._query(name)
        if raw is None:
            return None
        system, bar, code = raw.rpartition("|")
        return {"system": system, "code": code} if bar and system else {"code": code}

    def concept(self, name: str) -> dict[str, Any] | None:
        given, found = self._typed(name, "valueCodeableConcept", dict, "a CodeableConcept")
        if given:
            return found
        raw = self._query(name)
        return None if raw is None else {"coding": [self.coding(name)]}

    def resource(self, name: str) -> dict[str, Any] | None:
        part = self._part(name)
        if part is None:
            if self._query(name) is not None:
                raise BadRequest(f"Parameter '{name}' is a resource: send it in a Parameters body", expression=[name])
            return None
        if not isinstance(part.get("resource"), dict):
            raise BadRequest(f"Parameter '{name}' must carry a resource", expression=[name])
        return part["resource"]

    def strings(self, name: str) -> list[str]:
        out = [v for k, v in self.query if k == name]
        for part in self.body:
            if part.get("name") == name:
                out += [part[key] for key in _PRIMITIVES if isinstance(part.get(key), str)]
        return out


def parameters(*parts: dict[str, Any] | None) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [p for p in parts if p]}


def value(name: str, kind: str, content: Any) -> dict[str, Any] | None:
    """One output parameter, e.g. value("display", "String", "Heart rate"); None when content is None."""
    return None if content is None else {"name": name, f"value{kind}": content}
