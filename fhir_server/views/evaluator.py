"""SQL on FHIR v2 ViewDefinitions: checked and compiled once, then turned into rows resource by resource.

The shareable subset: `select` with `column` (name, FHIRPath `path`, `type`, `collection`), nested
`select`, `forEach`, `forEachOrNull`, `unionAll`, `where`, `constant` (%name in any path), and the
functions getResourceKey() and getReferenceKey([type]). Paths run on fhirpathpy with the R4 model.
A resource gives the cross product of its selects' rows (per forEach focus); `unionAll` branches are
concatenated and must have the same columns in the same order."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import fhirpathpy
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from ..model.outcome import BadRequest
from ..model.types import is_resource_type

MODEL = models["r4"]
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_VARIABLE = re.compile(r"%([A-Za-z][A-Za-z0-9_]*)")
_BUILTIN_VARIABLES = {"resource", "rootResource", "context", "ucum", "sct", "loinc"}
_CONSTANT_VALUES = ("valueBase64Binary", "valueBoolean", "valueCanonical", "valueCode", "valueDate",
                    "valueDateTime", "valueDecimal", "valueId", "valueInstant", "valueInteger", "valueOid",
                    "valuePositiveInt", "valueString", "valueTime", "valueUnsignedInt", "valueUri", "valueUrl",
                    "valueUuid")


class ViewError(BadRequest):
    """A ViewDefinition that cannot run (400), or a row that breaks it (a single-valued column with many)."""


def _reference_key(inputs: list[Any], type_info: Any = None) -> list[str]:
    wanted = getattr(type_info, "name", None)
    keys = []
    for item in inputs:
        reference = item.get("reference") if isinstance(item, dict) else None
        if not isinstance(reference, str):
            continue
        parts = reference.split("/_history/")[0].rstrip("/").split("/")
        if len(parts) < 2 or (wanted is not None and parts[-2] != wanted):
            continue
        keys.append(parts[-1])
    return keys


def _resource_key(inputs: list[Any]) -> list[str]:
    return [item["id"] for item in inputs if isinstance(item, dict) and isinstance(item.get("id"), str)]


FUNCTIONS = {
    "getResourceKey": {"fn": _resource_key},
    "getReferenceKey": {"fn": _reference_key, "arity": {0: [], 1: ["TypeSpecifier"]}},
}


@dataclass
class Path:
    """A compiled FHIRPath expression with where it came from (for error messages)."""

    text: str
    where: str
    run: Callable[..., list[Any]] = field(repr=False)

    def __call__(self, focus: Any, constants: dict[str, Any], raw: bool = False) -> list[Any]:
        try:
            return self.run(focus, constants, raw)
        except ViewError:
            raise
        except Exception as exc:  # fhirpathpy reports type errors and the like as plain exceptions
            raise ViewError(f"FHIRPath '{self.text}' failed: {exc}", expression=[self.where]) from exc


def compile_path(text: Any, where: str, constants: dict[str, Any]) -> Path:
    if not isinstance(text, str) or not text.strip():
        raise ViewError("A FHIRPath expression (string) is required here", expression=[where])
    for name in _VARIABLE.findall(text):
        if name not in constants and name not in _BUILTIN_VARIABLES:
            raise ViewError(f"'%{name}' is not a constant of this view", expression=[where])
    body = text.strip()
    if body == "$this":
        return Path(text, where, lambda focus, _c, _raw: [focus])
    body = body.removeprefix("$this.")  # fhirpathpy has no $this outside a function's argument
    try:
        compiled = {raw: fhirpathpy.compile(body, MODEL, {"userInvocationTable": FUNCTIONS, "returnRawData": raw})
                    for raw in (False, True)}
    except Exception as exc:
        raise ViewError(f"'{text}' is not a valid FHIRPath expression: {exc}", expression=[where]) from exc
    return Path(text, where, lambda focus, c, raw: compiled[raw](focus, c))


@dataclass
class Column:
    name: str
    path: Path
    type: str | None
    collection: bool


@dataclass
class Select:
    columns: list[Column]
    selects: list[Select]
    union: list[Select]
    for_each: Path | None = None
    or_null: bool = False

    def names(self) -> list[str]:
        out = [c.name for c in self.columns]
        for select in self.selects:
            out += select.names()
        if self.union:
            out += self.union[0].names()
        return out

    def all_columns(self) -> list[Column]:
        out = list(self.columns)
        for select in self.selects:
            out += select.all_columns()
        if self.union:
            out += self.union[0].all_columns()
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, ResourceNode):
        value = value.data
    if isinstance(value, bool | int | float | str | dict | list) or value is None:
        return value
    if isinstance(value, Decimal):
        return float(value)
    return str(value)  # FHIRPath dates, times and quantities


class View:
    def __init__(self, definition: Any):
        if not isinstance(definition, dict):
            raise ViewError("A ViewDefinition is a JSON object", expression=["ViewDefinition"])
        if definition.get("resourceType", "ViewDefinition") != "ViewDefinition":
            raise ViewError("resourceType must be ViewDefinition", expression=["ViewDefinition.resourceType"])
        self.definition = definition
        self.name = definition.get("name") if isinstance(definition.get("name"), str) else "view"
        resource = definition.get("resource")
        if not isinstance(resource, str) or not is_resource_type(resource):
            raise ViewError(f"resource '{resource}' is not a FHIR resource type",
                            expression=["ViewDefinition.resource"])
        self.resource = resource
        self.constants = self._constants(definition.get("constant") or [])
        self.where = []
        for i, item in enumerate(definition.get("where") or []):
            where = f"ViewDefinition.where[{i}].path"
            self.where.append(compile_path(item.get("path") if isinstance(item, dict) else None, where,
                                           self.constants))
        selects = definition.get("select")
        if not isinstance(selects, list) or not selects:
            raise ViewError("A ViewDefinition needs at least one select", expression=["ViewDefinition.select"])
        self.root = Select([], [self._select(s, f"ViewDefinition.select[{i}]") for i, s in enumerate(selects)], [])
        self.columns = self.root.all_columns()
        names = [c.name for c in self.columns]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ViewError(f"Column names must be unique: {', '.join(duplicates)}",
                            expression=["ViewDefinition.select"])
        self.names = names

    def _constants(self, items: Any) -> dict[str, Any]:
        constants = {}
        for i, item in enumerate(items if isinstance(items, list) else [None]):
            where = f"ViewDefinition.constant[{i}]"
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or not _NAME.match(name):
                raise ViewError("A constant needs a name (letters, digits, _)", expression=[f"{where}.name"])
            values = [item[k] for k in _CONSTANT_VALUES if k in item]
            if len(values) != 1:
                raise ViewError(f"Constant '{name}' needs exactly one value[x]", expression=[where])
            constants[name] = values[0]
        return constants

    def _select(self, spec: Any, where: str) -> Select:
        if not isinstance(spec, dict):
            raise ViewError("A select is a JSON object", expression=[where])
        if "forEach" in spec and "forEachOrNull" in spec:
            raise ViewError("A select has forEach or forEachOrNull, not both", expression=[where])
        for_each, or_null = None, False
        if "forEach" in spec or "forEachOrNull" in spec:
            key = "forEach" if "forEach" in spec else "forEachOrNull"
            for_each, or_null = compile_path(spec[key], f"{where}.{key}", self.constants), key == "forEachOrNull"
        columns = []
        for i, column in enumerate(spec.get("column") or []):
            at = f"{where}.column[{i}]"
            if not isinstance(column, dict) or not isinstance(column.get("name"), str) \
                    or not _NAME.match(column["name"]):
                raise ViewError("A column needs a name of letters, digits and _ (starting with a letter)",
                                expression=[f"{at}.name"])
            collection = column.get("collection", False)
            if not isinstance(collection, bool):
                raise ViewError("collection is true or false", expression=[f"{at}.collection"])
            columns.append(Column(column["name"], compile_path(column.get("path"), f"{at}.path", self.constants),
                                  column.get("type") if isinstance(column.get("type"), str) else None, collection))
        selects = [self._select(s, f"{where}.select[{i}]") for i, s in enumerate(spec.get("select") or [])]
        union = [self._select(s, f"{where}.unionAll[{i}]") for i, s in enumerate(spec.get("unionAll") or [])]
        if union:
            first = union[0].names()
            for i, branch in enumerate(union[1:], 1):
                if branch.names() != first:
                    raise ViewError(f"unionAll branches must have the same columns in the same order: {first} "
                                    f"and {branch.names()}", expression=[f"{where}.unionAll[{i}]"])
        if not columns and not selects and not union:
            raise ViewError("A select needs a column, a select or a unionAll", expression=[where])
        return Select(columns, selects, union, for_each, or_null)

    # ---- evaluation ----

    def rows(self, resource: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The view's rows for one resource (none for other types or where a `where` is not true)."""
        if resource.get("resourceType") != self.resource:
            return []
        for path in self.where:
            result = path(resource, self.constants)
            if not result:
                return []
            if len(result) != 1 or not isinstance(result[0], bool):
                raise ViewError(f"where '{path.text}' must give true or false, not {result[:3]}",
                                expression=[path.where])
            if not result[0]:
                return []
        return [tuple(row[name] for name in self.names) for row in self._rows(self.root, resource)]

    def _rows(self, select: Select, node: Any) -> list[dict[str, Any]]:
        if select.for_each is not None:
            foci = select.for_each(node, self.constants, raw=True)
            if not foci and select.or_null:
                return [dict.fromkeys(select.names())]
        else:
            foci = [node]
        out: list[dict[str, Any]] = []
        for focus in foci:
            parts: list[list[dict[str, Any]]] = []
            if select.columns:
                parts.append([{c.name: self._value(c, focus) for c in select.columns}])
            parts += [self._rows(s, focus) for s in select.selects]
            if select.union:
                parts.append([row for branch in select.union for row in self._rows(branch, focus)])
            combined: list[dict[str, Any]] = [{}]
            for part in parts:
                combined = [{**left, **right} for left in combined for right in part]
            out += combined
        return out

    def _value(self, column: Column, focus: Any) -> Any:
        values = [_plain(v) for v in column.path(focus, self.constants)]
        if column.collection:
            return values
        if len(values) > 1:
            raise ViewError(f"Column '{column.name}' has {len(values)} values for one row; mark it "
                            "collection: true or narrow its path", expression=[column.path.where])
        return values[0] if values else None
