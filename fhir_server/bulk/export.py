"""$export: the kick-off parameters (system, Patient and Group level) and the job that writes the
NDJSON files. The job reads the store in keyset pages in row-key order and appends each page to the
file of its resource type, so memory holds one page whatever the size of the export; after every
page it flushes the files and checkpoints (row key, file sizes) in the jobs table, so a restarted
server continues where the last checkpoint left off."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson

from ..model.outcome import BadRequest
from ..model.types import RESOURCE_TYPES, is_resource_type
from ..search.query import parse_search
from ..search.registry import PATIENT_COMPARTMENT
from ..store.base import format_instant
from ..store.bulk import ExportSelection, export_page, pk_range, resource_pk
from . import access
from .jobs import JobContext, parse_instant

OUTPUT_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
PAGE = 1000
COMPARTMENT_TYPES = sorted({"Patient", *PATIENT_COMPARTMENT})


@dataclass
class ExportRequest:
    level: str  # system | patient | group
    group_id: str | None = None
    types: list[str] | None = None  # None: every type (of the level)
    since: str | None = None
    type_filters: list[str] = field(default_factory=list)
    patients: list[str] | None = None
    output_format: str = "application/fhir+ndjson"
    ignored: list[str] = field(default_factory=list)  # parameters ignored under Prefer: handling=lenient


def kickoff_pairs(query: list[tuple[str, str]], body: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """(name, value, where) from the query string, or from a POSTed Parameters resource."""
    pairs = [(name, value, name) for name, value in query if name not in ("_format", "_pretty")]
    if body is None:
        return pairs
    if body.get("resourceType") != "Parameters":
        raise BadRequest("A POST kick-off takes a Parameters resource", expression=["resourceType"])
    for i, param in enumerate(body.get("parameter") or []):
        where = f"Parameters.parameter[{i}]"
        if not isinstance(param, dict) or not isinstance(param.get("name"), str):
            raise BadRequest("Every parameter needs a name", expression=[where])
        values = [v for k, v in param.items() if k.startswith("value")]
        if param["name"] == "patient":
            reference = (param.get("valueReference") or {}).get("reference")
            if not isinstance(reference, str):
                raise BadRequest("patient takes a valueReference to a Patient", expression=[f"{where}.value"])
            values = [reference]
        if len(values) != 1 or not isinstance(values[0], str):
            raise BadRequest(f"Parameter '{param['name']}' needs one value", expression=[where])
        pairs.append((param["name"], values[0], where))
    return pairs


def parse_export(level: str, group_id: str | None, pairs: list[tuple[str, str, str]], *, lenient: bool,
                 registry, base_url: str) -> ExportRequest:
    request = ExportRequest(level, group_id)
    allowed = COMPARTMENT_TYPES if level != "system" else None
    for name, value, where in pairs:
        if name == "_outputFormat":
            value = value.replace(" ", "+")  # an unencoded '+' in a query string arrives as a space
            if value not in OUTPUT_FORMATS:
                raise BadRequest(f"_outputFormat '{value[:60]}' is not supported; use application/fhir+ndjson",
                                 expression=[where])
            request.output_format = value
        elif name == "_since":
            request.since = format_instant(parse_instant(value, where))
        elif name == "_type":
            types = request.types or []
            for resource_type in (t.strip() for t in value.split(",") if t.strip()):
                _check_type(resource_type, allowed, where)
                if resource_type not in types:
                    types.append(resource_type)
            request.types = types
        elif name == "_typeFilter":
            request.type_filters.append(value)
        elif name == "patient":
            if level == "system":
                raise BadRequest("patient is a parameter of Patient and Group level exports", expression=[where])
            patient_id = value.removeprefix("Patient/")
            if "/" in patient_id or not patient_id:
                raise BadRequest(f"patient '{value[:60]}' is not a Patient reference", expression=[where])
            request.patients = [*(request.patients or []), patient_id]
        elif lenient:
            request.ignored.append(name)
        else:
            raise BadRequest(f"Parameter '{name}' is not supported by $export (Prefer: handling=lenient "
                             "ignores it)", expression=[where])
    for raw in request.type_filters:  # after _type, whatever the order they came in
        type_filter_clauses(raw, request, registry, base_url)
    return request


def _check_type(resource_type: str, allowed: list[str] | None, where: str) -> None:
    if not is_resource_type(resource_type):
        raise BadRequest(f"Unknown resource type '{resource_type[:60]}' in _type", expression=[where])
    if allowed is not None and resource_type not in allowed:
        raise BadRequest(f"{resource_type} is not in the Patient compartment", expression=[where])


def type_filter_clauses(raw: str, request: ExportRequest, registry, base_url: str):
    """The search clauses of one _typeFilter ("Observation?code=...&date=ge2026-01-01")."""
    resource_type, _, query = raw.partition("?")
    allowed = COMPARTMENT_TYPES if request.level != "system" else None
    _check_type(resource_type, allowed, "_typeFilter")
    if request.types is not None and resource_type not in request.types:
        raise BadRequest(f"_typeFilter names {resource_type}, which _type leaves out", expression=["_typeFilter"])
    params = parse_qsl(query, keep_blank_values=True)
    if not params:
        raise BadRequest(f"_typeFilter '{raw[:80]}' has no search parameters", expression=["_typeFilter"])
    for name, _ in params:
        if name.split(":")[0] in ("_count", "_sort", "_include", "_revinclude", "_summary", "_elements",
                                  "_total", "_cursor", "_contained"):
            raise BadRequest(f"_typeFilter cannot use '{name}'", expression=["_typeFilter"])
    try:
        parsed = parse_search(registry, (resource_type,), params, base_url=base_url, strict=True,
                              default_count=1, max_count=1)
    except BadRequest as exc:
        raise BadRequest(f"_typeFilter '{raw[:80]}': {exc}", expression=["_typeFilter"]) from exc
    return resource_type, parsed.clauses


# ---- the job ----

@dataclass
class OutputFile:
    type: str  # resource type, or "Bundle" for deletions
    name: str
    count: int = 0
    bytes: int = 0


def default_types(level: str) -> list[str]:
    """What an export without _type covers: every type, or the Patient compartment's."""
    return COMPARTMENT_TYPES if level != "system" else sorted(RESOURCE_TYPES)


async def selection(ctx: JobContext, request: ExportRequest) -> ExportSelection:
    types = request.types if request.types is not None else default_types(request.level)
    sel = ExportSelection(types=types, until=ctx.job.transaction_time,
                          since=datetime.fromisoformat(request.since) if request.since else None)
    sel.with_deletions = request.level == "system" and sel.since is not None
    sel.compartment = request.level != "system"
    sel.patients = request.patients
    if request.level == "group":
        sel.group_pk = await resource_pk(ctx.store, "Group", request.group_id)
        if sel.group_pk is None:  # deleted since the kick-off
            raise BadRequest(f"Group/{request.group_id} no longer exists", expression=["Group"])
    for raw in request.type_filters:
        resource_type, clauses = type_filter_clauses(raw, request, ctx.service.registry, ctx.params["base"])
        sel.type_filters.setdefault(resource_type, []).append(clauses)
    sel.access = access.read_conditions(ctx.params.get("grant"), ctx.service.registry, types)
    return sel


async def run_export(ctx: JobContext) -> dict[str, Any]:
    request = ExportRequest(**ctx.params["request"])
    sel = await selection(ctx, request)
    state = ctx.state
    files = [OutputFile(**f) for f in state.get("files", [])]
    if not ctx.restore_files({f.name: f.bytes for f in files}):
        files, state = [], {}
    if "high" not in state:
        state["low"], state["high"] = await pk_range(ctx.store)
    after = state.get("after", 0)
    total = sum(f.count for f in files if f.type != "Bundle")
    current = {("Bundle" if f.name.startswith("deleted") else f.type): f for f in files}
    handles: dict[str, Any] = {}
    limit = ctx.settings.bulk_file_max_resources
    page = ctx.page_size(PAGE)
    started, done_here = time.monotonic(), 0
    try:
        while True:
            rows = await export_page(ctx.store, sel, after, page)
            for _pk, resource_type, resource_id, deleted, content in rows:
                key = "Bundle" if deleted else resource_type
                out = current.get(key)
                if out is None or out.count >= limit:
                    number = sum(1 for f in files if f.type == key) + 1
                    out = OutputFile(key, f"{'deleted' if deleted else resource_type}-{number}.ndjson")
                    files.append(out)
                    current[key] = out
                    if key in handles:
                        handles.pop(key).close()
                if key not in handles:
                    handles[key] = open(ctx.directory / out.name, "ab")  # noqa: ASYNC230 (local disk, one page)
                line = _deletion(resource_type, resource_id) if deleted else content.encode() + b"\n"
                handles[key].write(line)
                out.count += 1
                out.bytes += len(line)
                total += 0 if deleted else 1
            for handle in handles.values():
                handle.flush()
            if rows:
                after = rows[-1][0]
            span = max(state["high"] - state["low"], 1)
            done = len(rows) < page
            percent = 100 if done else min(99, int(100 * (after - state["low"]) / span))
            state.update(after=after, files=[asdict(f) for f in files])
            await ctx.checkpoint(f"{percent}% ({total} resources)", state)
            if done:
                break
            done_here += len(rows)
            await ctx.pace(done_here, started)
    finally:
        for handle in handles.values():
            handle.close()
    base = f"{ctx.params['base']}/bulkfiles/{ctx.job.id}"
    manifest: dict[str, Any] = {
        "transactionTime": format_instant(ctx.job.transaction_time), "request": ctx.job.request,
        "requiresAccessToken": ctx.params.get("requiresAccessToken", False),
        "output": [{"type": f.type, "url": f"{base}/{f.name}", "count": f.count} for f in files if f.type != "Bundle"],
        "error": [],
    }
    deletions = [{"type": "Bundle", "url": f"{base}/{f.name}", "count": f.count} for f in files if f.type == "Bundle"]
    if deletions:
        manifest["deleted"] = deletions
    if request.ignored:
        manifest.setdefault("extension", {})["ignoredParameters"] = request.ignored
    return manifest


def _deletion(resource_type: str, resource_id: str) -> bytes:
    """A deleted resource as the IG reports it: a transaction Bundle with one DELETE entry."""
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": f"{resource_type}/{resource_id}"}}]}) + b"\n"


def output_path(directory: Path, name: str) -> Path | None:
    """The file of a finished job that a file request names, or None (no path tricks)."""
    if "/" in name or not name.endswith(".ndjson") or name.startswith("."):
        return None
    path = directory / name
    return path if path.is_file() else None
