"""FHIR search as SQL over the index tables: one semi-join per clause, keyset paging, includes."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Text, and_, cast, distinct, false, func, literal, literal_column, not_, or_, select, true
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from ..model.outcome import BadRequest, Issue
from ..search.dates import MAX_MS, MIN_MS, from_ms
from ..search.query import (
    TERMINOLOGY_MODIFIERS,
    Clause,
    CompositeValue,
    RangeValue,
    ReferenceValue,
    SearchQuery,
    StringValue,
    TermValue,
    TokenValue,
)
from .base import ResourceVersion
from .schema import SEARCH_TABLES
from .schema import resources as res

_TOP = "\U0010ffff"
_INDEX_KINDS = frozenset({"token", "string", "date", "date_all", "number", "quantity", "reference", "uri",
                          "composite"})
_BIG = 1e300
_NEGATED = frozenset({"not", "not-in"})  # modifiers that match resources without such an index row
_ROW_COLUMNS = (res.c.pk, res.c.resource_type, res.c.id, res.c.version_id, res.c.last_updated, res.c.content)


@dataclass
class SearchPage:
    matches: list[ResourceVersion]
    included: list[ResourceVersion] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None
    previous_cursor: str | None = None


def _types(column, types: tuple[str, ...]) -> ColumnElement:
    return column == types[0] if len(types) == 1 else column.in_(types)


_codes = _types  # the same test on an index table's param column


def _stored(param, code: str, suffix: str = "") -> tuple[str, ...]:
    """The param codes a parameter's index rows are stored under (a union parameter's are its parts')."""
    return tuple(c + suffix for c in (param.stored_codes if param is not None else (code,)))


# ---- value conditions ----

def _prefix(column, text: str) -> ColumnElement:
    return and_(column >= text, column < text + _TOP) if text else true()


def range_condition(prefix: str, low, high, v_low, v_high) -> ColumnElement:
    """Target range [low, high] against search range [v_low, v_high] (dates, as the R4 spec defines)."""
    if prefix == "eq":
        return and_(low >= v_low, high <= v_high)
    if prefix == "ne":
        return not_(and_(low >= v_low, high <= v_high))
    if prefix == "gt":
        return high > v_high
    if prefix == "lt":
        return low < v_low
    if prefix == "ge":
        return high >= v_low
    if prefix == "le":
        return low <= v_high
    if prefix == "sa":
        return low > v_high
    if prefix == "eb":
        return high < v_low
    # ap: overlaps the search range widened by 10% of its distance from now (at least a day)
    now = time.time() * 1000
    widen = max(abs(now - v_low) * 0.1, 86_400_000)
    return and_(low <= v_high + widen, high >= v_low - widen)


def overlap_bounds(prefix: str, v_low: int, v_high: int) -> tuple[int, int] | None:
    """[lower, upper] that a target range must overlap to match (a necessary condition); None for ne/ap."""
    return {"eq": (v_low, v_high), "ge": (v_low, MAX_MS), "gt": (v_high + 1, MAX_MS), "sa": (v_high + 1, MAX_MS),
            "le": (MIN_MS, v_high), "lt": (MIN_MS, v_low - 1), "eb": (MIN_MS, v_low - 1)}.get(prefix)


def _overlaps(t, lower: int, upper: int) -> ColumnElement:
    """int8range(low, high) && [lower, upper]: answered by the GiST index of migration 3 (PostgreSQL)."""
    closed = literal_column("'[]'")
    return func.int8range(t.c.low, t.c.high, closed).op("&&")(func.int8range(lower, upper, closed))


def number_condition(prefix: str, column, value: float, low: float, high: float) -> ColumnElement:
    """A point value against a number with implicit precision (100 means [99.5, 100.5))."""
    if prefix == "eq":
        return and_(column >= low, column < high)
    if prefix == "ne":
        return or_(column < low, column >= high)
    if prefix in ("gt", "sa"):
        return column > value
    if prefix in ("lt", "eb"):
        return column < value
    if prefix == "ge":
        return column >= value
    if prefix == "le":
        return column <= value
    delta = abs(value) * 0.1  # ap: within 10%
    return and_(column >= value - delta, column <= value + delta)


def _token_condition(t, v: TokenValue, system_col=None, code_col=None) -> ColumnElement:
    system_col = t.c.system if system_col is None else system_col
    code_col = t.c.code if code_col is None else code_col
    if v.text is not None:
        return _prefix(t.c.text, v.text)
    parts = []
    if v.code is not None:
        parts.append(code_col == v.code)
    if v.system == "":
        parts.append(system_col.is_(None))
    elif v.system is not None:
        parts.append(system_col == v.system)
    return and_(*parts) if parts else true()


def _token_set_condition(t, v: TermValue) -> ColumnElement:
    """:in / :not-in / :below / :above, resolved to (system, codes) groups; codes None: any code."""
    if v.groups is None:
        raise BadRequest(f"Search value '{v.raw}' was not resolved by the terminology service")
    parts = [t.c.system == system if codes is None else and_(t.c.system == system, t.c.code.in_(sorted(codes)))
             for system, codes in v.groups]
    return or_(*parts) if parts else false()


def _quantity_condition(t, v: RangeValue, value_col=None, canon_value_col=None) -> ColumnElement:
    value_col = t.c.value if value_col is None else value_col
    raw = [number_condition(v.prefix, value_col, v.value, v.low, v.high)]
    if v.code:
        raw.append(t.c.code == v.code)
    if v.system:
        raw.append(t.c.system == v.system)
    if v.canon_code is None:
        return and_(*raw)
    canon = and_(t.c.canon_code == v.canon_code,
                 number_condition(v.prefix, t.c.canon_value, v.canon_value, v.canon_low, v.canon_high))
    return or_(canon, and_(t.c.canon_code.is_(None), *raw))


def _reference_condition(t, v: ReferenceValue) -> ColumnElement:
    if v.url is not None:
        return or_(t.c.url == v.url, _prefix(t.c.url, v.url + "|"))
    parts = [t.c.target_id == v.target_id]
    if v.target_type:
        parts.append(t.c.target_type == v.target_type)
    return and_(*parts)


def _composite_condition(t, v: CompositeValue) -> ColumnElement:
    first = _token_condition(t, v.first, t.c.c1_system, t.c.c1_code)
    second = v.second
    if v.kind == "token":
        cond = _token_condition(t, second, t.c.c2_system, t.c.c2_code)
    elif v.kind == "string":
        cond = _prefix(t.c.c2_code, second.normalized)
    elif v.kind == "date":
        cond = range_condition(second.prefix, t.c.c2_low, t.c.c2_high, second.low, second.high)
    elif second.canon_code is not None:  # quantity in a UCUM unit: compare canonical values
        cond = and_(t.c.c2_canon_code == second.canon_code, number_condition(
            second.prefix, t.c.c2_canon_value, second.canon_value, second.canon_low, second.canon_high))
    else:  # quantity in another unit, or a bare number
        cond = number_condition(second.prefix, t.c.c2_low, second.value, second.low, second.high)
        if second.code is not None:
            cond = and_(t.c.c2_code == second.code, cond)
    return and_(first, cond)


class SearchSql:
    """Builds the WHERE conditions for one query on one dialect."""

    def __init__(self, dialect: str):
        self.dialect = dialect

    def _subquery(self, table, types, param_codes: tuple[str, ...], value_cond: ColumnElement):
        t = table
        return select(t.c.res_pk).where(_types(t.c.resource_type, types), _codes(t.c.param, param_codes), value_cond)

    def condition(self, clause: Clause, r, types: tuple[str, ...]) -> ColumnElement:
        kind = clause.kind
        if kind == "id":
            return r.c.id.in_(clause.values)
        if kind == "type":  # one of several types (system search), for conditions that differ per type
            return _types(r.c.resource_type, tuple(clause.values))
        if kind == "any":  # OR of groups of ANDed clauses (the alternatives a token's scopes allow)
            return or_(false(), *(and_(*(self.condition(c, r, types) for c in group)) if group else true()
                         for group in clause.values))
        if kind == "lastUpdated":
            return or_(*(range_condition(v.prefix, r.c.last_updated, r.c.last_updated, from_ms(int(v.low)),
                                         from_ms(int(v.high))) for v in clause.values))
        if kind in ("text", "content"):
            return or_(*(func.lower(self._text_of(r, kind)).contains(v.lower(), autoescape=True)
                         for v in clause.values))
        if kind == "missing":
            table = SEARCH_TABLES[clause.param.type if clause.param.type in SEARCH_TABLES else "token"]
            present = select(table.c.res_pk).where(_types(table.c.resource_type, types),
                                                   _codes(table.c.param, _stored(clause.param, clause.code)))
            return r.c.pk.not_in(present) if clause.missing else r.c.pk.in_(present)
        if kind == "chain":
            return self._chain(clause, r, types)
        if kind == "has":
            return self._has(clause, r, types)
        if kind == "compartment":
            return self._compartment(clause, r, types)
        sub = self.index_subquery(clause, types)
        return r.c.pk.not_in(sub) if clause.modifier in _NEGATED else r.c.pk.in_(sub)

    def _compartment(self, clause: Clause, r, types: tuple[str, ...]) -> ColumnElement:
        t = SEARCH_TABLES["reference"]
        v = clause.values[0]
        target = [t.c.target_type == v.target_type]
        if v.target_id is not None:  # None: any Patient's compartment
            target.append(t.c.target_id == v.target_id)
        if clause.by_type is None:
            sub = select(t.c.res_pk).where(_types(t.c.resource_type, types), t.c.param.in_(clause.target_types),
                                           *target)
            return r.c.pk.in_(sub)
        per_type = [and_(t.c.resource_type == rt, t.c.param.in_(codes)) for rt, codes in clause.by_type.items()
                    if rt in types]
        condition = r.c.pk.in_(select(t.c.res_pk).where(or_(*per_type), *target)) if per_type else false()
        if clause.include_self:
            me = r.c.resource_type == "Patient"
            if v.target_id is not None:
                me = and_(me, r.c.id == v.target_id)
            condition = or_(condition, me)
        return condition

    def index_subquery(self, clause: Clause, types: tuple[str, ...]):
        """res_pk of the index rows that match a value clause (token, string, date, ...)."""
        table_name, suffix, builder = self._value_builder(clause)
        t = SEARCH_TABLES[table_name]
        combine = and_ if clause.kind == "date_all" else or_  # date_all: every bound on the same value
        condition = combine(*(builder(t, v) for v in clause.values))
        if self.dialect == "postgresql" and clause.kind in ("date", "date_all"):
            condition = and_(condition, self._date_overlap(t, clause))
        return self._subquery(t, types, _stored(clause.param, clause.code, suffix), condition)

    def _date_overlap(self, t, clause: Clause) -> ColumnElement:
        """The range every match must overlap, so the GiST range index can find the rows (it is implied
        by the exact conditions, which stay)."""
        bounds = [overlap_bounds(v.prefix, int(v.low), int(v.high)) for v in clause.values]
        if any(b is None for b in bounds):
            return true()
        if clause.kind == "date_all":  # all must hold: intersect
            lower, upper = max(b[0] for b in bounds), min(b[1] for b in bounds)
            return _overlaps(t, lower, upper) if lower <= upper else false()
        return or_(*(_overlaps(t, lower, upper) for lower, upper in bounds))

    def _value_builder(self, clause: Clause):
        """The index table, the suffix of the rows' param code (:of-type, :identifier) and the condition."""
        kind, modifier = clause.kind, clause.modifier
        if kind == "token" and modifier in TERMINOLOGY_MODIFIERS:
            return "token", "", _token_set_condition
        if kind == "token":
            return "token", ":of-type" if modifier == "of-type" else "", _token_condition
        if kind == "string":
            def string_cond(t, v: StringValue):
                if modifier == "exact":
                    return and_(t.c.normalized == v.normalized, t.c.exact == v.exact)
                if modifier == "contains":
                    return t.c.normalized.contains(v.normalized, autoescape=True)
                return _prefix(t.c.normalized, v.normalized)
            return "string", "", string_cond
        if kind in ("date", "date_all"):
            return "date", "", lambda t, v: range_condition(v.prefix, t.c.low, t.c.high, v.low, v.high)
        if kind == "number":
            return "number", "", lambda t, v: number_condition(v.prefix, t.c.value, v.value, v.low, v.high)
        if kind == "quantity":
            return "quantity", "", _quantity_condition
        if kind == "reference":
            if modifier == "identifier":
                return "token", ":identifier", _token_condition
            return "reference", "", _reference_condition
        if kind == "uri":
            def uri_cond(t, v):
                if modifier == "below":  # the same URL or one below it in the path hierarchy
                    return or_(t.c.value == v.value, _prefix(t.c.value, v.value.rstrip("/") + "/"))
                if modifier == "above":
                    return literal(v.value).like(t.c.value.concat("%"))
                return t.c.value == v.value
            return "uri", "", uri_cond
        if kind == "composite":
            return "composite", "", _composite_condition
        raise BadRequest(f"Search on '{clause.code}' ({kind}) is not supported")

    def _text_of(self, r, kind: str):
        if kind == "content":
            return cast(r.c.content, Text)
        if self.dialect == "postgresql":
            return func.jsonb_extract_path_text(r.c.content, "text", "div")
        return func.json_extract(r.c.content, "$.text.div")

    def _chain(self, clause: Clause, r, types) -> ColumnElement:
        ref = SEARCH_TABLES["reference"]
        target = res.alias()
        sub = (select(ref.c.res_pk)
               .join(target, and_(target.c.resource_type == ref.c.target_type, target.c.id == ref.c.target_id))
               .where(_types(ref.c.resource_type, types), ref.c.param == clause.code,
                      _types(target.c.resource_type, clause.target_types), target.c.deleted == false(),
                      self.condition(clause.inner, target, clause.target_types)))
        return r.c.pk.in_(sub)

    def _has(self, clause: Clause, r, types) -> ColumnElement:
        ref = SEARCH_TABLES["reference"]
        source = res.alias()
        sub = (select(ref.c.target_id)
               .join(source, source.c.pk == ref.c.res_pk)
               .where(ref.c.resource_type == clause.has_type, ref.c.param == clause.param.code,
                      _types(ref.c.target_type, types), source.c.deleted == false(),
                      self.condition(clause.inner, source, (clause.has_type,))))
        return r.c.id.in_(sub)

    # ---- sorting ----

    def sort_expression(self, key, r):
        if key.param is None:
            return r.c.id if key.code == "_id" else r.c.last_updated
        kind = key.param.type
        table = SEARCH_TABLES[kind]
        agg = func.max if key.descending else func.min
        column = {"date": lambda t: t.c.high if key.descending else t.c.low, "string": lambda t: t.c.normalized,
                  "token": lambda t: t.c.code, "number": lambda t: t.c.value,
                  "quantity": lambda t: func.coalesce(t.c.canon_value, t.c.value),
                  "reference": lambda t: t.c.target_id, "uri": lambda t: t.c.value}[kind](table)
        value = select(agg(column)).where(table.c.res_pk == r.c.pk,
                                          _codes(table.c.param, _stored(key.param, key.code))).scalar_subquery()
        if kind == "date":
            sentinel = MIN_MS - 1 if key.descending else MAX_MS + 1
        elif kind in ("number", "quantity"):
            sentinel = -_BIG if key.descending else _BIG
        else:
            sentinel = "" if key.descending else _TOP
        return func.coalesce(value, sentinel)


# ---- cursors: the sort-key values and pk of a page boundary ----

def encode_cursor(direction: str, values: list[Any]) -> str:
    encoded = [{"dt": v.isoformat()} if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(orjson.dumps([direction, encoded])).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[str, list[Any]]:
    try:
        direction, values = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        values = [datetime.fromisoformat(v["dt"]) if isinstance(v, dict) else v for v in values]
        if direction not in ("n", "p"):
            raise ValueError(direction)
        return direction, values
    except Exception as exc:
        raise BadRequest("Invalid or expired paging cursor", expression=["_cursor"]) from exc


def _after(keys: list[tuple[Any, bool]], values: list[Any]) -> ColumnElement:
    """Rows strictly after `values` in the order given by keys [(expression, descending)]."""
    alternatives = []
    for i, (expr, descending) in enumerate(keys):
        equal = [k == v for (k, _), v in zip(keys[:i], values[:i], strict=True)]
        step = expr < values[i] if descending else expr > values[i]
        alternatives.append(and_(*equal, step))
    return or_(*alternatives)


async def run_search(conn: AsyncConnection, dialect: str, query: SearchQuery,
                     extra: list[Clause] | None = None) -> SearchPage:
    sql = SearchSql(dialect)
    r = res
    types = query.resource_types
    where = [r.c.deleted == false(), _types(r.c.resource_type, types)]
    where += [sql.condition(c, r, types) for c in [*query.clauses, *(extra or [])]]

    total = None
    if query.total in ("accurate", "estimate") or query.summary == "count" or (
            query.count == 0 and query.total != "none"):
        clauses = [*query.clauses, *(extra or [])]
        if len(clauses) == 1 and clauses[0].kind in _INDEX_KINDS and clauses[0].modifier not in _NEGATED:
            # One indexed condition: index rows exist only for live resources, so count them directly
            # instead of joining the resources table (which led to a sequential scan of it).
            sub = sql.index_subquery(clauses[0], types).subquery()
            total = (await conn.execute(select(func.count(distinct(sub.c.res_pk))))).scalar_one()
        else:
            total = await _count(conn, dialect, where,
                                 estimate=query.total == "estimate" and query.summary != "count")
    if query.summary == "count" or query.count == 0:
        return SearchPage([], [], total)

    keys = [(sql.sort_expression(k, r), k.descending) for k in query.sort] + [(r.c.pk, False)]
    direction, boundary = ("n", None)
    if query.cursor:
        direction, boundary = decode_cursor(query.cursor)
        if len(boundary) != len(keys):
            raise BadRequest("Paging cursor does not fit this search", expression=["_cursor"])
    order_keys = keys if direction == "n" else [(e, not d) for e, d in keys]
    stmt = select(*_ROW_COLUMNS, *(e.label(f"k{i}") for i, (e, _) in enumerate(keys))).where(*where)
    if boundary is not None:
        stmt = stmt.where(_after(order_keys, boundary))
    stmt = stmt.order_by(*(e.desc() if d else e.asc() for e, d in order_keys)).limit(query.count + 1)
    rows = (await conn.execute(stmt)).all()
    more = len(rows) > query.count
    rows = rows[:query.count]
    if direction == "p":
        rows.reverse()
    key_values = [[row[f"k{i}"] for i in range(len(keys))] for row in (r._mapping for r in rows)]
    next_cursor = previous_cursor = None
    if rows:
        if (direction == "n" and more) or (direction == "p" and boundary is not None):
            next_cursor = encode_cursor("n", key_values[-1])
        if (direction == "n" and boundary is not None) or (direction == "p" and more):
            previous_cursor = encode_cursor("p", key_values[0])
    if total is None and query.total == "auto" and boundary is None and not more:
        total = len(rows)  # the first page holds every match: the total is free
    matches = [_version(row) for row in rows]
    included = await _includes(conn, query, rows) if query.includes and rows else []
    return SearchPage(matches, included, total, next_cursor, previous_cursor)


def _version(row) -> ResourceVersion:
    return ResourceVersion(row.resource_type, row.id, row.version_id, row.last_updated, False, row.content)


async def _count(conn: AsyncConnection, dialect: str, where: list, estimate: bool) -> int:
    stmt = select(func.count()).select_from(res).where(*where)
    if estimate and dialect == "postgresql":
        compiled = stmt.compile(conn.sync_connection if hasattr(conn, "sync_connection") else None,
                                compile_kwargs={"literal_binds": True})
        plan = (await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}")).scalar()
        plan = orjson.loads(plan) if isinstance(plan, str) else plan
        node = plan[0]["Plan"]
        while node.get("Plans") and node.get("Node Type") == "Aggregate":
            node = node["Plans"][0]
        return int(node.get("Plan Rows", 0))
    return (await conn.execute(stmt)).scalar_one()


MAX_INCLUDE_ITERATIONS = 5
MAX_INCLUDED = 1000


async def _includes(conn: AsyncConnection, query: SearchQuery, rows) -> list[ResourceVersion]:
    ref = SEARCH_TABLES["reference"]
    seen = {(row.resource_type, row.id) for row in rows}
    frontier = [(row.pk, row.resource_type, row.id) for row in rows]
    included: list[ResourceVersion] = []
    for iteration in range(MAX_INCLUDE_ITERATIONS + 1):
        specs = [i for i in query.includes if iteration == 0 or i.iterate]
        if not specs or not frontier:
            break
        if iteration == MAX_INCLUDE_ITERATIONS:  # more to follow: say so rather than cut the graph silently
            query.warnings.append(Issue("too-costly", f"_include:iterate was followed {MAX_INCLUDE_ITERATIONS} "
                                        "levels deep; resources further along, if any, were not included", "warning",
                                        ["_include:iterate"]))
            break
        found = []
        for spec in specs:
            sources = [f for f in frontier if f[1] == spec.source_type] if not spec.reverse else frontier
            if not sources:
                continue
            target = res.alias()
            if not spec.reverse:  # _include: follow the sources' references
                cond = [ref.c.res_pk.in_([s[0] for s in sources]), ref.c.resource_type == spec.source_type]
                join_on = and_(target.c.resource_type == ref.c.target_type, target.c.id == ref.c.target_id)
            else:  # _revinclude: resources of source_type that refer to the frontier
                cond = [ref.c.resource_type == spec.source_type,
                        or_(*(and_(ref.c.target_type == t, ref.c.target_id.in_([s[2] for s in sources if s[1] == t]))
                              for t in {s[1] for s in sources}))]
                join_on = target.c.pk == ref.c.res_pk
            if spec.param_code != "*":
                cond.append(ref.c.param == spec.param_code)
            if spec.target_type and not spec.reverse:
                cond.append(ref.c.target_type == spec.target_type)
            stmt = (select(target.c.pk, target.c.resource_type, target.c.id, target.c.version_id,
                           target.c.last_updated, target.c.content)
                    .select_from(ref.join(target, join_on)).where(*cond, target.c.deleted == false())
                    .distinct().limit(MAX_INCLUDED + 1))  # one more: whether the cap cut anything
            found.extend((await conn.execute(stmt)).all())
        frontier = []
        for row in found:
            if (row.resource_type, row.id) in seen:
                continue
            if len(included) == MAX_INCLUDED:
                query.warnings.append(Issue("too-costly", f"More than {MAX_INCLUDED} resources to include; the "
                                            f"first {MAX_INCLUDED} were", "warning", ["_include"]))
                return included
            seen.add((row.resource_type, row.id))
            included.append(_version(row))
            frontier.append((row.pk, row.resource_type, row.id))
    return included
