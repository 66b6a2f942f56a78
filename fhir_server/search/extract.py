"""Index extraction: at write time, the values of every search parameter of a resource become typed
rows (token, string, date range, quantity, reference, number, uri, composite).

Simple FHIRPath paths (a.b.c, `as Type`, `.as(Type)`, `.where(resolve() is Type)`,
`.where(field='value')`) are compiled to plain dict walks; anything else is evaluated by fhirpathpy."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from ..model.elements import child
from .dates import MAX_MS, MIN_MS, date_range
from .registry import SearchParam
from .text import INDEXED_LENGTH, normalize
from .ucum import UCUM_SYSTEM, canonical

CHOICE_TYPES: dict[str, list[str]] = json.loads(
    resources.files("fhir_server.search").joinpath("data/choice-elements.json").read_text())
# Type suffixes of choice elements (valueQuantity, valueString, ...), for choices inside data types.
_CHOICE_SUFFIXES = frozenset(t for types in CHOICE_TYPES.values() for t in types)
# `code` elements with a required binding to one CodeSystem: that system is implied (Patient.gender).
CODE_SYSTEMS: dict[str, str] = json.loads(
    resources.files("fhir_server.search").joinpath("data/code-systems.json").read_text())


@dataclass
class IndexRows:
    """Rows per index table; each row starts with the parameter code."""

    token: list[tuple] = field(default_factory=list)  # (param, system, code, text)
    string: list[tuple] = field(default_factory=list)  # (param, normalized, exact)
    date: list[tuple] = field(default_factory=list)  # (param, low_ms, high_ms)
    number: list[tuple] = field(default_factory=list)  # (param, value)
    quantity: list[tuple] = field(default_factory=list)  # (param, system, code, value, canon_code, canon_value)
    reference: list[tuple] = field(default_factory=list)  # (param, target_type, target_id, url)
    uri: list[tuple] = field(default_factory=list)  # (param, value)
    # (param, c1_system, c1_code, c2_system, c2_code, c2_low, c2_high, c2_canon_code, c2_canon_value)
    composite: list[tuple] = field(default_factory=list)

    TABLES = ("token", "string", "date", "number", "quantity", "reference", "uri", "composite")


# ---- FHIRPath subset compiler ----

_STEP = re.compile(r"\.(?:as\((?P<as>[A-Za-z]+)\)"
                   r"|where\(resolve\(\) is (?P<resolve>[A-Za-z]+)\)"
                   r"|where\((?P<wfield>[a-zA-Z]+)\s*=\s*'(?P<wvalue>[^']*)'\)"
                   r"|(?P<field>[a-zA-Z][A-Za-z0-9]*)(?P<index>\[\d+\])?(?![A-Za-z0-9(]))")
_AS_FORM = re.compile(r"^\((?P<path>[^()]+) as (?P<type>[A-Za-z]+)\)(?P<rest>(?:\.[a-zA-Z]+)*)$")


@dataclass(frozen=True)
class _Path:
    root: str
    steps: tuple[tuple[str, Any], ...]


def _compile_branch(branch: str, root_type: str) -> _Path | None:
    branch = branch.strip()
    m = _AS_FORM.match(branch)
    if m:  # (X.y as T).rest  ==  X.y.as(T).rest
        branch = f"{m['path'].strip()}.as({m['type']}){m['rest']}"
    if branch == root_type:
        return _Path(root_type, ())
    if not branch.startswith(root_type + "."):
        return None
    rest = branch[len(root_type):]
    steps: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(rest):
        m = _STEP.match(rest, pos)
        if not m:
            return None
        if m["field"]:
            steps.append(("field", m["field"]))
            if m["index"]:
                steps.append(("index", int(m["index"][1:-1])))
        elif m["as"]:
            steps.append(("as", m["as"]))
        elif m["resolve"]:
            steps.append(("resolve", m["resolve"]))
        else:
            steps.append(("where", (m["wfield"], m["wvalue"])))
        pos = m.end()
    return _Path(root_type, tuple(steps))


@cache
def compile_expression(expression: str, root_type: str, relative: bool = False) -> tuple[_Path, ...] | None:
    """The expression as compiled paths, or None when it needs the FHIRPath engine.

    relative=True reads the expression from an element (composite components: `value.as(Quantity)`)."""
    paths = []
    for branch in expression.split("|"):
        branch = f"{root_type}.{branch.strip()}" if relative else branch
        compiled = _compile_branch(branch, root_type)
        if compiled is None:
            return None
        paths.append(compiled)
    return tuple(paths)


def _upper_first(name: str) -> str:
    return name[0].upper() + name[1:]


def _prepare(path: _Path) -> tuple[tuple[str, Any, tuple[str, ...] | None], ...]:
    """The path's steps with the JSON keys of each field worked out once: a choice element such as
    Observation.value reads valueQuantity, valueString, ... (or the one an `as` names)."""
    element = path.root  # element path used to recognise choice types, e.g. Observation.effective
    steps = path.steps
    out = []
    i = 0
    while i < len(steps):
        kind, arg = steps[i]
        if kind == "field":
            element = f"{element}.{arg}"
            explicit = steps[i + 1][1] if i + 1 < len(steps) and steps[i + 1][0] == "as" else None
            choices = CHOICE_TYPES.get(element)
            keys = None
            if choices is not None:
                keys = (arg + _upper_first(explicit),) if explicit else tuple(arg + t for t in choices)
                if explicit:
                    i += 1  # the `as` step is applied with the field
            out.append(("field", arg, keys))
        else:
            out.append((kind, arg, None))
        i += 1
    return tuple(out)


_PREPARED: dict[_Path, tuple] = {}


def _walk(path: _Path, node: Any) -> list[Any]:
    prepared = _PREPARED.get(path)
    if prepared is None:
        prepared = _PREPARED[path] = _prepare(path)
    nodes = [node]
    for kind, arg, keys in prepared:
        out: list[Any] = []
        if kind == "field":
            for n in nodes:
                if not isinstance(n, dict):
                    continue
                if keys is not None:
                    names = keys
                elif arg in n:
                    names = (arg,)
                else:  # a choice inside a data type, e.g. Extension.value[x]
                    names = [k for k in n if k.startswith(arg) and k[len(arg):] in _CHOICE_SUFFIXES]
                for name in names:
                    value = n.get(name)
                    if isinstance(value, list):
                        out.extend(value)
                    elif value is not None:
                        out.append(value)
        elif kind == "as":
            out = nodes  # `as` on a non-choice element: keep values as they are
        elif kind == "index":
            out = nodes[arg:arg + 1]
        elif kind == "resolve":
            prefix = f"{arg}/"
            out = [n for n in nodes if isinstance(n, dict) and isinstance(n.get("reference"), str)
                   and (n["reference"].startswith(prefix) or f"/{prefix}" in n["reference"])]
        elif kind == "where":
            key, value = arg
            out = [n for n in nodes if isinstance(n, dict) and n.get(key) == value]
        if not out:
            return out
        nodes = out
    return nodes


BOOLEAN_ELEMENTS: frozenset[str] = frozenset(json.loads(
    resources.files("fhir_server.search").joinpath("data/boolean-elements.json").read_text()))


@cache
def element_path(expression: str, resource_type: str) -> str | None:
    """Patient.gender for a plain path expression; None for unions, casts and functions."""
    compiled = compile_expression(expression, resource_type)
    if not compiled or len(compiled) != 1 or any(kind != "field" for kind, _ in compiled[0].steps):
        return None
    return ".".join([compiled[0].root, *(arg for _, arg in compiled[0].steps)])


@cache
def is_single_valued(expression: str, resource_type: str) -> bool:
    """True when the expression is a plain path whose every step is 0..1 (Observation.effective)."""
    compiled = compile_expression(expression, resource_type)
    if not compiled or len(compiled) != 1 or any(kind != "field" for kind, _ in compiled[0].steps):
        return False
    context = resource_type
    for _, name in compiled[0].steps:
        info = child(context, name)
        if info is None or info[1]:
            return False
        context = info[0]
    return True


def implicit_system(expression: str, resource_type: str) -> str | None:
    """The CodeSystem of a plain `code` element the expression selects, if its binding names one."""
    path = element_path(expression, resource_type)
    return CODE_SYSTEMS.get(path) if path else None


def is_boolean(expression: str, resource_type: str) -> bool:
    return element_path(expression, resource_type) in BOOLEAN_ELEMENTS


def evaluate(expression: str, resource_type: str, resource: dict[str, Any]) -> list[Any]:
    compiled = compile_expression(expression, resource_type)
    if compiled is not None:
        values: list[Any] = []
        for path in compiled:
            values.extend(_walk(path, resource))
        return values
    return _fhirpath(expression, resource)


def _check_syntax(expression: str) -> None:
    """Raise on a syntax error (fhirpathpy's own parser recovers silently and evaluates to nothing)."""
    from antlr4 import CommonTokenStream, InputStream
    from antlr4.error.ErrorListener import ErrorListener
    from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
    from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

    class Raise(ErrorListener):
        def syntaxError(self, recognizer, symbol, line, column, msg, e):  # noqa: N802 (antlr API)
            raise ValueError(f"column {column}: {msg}")

    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(Raise())
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(Raise())
    parser.expression()
    if parser.getCurrentToken().type != -1:  # trailing input that is not part of an expression
        raise ValueError(f"unexpected '{parser.getCurrentToken().text}'")


@cache
def _fhirpath_compiled(expression: str):
    import fhirpathpy  # imported lazily: only complex expressions need the engine

    try:
        _check_syntax(expression)
        return fhirpathpy.compile(expression)
    except Exception:  # an expression the engine cannot parse indexes nothing
        return None


def _fhirpath(expression: str, resource: dict[str, Any]) -> list[Any]:
    fn = _fhirpath_compiled(expression)
    if fn is None:
        return []
    try:
        return list(fn(resource, {}))
    except Exception:  # an expression the engine cannot run indexes nothing rather than failing the write
        return []


# ---- values to rows ----

def _reference_parts(reference: str) -> tuple[str | None, str | None]:
    """(type, id) of a relative or absolute literal reference; (None, None) for others."""
    if reference.startswith("#") or reference.startswith("urn:"):
        return None, None
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return parts[-2], parts[-1]
    return None, None


def _tokens(param: str, value: Any, rows: IndexRows, system: str | None = None) -> None:
    if isinstance(value, bool):
        rows.token.append((param, None, "true" if value else "false", None))
    elif isinstance(value, str):
        rows.token.append((param, system, value, None))
    elif isinstance(value, dict):
        if "coding" in value or "text" in value and "system" not in value and "value" not in value:
            for coding in value.get("coding") or []:
                _tokens(param, coding, rows)
            if isinstance(value.get("text"), str):
                rows.token.append((param, None, None, normalize(value["text"])))
        elif "code" in value or "display" in value:  # Coding (or a code with a system)
            display = value.get("display")
            rows.token.append((param, value.get("system"), value.get("code"),
                               normalize(display) if isinstance(display, str) else None))
        elif "value" in value:  # Identifier / ContactPoint
            rows.token.append((param, value.get("system"), str(value["value"]), None))
            id_type = value.get("type")
            if isinstance(id_type, dict):
                for coding in id_type.get("coding") or []:
                    rows.token.append((f"{param}:of-type", f"{coding.get('system', '')}|{coding.get('code', '')}",
                                       str(value["value"]), None))
                if isinstance(id_type.get("text"), str):
                    rows.token.append((param, value.get("system"), str(value["value"]), normalize(id_type["text"])))


_STRING_PARTS = ("text", "family", "given", "prefix", "suffix", "line", "city", "district", "state", "postalCode",
                 "country")


def _strings(param: str, value: Any, rows: IndexRows) -> None:
    if isinstance(value, str):
        rows.string.append((param, normalize(value), value[:2000]))
    elif isinstance(value, dict):  # HumanName, Address, or anything with string parts
        for part in _STRING_PARTS:
            item = value.get(part)
            for s in item if isinstance(item, list) else [item]:
                if isinstance(s, str):
                    rows.string.append((param, normalize(s), s[:2000]))


def _date_ranges(value: Any) -> list[tuple[int, int]]:
    if isinstance(value, str):
        r = date_range(value)
        return [r] if r else []
    if isinstance(value, dict):
        if "start" in value or "end" in value:  # Period: an open end is unbounded
            start = date_range(value["start"]) if isinstance(value.get("start"), str) else None
            end = date_range(value["end"]) if isinstance(value.get("end"), str) else None
            return [(start[0] if start else MIN_MS, end[1] if end else MAX_MS)]
        out = []
        for event in value.get("event") or []:  # Timing
            r = date_range(event) if isinstance(event, str) else None
            if r:
                out.append(r)
        bounds = (value.get("repeat") or {}).get("boundsPeriod")
        if bounds:
            out.extend(_date_ranges(bounds))
        return out
    return []


def quantity_row(param: str, q: dict[str, Any]) -> tuple | None:
    value = q.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    system, code = q.get("system"), q.get("code") or q.get("unit")
    canon_code, canon_value = None, None
    if system == UCUM_SYSTEM and isinstance(code, str):
        canon_code, factor = canonical(code)
        canon_value = float(f"{value * factor:.12g}")
    return (param, system, code, float(value), canon_code, canon_value)


def _add_values(param: SearchParam, values: list[Any], rows: IndexRows, resource_type: str = "") -> None:
    code = param.code
    kind = param.type
    system = implicit_system(param.expression, resource_type) if kind == "token" and resource_type else None
    for value in values:
        if kind == "token":
            _tokens(code, value, rows, system)
        elif kind == "string":
            _strings(code, value, rows)
        elif kind == "date":
            rows.date.extend((code, low, high) for low, high in _date_ranges(value))
        elif kind == "number":
            if isinstance(value, int | float) and not isinstance(value, bool):
                rows.number.append((code, float(value)))
        elif kind == "quantity":
            if isinstance(value, dict):
                row = quantity_row(code, value)
                if row:
                    rows.quantity.append(row)
        elif kind == "reference":
            if isinstance(value, str):  # canonical
                rows.reference.append((code, None, None, value[:1000]))
            elif isinstance(value, dict):
                ref = value.get("reference")
                if isinstance(ref, str):
                    target_type, target_id = _reference_parts(ref)
                    rows.reference.append((code, target_type, target_id, ref[:1000]))
                ident = value.get("identifier")
                if isinstance(ident, dict) and "value" in ident:
                    rows.token.append((f"{code}:identifier", ident.get("system"), str(ident["value"]), None))
        elif kind == "uri":
            if isinstance(value, str):
                rows.uri.append((code, value[:1000]))


def _composite(param: SearchParam, resource_type: str, resource: dict[str, Any], registry, rows: IndexRows):
    """Rows pairing the components' values from the same element (e.g. one Observation.component)."""
    if len(param.components) != 2:
        return
    defs = [registry.by_url.get(c.definition) for c in param.components]
    if None in defs or defs[0].type != "token":
        return
    for branch in param.expression.split("|"):
        root = branch.strip()  # element path, so that choice types such as value[x] resolve
        for element in evaluate(root, resource_type, resource):
            if isinstance(element, dict):
                _composite_rows(param, defs, root, element, rows)


@cache
def _component_param(code: str, kind: str) -> SearchParam:
    return SearchParam(code, kind, "")


def _component_rows(param: SearchParam, component, definition, root: str, element: dict[str, Any]) -> IndexRows:
    out = IndexRows()
    compiled = compile_expression(component.expression, root, True)
    values = ([v for path in compiled for v in _walk(path, element)] if compiled is not None
              else _fhirpath(component.expression, element))
    if values:
        _add_values(_component_param(param.code, definition.type), values, out)
    return out


def _composite_rows(param: SearchParam, defs, root: str, element: dict[str, Any], rows: IndexRows) -> None:
    # The value component first: most elements lack it (an Observation has one value[x] of four kinds),
    # and then the code component need not be looked at.
    second = _component_rows(param, param.components[1], defs[1], root, element)
    if not (second.quantity or second.token or second.date or second.string):
        return
    first = _component_rows(param, param.components[0], defs[0], root, element)
    for _, system, code, _text in first.token:
        if code is None:
            continue
        for q in second.quantity:
            rows.composite.append((param.code, system, code, q[1], q[2], q[3], q[3], q[4], q[5]))
        for t in second.token:
            rows.composite.append((param.code, system, code, t[1], t[2], None, None, None, None))
        for d in second.date:
            rows.composite.append((param.code, system, code, None, None, d[1], d[2], None, None))
        for s in second.string:
            rows.composite.append((param.code, system, code, None, s[1], None, None, None, None))


def _first_keys(expression: str, resource_type: str) -> frozenset[str] | None:
    """Top-level JSON keys a compiled expression starts from (value -> valueQuantity, ...); None if unknown."""
    compiled = compile_expression(expression, resource_type)
    if compiled is None:
        return None
    keys: set[str] = set()
    for path in compiled:
        if not path.steps or path.steps[0][0] != "field":
            return None
        name = path.steps[0][1]
        choices = CHOICE_TYPES.get(f"{resource_type}.{name}")
        keys.update([name + t for t in choices] if choices else [name])
    return frozenset(keys)


@cache
def _needed_keys(param: SearchParam, resource_type: str) -> tuple[frozenset[str], ...]:
    """Sets of top-level keys of which a resource needs one each for the parameter to have values."""
    if param.type == "composite" and param.expression.strip() == resource_type:
        # a composite over the resource itself needs every component's element (code and value[x])
        keys = [_first_keys(f"{resource_type}.{c.expression}", resource_type) for c in param.components]
    else:
        keys = [_first_keys(param.expression, resource_type)]
    return tuple(k for k in keys if k is not None)


def _plan(resource_type: str, registry) -> list[tuple[SearchParam, tuple[frozenset[str], ...]]]:
    """The parameters extraction runs for a type, each with the top-level keys it needs."""
    plan = registry.plans.get(resource_type)
    if plan is None:
        plan = registry.plans[resource_type] = [
            (p, _needed_keys(p, resource_type)) for p in registry.params(resource_type).values()
            # _id and _lastUpdated are columns of the resources table; a union's rows are its parts'
            if p.code not in ("_id", "_lastUpdated") and not p.parts]
    return plan


def extract(resource_type: str, resource: dict[str, Any], registry) -> IndexRows:
    rows = IndexRows()
    present = resource.keys()
    for param, needed in _plan(resource_type, registry):
        if any(keys.isdisjoint(present) for keys in needed):
            continue  # the elements this parameter reads are absent
        if param.type == "composite":
            _composite(param, resource_type, resource, registry, rows)
        elif param.type != "special" and param.expression:
            _add_values(param, evaluate(param.expression, resource_type, resource), rows, resource_type)
    # keep only distinct rows: a value reached by two paths is indexed once
    for table in IndexRows.TABLES:
        values = getattr(rows, table)
        if len(values) > 1:
            setattr(rows, table, list(dict.fromkeys(values)))
    return rows


__all__ = ["INDEXED_LENGTH", "IndexRows", "evaluate", "extract", "quantity_row"]
