"""Parsing FHIR search parameters into a SearchQuery: typed, validated clauses (AND of ORs),
chains, reverse chains, sort keys, includes and result options. No SQL here (see store/search_sql.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..model.outcome import BadRequest, Issue, NotFound
from ..model.types import is_resource_type
from .dates import date_range
from .extract import is_boolean, is_single_valued
from .registry import CORE, PATIENT_COMPARTMENT, RESULT_PARAMETERS, Registry, SearchParam
from .text import normalize

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
MAX_CHAIN_DEPTH = 4
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


# ---- parsed values ----

@dataclass(frozen=True)
class TokenValue:
    system: str | None  # None: any system; "" : no system (|code)
    code: str | None  # None: any code (system|)
    text: str | None = None  # :text search (normalized)


@dataclass(frozen=True)
class StringValue:
    normalized: str
    exact: str


@dataclass(frozen=True)
class RangeValue:
    """A date (epoch ms) or number/quantity value with its implicit precision range."""

    prefix: str
    value: float
    low: float
    high: float
    system: str | None = None  # quantity only
    code: str | None = None
    canon_code: str | None = None
    canon_low: float | None = None
    canon_high: float | None = None
    canon_value: float | None = None


@dataclass(frozen=True)
class ReferenceValue:
    target_type: str | None
    target_id: str | None
    url: str | None  # absolute or canonical URL that is not ours


@dataclass(frozen=True)
class UriValue:
    value: str


@dataclass(frozen=True)
class CompositeValue:
    first: TokenValue
    second: Any
    kind: str  # the second component's parameter type: quantity, token, date, string or number


# ---- clauses ----

@dataclass
class Clause:
    """One parameter occurrence: its values are ORed; clauses are ANDed."""

    code: str
    kind: str  # token string date number quantity reference uri composite id lastUpdated missing
    #            chain has text content compartment; type and any (access rules: values are types / groups)
    param: SearchParam | None = None
    modifier: str | None = None
    values: list[Any] = field(default_factory=list)
    target_types: tuple[str, ...] = ()  # chain: the types the reference may point to
    inner: Clause | None = None  # chain / has
    has_type: str | None = None  # _has: the referring resource type
    missing: bool | None = None


@dataclass
class SortKey:
    code: str
    descending: bool
    param: SearchParam | None  # None for _id / _lastUpdated


@dataclass
class Include:
    source_type: str
    param_code: str  # "*" for every reference parameter
    target_type: str | None
    iterate: bool
    reverse: bool


@dataclass
class SearchQuery:
    resource_types: tuple[str, ...]  # one for type-level search; several (or all) for system search
    clauses: list[Clause] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    count: int = 20
    cursor: str | None = None
    total: str = "auto"  # none | estimate | accurate; auto: only when the first page holds every match
    summary: str | None = None  # true | text | data | count | false
    elements: list[str] | None = None
    includes: list[Include] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    self_params: list[tuple[str, str]] = field(default_factory=list)  # what the self/next links repeat


# ---- value parsers ----

def _split_or(raw: str) -> list[str]:
    """Split on commas that are not escaped with a backslash, and unescape \\, \\| \\$."""
    parts, current, escaped = [], [], False
    for ch in raw:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _split_prefix(raw: str) -> tuple[str, str]:
    if len(raw) > 2 and raw[:2] in PREFIXES and not raw[2:3].isalpha():
        return raw[:2], raw[2:]
    return "eq", raw


def _number_range(text: str) -> tuple[float, float, float]:
    """Value and implicit range from its significant digits: '100' covers [99.5, 100.5), '0.8' [0.75, 0.85).

    Decimal arithmetic, so that 0.8 + 0.05 is exactly 0.85 and boundaries fall where the digits say."""
    value = Decimal(text)
    half = Decimal(5).scaleb(value.as_tuple().exponent - 1)
    return float(value), float(value - half), float(value + half)


def parse_token(raw: str) -> TokenValue:
    if "|" in raw:
        system, code = raw.split("|", 1)
        return TokenValue(system, code or None)
    return TokenValue(None, raw)


def parse_date(raw: str) -> RangeValue:
    prefix, text = _split_prefix(raw)
    rng = date_range(text)
    if rng is None:
        raise ValueError(f"'{raw}' is not a FHIR date, dateTime or instant")
    return RangeValue(prefix, rng[0], rng[0], rng[1])


def parse_number(raw: str) -> RangeValue:
    prefix, text = _split_prefix(raw)
    if not _NUMBER_RE.match(text):
        raise ValueError(f"'{raw}' is not a number")
    value, low, high = _number_range(text)
    return RangeValue(prefix, value, low, high)


def parse_quantity(raw: str) -> RangeValue:
    from .ucum import UCUM_SYSTEM, canonical

    number, _, unit = raw.partition("|")
    value = parse_number(number)
    system, code = None, None
    if unit:
        system, _, code = unit.partition("|")
        if not _:  # "5.4|mg" is not valid: system|code needs both bars
            raise ValueError(f"'{raw}' must be number|system|code")
        system, code = system or None, code or None
    canon_code = canon_low = canon_high = canon_value = None
    if code and system in (UCUM_SYSTEM, None):
        canon_code, factor = canonical(code)
        canon_low, canon_high = value.low * factor, value.high * factor
        canon_value = value.value * factor
    return RangeValue(value.prefix, value.value, value.low, value.high, system, code, canon_code, canon_low,
                      canon_high, canon_value)


def parse_reference(raw: str, base_url: str, type_modifier: str | None) -> ReferenceValue:
    text = raw
    if base_url and text.startswith(base_url.rstrip("/") + "/"):
        text = text[len(base_url.rstrip("/")) + 1:]
    if "://" in text or text.startswith("urn:"):
        return ReferenceValue(None, None, raw)
    parts = text.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) == 2 and is_resource_type(parts[0]):
        if type_modifier and parts[0] != type_modifier:
            raise ValueError(f"'{raw}' is not a {type_modifier} reference")
        return ReferenceValue(parts[0], parts[1], None)
    if len(parts) == 1:
        return ReferenceValue(type_modifier, parts[0], None)
    raise ValueError(f"'{raw}' is not a reference (Type/id, id or an absolute URL)")


_VALUE_PARSERS = {"date": parse_date, "number": parse_number, "quantity": parse_quantity,
                  "uri": UriValue, "token": parse_token}


# ---- the parser ----

class QueryParser:
    def __init__(self, registry: Registry = CORE, base_url: str = "", strict: bool = False,
                 default_count: int = 20, max_count: int = 1000):
        self.registry = registry
        self.base_url = base_url
        self.strict = strict
        self.default_count = default_count
        self.max_count = max_count

    def problem(self, query: SearchQuery, message: str, name: str) -> None:
        """Strict: fail with 400. Lenient: ignore the parameter and report it in the Bundle."""
        if self.strict:
            raise BadRequest(message, expression=[name])
        query.warnings.append(Issue("not-supported" if "nknown" in message else "invalid", message,
                                    "warning", [name]))

    def _parse_one(self, query: SearchQuery, name: str, raw: str) -> None:
        base_name = name.split(":", 1)[0]
        if base_name in RESULT_PARAMETERS:
            self._result_parameter(query, name, raw)
            return
        # System-level search uses the first type's definition: only common parameters (_tag, ...) apply
        clause = self.clause(query.resource_types[0], name, raw, depth=0)
        if clause is not None:
            query.clauses.append(clause)
            query.self_params.append((name, raw))  # links repeat only what was applied

    def clause(self, resource_type: str, name: str, raw: str, depth: int) -> Clause | None:
        if depth > MAX_CHAIN_DEPTH:
            raise ValueError(f"chains are limited to {MAX_CHAIN_DEPTH} levels")
        if name.startswith("_has:"):
            return self._has(resource_type, name, raw, depth)
        code, _, modifier = name.partition(":")
        chain = None
        if "." in code:
            code, chain = code.split(".", 1)
        if "." in modifier:  # subject:Patient.name
            modifier, chain = modifier.split(".", 1)
        if code == "_id":
            return Clause(code, "id", values=_split_or(raw)) if not modifier else self._bad_modifier(code, modifier)
        if code == "_lastUpdated":
            return Clause(code, "lastUpdated", values=[parse_date(v) for v in _split_or(raw)])
        if code in ("_text", "_content"):
            return Clause(code, code[1:], values=_split_or(raw))
        param = self.registry.get(resource_type, code)
        if param is None:
            raise _Unknown(f"Unknown search parameter '{code}' for {resource_type}")
        if chain is not None:
            return self._chain(resource_type, param, modifier or None, chain, raw, depth)
        if modifier == "missing":
            if raw not in ("true", "false"):
                raise ValueError("missing takes true or false")
            return Clause(code, "missing", param=param, missing=raw == "true")
        return self._simple(resource_type, param, modifier or None, raw)

    def _bad_modifier(self, code: str, modifier: str):
        raise ValueError(f"modifier ':{modifier}' is not supported on '{code}'")

    def _simple(self, resource_type: str, param: SearchParam, modifier: str | None, raw: str) -> Clause:
        kind = param.type
        raws = _split_or(raw)
        if any(v == "" for v in raws):
            raise ValueError("empty value")
        allowed = {"token": {None, "not", "text", "of-type"}, "string": {None, "exact", "contains"},
                   "reference": {None, "identifier"} | set(param.targets), "uri": {None, "below", "above"},
                   "date": {None}, "number": {None}, "quantity": {None}, "composite": {None}}
        if modifier not in allowed.get(kind, {None}):
            raise ValueError(f"modifier ':{modifier}' is not supported on {kind} parameter '{param.code}'")
        clause = Clause(param.code, kind, param=param, modifier=modifier)
        if kind == "string":
            clause.values = [StringValue(normalize(v), v) for v in raws]
        elif kind == "token" and modifier == "text":
            clause.values = [TokenValue(None, None, normalize(v)) for v in raws]
        elif kind == "token" and modifier == "of-type":
            values = []
            for v in raws:
                parts = v.split("|")
                if len(parts) != 3 or not all(parts):
                    raise ValueError(f"'{v}': of-type takes system|code|value")
                values.append(TokenValue(f"{parts[0]}|{parts[1]}", parts[2]))
            clause.values = values
        elif kind == "reference" and modifier == "identifier":
            clause.values = [parse_token(v) for v in raws]
        elif kind == "reference":
            type_modifier = modifier if modifier in param.targets else None
            clause.values = [parse_reference(v, self.base_url, type_modifier) for v in raws]
        elif kind == "composite":
            clause.values = [self._composite_value(param, v) for v in raws]
        elif kind == "token" and is_boolean(param.expression, resource_type):
            if any(v not in ("true", "false") for v in raws):
                raise ValueError(f"'{param.code}' is true or false")
            clause.values = [TokenValue(None, v) for v in raws]
        elif kind in _VALUE_PARSERS:
            clause.values = [_VALUE_PARSERS[kind](v) for v in raws]
        else:
            raise ValueError(f"{kind} parameters are not supported")
        return clause

    def _composite_value(self, param: SearchParam, raw: str) -> CompositeValue:
        if "$" not in raw:
            raise ValueError(f"'{raw}': composite values are first$second")
        first, second = raw.split("$", 1)
        second_def = self.registry.by_url.get(param.components[1].definition) if len(param.components) == 2 else None
        if second_def is None or second_def.type not in _VALUE_PARSERS and second_def.type != "string":
            raise ValueError(f"composite parameter '{param.code}' is not supported")
        if second_def.type == "string":
            return CompositeValue(parse_token(first), StringValue(normalize(second), second), "string")
        return CompositeValue(parse_token(first), _VALUE_PARSERS[second_def.type](second), second_def.type)

    def _chain(self, resource_type: str, param: SearchParam, type_modifier: str | None, chain: str, raw: str,
               depth: int) -> Clause:
        if param.type != "reference":
            raise ValueError(f"'{param.code}' is not a reference parameter and cannot be chained")
        targets = (type_modifier,) if type_modifier else param.targets
        if type_modifier and type_modifier not in param.targets:
            raise ValueError(f"'{param.code}' cannot refer to {type_modifier}")
        inner = None
        usable = []
        last_error: Exception | None = None
        for target in targets:
            try:
                inner = self.clause(target, chain, raw, depth + 1)
                usable.append(target)
            except (_Unknown, ValueError) as exc:
                last_error = exc
        if not usable:
            raise ValueError(str(last_error) if last_error else f"cannot chain '{chain}' from '{param.code}'")
        # the inner clause is re-parsed per target type at SQL time; parameter codes are shared
        return Clause(param.code, "chain", param=param, target_types=tuple(usable), inner=inner,
                      values=[(chain, raw)])

    def _has(self, resource_type: str, name: str, raw: str, depth: int) -> Clause:
        parts = name.split(":", 3)
        if len(parts) != 4:
            raise ValueError("_has takes _has:Type:reference-parameter:search-parameter")
        _, source_type, ref_code, rest = parts
        if not is_resource_type(source_type):
            raise ValueError(f"unknown resource type '{source_type}' in _has")
        ref = self.registry.get(source_type, ref_code)
        if ref is None or ref.type != "reference":
            raise ValueError(f"'{ref_code}' is not a reference parameter of {source_type}")
        if ref.targets and resource_type not in ref.targets:
            raise ValueError(f"{source_type}.{ref_code} cannot refer to {resource_type}")
        inner = self.clause(source_type, rest, raw, depth + 1)
        return Clause(name, "has", param=ref, inner=inner, has_type=source_type)

    # ---- result parameters ----

    def _result_parameter(self, query: SearchQuery, name: str, raw: str) -> None:
        base_name, _, modifier = name.partition(":")
        if base_name == "_count":
            if not raw.isdigit():
                raise ValueError("_count takes a non-negative integer")
            query.count = min(int(raw), self.max_count)
            query.self_params.append(("_count", str(query.count)))
        elif base_name == "_cursor":
            query.cursor = raw
        elif base_name == "_total":
            if raw not in ("none", "estimate", "accurate"):
                raise ValueError("_total takes none, estimate or accurate")
            query.total = raw
            query.self_params.append((name, raw))
        elif base_name == "_summary":
            if raw not in ("true", "false", "text", "data", "count"):
                raise ValueError("_summary takes true, false, text, data or count")
            query.summary = None if raw == "false" else raw
            query.self_params.append((name, raw))
        elif base_name == "_elements":
            query.elements = [e.strip() for e in raw.split(",") if e.strip()]
            query.self_params.append((name, raw))
        elif base_name == "_sort":
            for key in raw.split(","):
                key = key.strip()
                descending = key.startswith("-")
                code = key.lstrip("-")
                if code in ("_id", "_lastUpdated"):
                    query.sort.append(SortKey(code, descending, None))
                    continue
                param = self.registry.get(query.resource_types[0], code) if len(query.resource_types) == 1 else None
                if param is None or param.type not in ("date", "string", "token", "number", "quantity",
                                                       "reference", "uri"):
                    raise ValueError(f"cannot sort by '{code}'")
                query.sort.append(SortKey(code, descending, param))
            query.self_params.append((name, raw))
        elif base_name in ("_include", "_revinclude"):
            if modifier not in ("", "iterate", "recurse"):
                raise ValueError(f"{base_name} does not take ':{modifier}'")
            parts = raw.split(":")
            if raw == "*":
                parts = [query.resource_types[0], "*"] if len(query.resource_types) == 1 else []
            if len(parts) not in (2, 3) or not is_resource_type(parts[0]):
                raise ValueError(f"'{raw}' is not Type:parameter[:targetType]")
            if parts[1] != "*":
                param = self.registry.get(parts[0], parts[1])
                if param is None or param.type != "reference":
                    raise ValueError(f"'{parts[1]}' is not a reference parameter of {parts[0]}")
            target = parts[2] if len(parts) == 3 else None
            if target is not None and not is_resource_type(target):
                raise ValueError(f"unknown target type '{target}'")
            query.includes.append(Include(parts[0], parts[1], target, bool(modifier), base_name == "_revinclude"))
            query.self_params.append((name, raw))
        elif base_name in ("_format", "_pretty", "_type"):
            pass
        else:
            self.problem(query, f"Search result parameter '{name}' is not supported", name)


class _Unknown(ValueError):
    pass


def parse_search(registry: Registry, resource_types: tuple[str, ...], params: list[tuple[str, str]], *,
                 base_url: str, strict: bool, default_count: int, max_count: int) -> SearchQuery:
    parser = QueryParser(registry, base_url, strict, default_count, max_count)
    query = SearchQuery(resource_types, count=default_count)
    for name, raw in params:
        try:
            parser._parse_one(query, name, raw)
        except _Unknown as exc:
            parser.problem(query, str(exc), name)
        except ValueError as exc:
            parser.problem(query, f"Invalid value for search parameter '{name}': {exc}", name)
    query.clauses = _merge_date_bounds(query.clauses, resource_types[0])
    return query


def _merge_date_bounds(clauses: list[Clause], resource_type: str) -> list[Clause]:
    """date=ge2025-03-01&date=lt2025-04-01 on a single-valued element: both bounds must hold for the
    same (only) value, so they become one clause that one index lookup answers."""
    merged: dict[str, Clause] = {}
    out = []
    for clause in clauses:
        if (clause.kind == "date" and clause.modifier is None and len(clause.values) == 1
                and is_single_valued(clause.param.expression, resource_type)):
            if clause.code in merged:
                merged[clause.code].values.append(clause.values[0])
                continue
            clause = Clause(clause.code, "date_all", param=clause.param, values=list(clause.values))
            merged[clause.code] = clause
        out.append(clause)
    return out


def compartment_clause(registry: Registry, resource_type: str, compartment_id: str) -> Clause:
    """Resources of resource_type in Patient/compartment_id's compartment."""
    codes = PATIENT_COMPARTMENT.get(resource_type)
    if not codes:
        raise NotFound(f"{resource_type} is not in the Patient compartment")
    params = [registry.get(resource_type, c) for c in codes if c != "{def}"]
    value = ReferenceValue("Patient", compartment_id, None)
    return Clause("_compartment", "compartment", values=[value],
                  target_types=tuple(p.code for p in params if p is not None))
