"""$import: NDJSON into the store, asynchronously like $export.

Two kick-off forms. The Bulk Data import Parameters (as HAPI FHIR and the Microsoft FHIR server take
them) name files by URL, each with its resource type:

    {"resourceType": "Parameters", "parameter": [
      {"name": "inputFormat", "valueCode": "application/fhir+ndjson"},
      {"name": "input", "part": [{"name": "type", "valueCode": "Patient"},
                                 {"name": "url", "valueUri": "https://other/bulkfiles/x/Patient-1.ndjson"}]}]}

The server fetches them itself, only from the URL prefixes in FHIR_IMPORT_URL_PREFIXES (it would
otherwise fetch whatever a client names). Or the NDJSON is the request body itself
(Content-Type: application/fhir+ndjson). Lines go through the loader's path (validation, ids kept,
1,000 a transaction); rejected lines are reported as OperationOutcomes in the manifest's error file."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from ..loader import load_resources
from ..model.outcome import BadRequest, FhirError, Issue, operation_outcome
from ..model.types import is_resource_type
from ..store.base import format_instant
from . import access
from .export import OUTPUT_FORMATS
from .jobs import JobContext

BATCH = 1000
UPLOAD = "upload.ndjson"
ERRORS = "errors.ndjson"


def parse_import(body: dict[str, Any], prefixes: list[str]) -> list[dict[str, str | None]]:
    """The inputs [{type, url}] of an import Parameters resource, or a 400 naming the bad element."""
    if body.get("resourceType") != "Parameters":
        raise BadRequest("$import takes a Parameters resource (or an NDJSON body)", expression=["resourceType"])
    inputs = []
    for i, param in enumerate(body.get("parameter") or []):
        where = f"Parameters.parameter[{i}]"
        name = param.get("name") if isinstance(param, dict) else None
        if name == "inputFormat":
            value = str(param.get("valueCode") or param.get("valueString") or "").replace(" ", "+")
            if value not in OUTPUT_FORMATS:
                raise BadRequest(f"inputFormat '{value[:60]}' is not supported; use application/fhir+ndjson",
                                 expression=[f"{where}.value"])
        elif name == "storageDetail":
            kind = _part(param, "type", where) if param.get("part") else param.get("valueString")
            if kind not in (None, "https", "http"):
                raise BadRequest(f"storageDetail '{str(kind)[:40]}' is not supported; inputs are fetched over "
                                 "HTTP(S)", expression=[where])
        elif name == "input":
            resource_type = _part(param, "type", where)
            url = _part(param, "url", where)
            if resource_type is None or not is_resource_type(resource_type):
                raise BadRequest(f"input type '{resource_type}' is not a resource type", expression=[f"{where}.part"])
            if not url or not url.startswith(("http://", "https://")):
                raise BadRequest("input url must be an http(s) URL", expression=[f"{where}.part"])
            if not any(url.startswith(prefix) for prefix in prefixes):
                raise BadRequest(f"This server does not fetch from {url[:100]}: it is not under any of "
                                 "FHIR_IMPORT_URL_PREFIXES", expression=[f"{where}.part"])
            inputs.append({"type": resource_type, "url": url})
        elif name in ("inputSource", "mode", "since"):
            continue
        else:
            raise BadRequest(f"Parameter '{str(name)[:40]}' is not supported by $import", expression=[where])
    if not inputs:
        raise BadRequest("$import needs at least one input (type and url)", expression=["Parameters.parameter"])
    return inputs


def _part(param: dict[str, Any], name: str, where: str) -> str | None:
    for part in param.get("part") or []:
        if isinstance(part, dict) and part.get("name") == name:
            values = [v for k, v in part.items() if k.startswith("value")]
            if len(values) != 1 or not isinstance(values[0], str):
                raise BadRequest(f"'{name}' needs one value", expression=[f"{where}.part"])
            return values[0]
    return None


async def _lines(ctx: JobContext, source: dict[str, Any], skip: int) -> AsyncIterator[tuple[int, bytes]]:
    """(line number from 1, line) of one input after its first `skip` lines."""
    if source["url"] is None:
        with open(ctx.directory / UPLOAD, "rb") as handle:  # noqa: ASYNC230 (local disk, read line by line)
            for number, line in enumerate(handle, 1):
                if number > skip:
                    yield number, line
        return
    async with httpx.AsyncClient(timeout=60, follow_redirects=False) as http:
        async with http.stream("GET", source["url"], headers={"Accept": "application/fhir+ndjson"}) as response:
            if response.status_code != 200:
                raise FhirError(f"fetching {source['url']} answered {response.status_code}", code="exception")
            number = 0
            async for line in response.aiter_lines():
                number += 1
                if number > skip:
                    yield number, line.encode()


def _error_line(where: str, number: int, reason: FhirError | str) -> bytes:
    if isinstance(reason, FhirError):
        issues = [Issue(i.code, f"{where} line {number}: {i.diagnostics}", i.severity, i.expression)
                  for i in reason.issues]
    else:
        issues = [Issue("invalid", f"{where} line {number}: {reason}")]
    return orjson.dumps(operation_outcome(issues)) + b"\n"


class _Importer:
    """One import job: writes batches of lines, reports rejects, checkpoints after each batch."""

    def __init__(self, ctx: JobContext, errors, state: dict[str, Any]):
        self.ctx, self.errors, self.state = ctx, errors, state
        self.started, self.written = time.monotonic(), 0

    def reject(self, where: str, number: int, reason: FhirError | str) -> None:
        line = _error_line(where, number, reason)
        self.errors.write(line)
        self.state["error_bytes"] += len(line)

    async def batch(self, source: dict[str, Any], progress: dict[str, Any], batch: list[tuple[int, bytes]],
                    last_line: int) -> None:
        written, rejects = await load_resources(self.ctx.service, batch, expected_type=source["type"])
        for number, reason in rejects:
            self.reject(source["url"] or "the uploaded NDJSON", number, reason)
        self.errors.flush()
        progress.update(lines=last_line, count=progress["count"] + written, errors=progress["errors"] + len(rejects))
        self.written += written
        await self.ctx.checkpoint(_progress(self.state["inputs"]), self.state)
        await self.ctx.pace(self.written, self.started)

    async def input(self, source: dict[str, Any], progress: dict[str, Any]) -> None:
        batch: list[tuple[int, bytes]] = []
        try:
            last = progress["lines"]
            async for number, line in _lines(self.ctx, source, progress["lines"]):
                last = number
                if line.strip():
                    batch.append((number, line))
                if len(batch) >= self.ctx.page_size(BATCH):
                    await self.batch(source, progress, batch, number)
                    batch = []
            await self.batch(source, progress, batch, last)
        except (FhirError, httpx.HTTPError) as exc:
            reason = exc if isinstance(exc, FhirError) else f"cannot fetch: {type(exc).__name__}: {exc}"
            self.reject(source["url"] or "the uploaded NDJSON", progress["lines"] + 1, reason)
            self.errors.flush()
            progress["errors"] += 1
        progress["finished"] = True
        await self.ctx.checkpoint(_progress(self.state["inputs"]), self.state)


async def run_import(ctx: JobContext) -> dict[str, Any]:
    inputs = ctx.params["inputs"]
    state = ctx.state
    if not ctx.restore_files({ERRORS: state["error_bytes"]} if state.get("error_bytes") else {}, keep=(UPLOAD,)):
        state = {}
    done = state.setdefault("inputs", [{"lines": 0, "count": 0, "errors": 0, "finished": False} for _ in inputs])
    state.setdefault("error_bytes", 0)
    with open(ctx.directory / ERRORS, "ab") as errors, access.acting_as_job(ctx.params.get("grant")):  # noqa: ASYNC230
        importer = _Importer(ctx, errors, state)
        for source, progress in zip(inputs, done, strict=True):
            if not progress["finished"]:
                await importer.input(source, progress)
    if any(p["count"] for p in done):
        await ctx.store.refresh_statistics()
    base = f"{ctx.params['base']}/bulkfiles/{ctx.job.id}"
    failed = sum(p["errors"] for p in done)
    return {
        "transactionTime": format_instant(ctx.job.transaction_time), "request": ctx.job.request,
        "requiresAccessToken": ctx.params.get("requiresAccessToken", False),
        "output": [{"type": s["type"] or "Resource", "inputUrl": s["url"] or "upload", "count": p["count"]}
                   for s, p in zip(inputs, done, strict=True)],
        "error": [{"type": "OperationOutcome", "url": f"{base}/{ERRORS}", "count": failed}] if failed else [],
    }


def _progress(done: list[dict[str, Any]]) -> str:
    finished = sum(1 for p in done if p["finished"])
    return (f"{sum(p['count'] for p in done)} resources imported, {sum(p['errors'] for p in done)} rejected; "
            f"{finished} of {len(done)} inputs done")
