"""HTTP routes of Bulk Data: $export kick-off at system, Patient and Group level, $import, the status
URL (poll, cancel) and the output files. The work is in fhir_server.bulk."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from ..bulk import access
from ..bulk.export import default_types, kickoff_pairs, output_path, parse_export
from ..bulk.imports import UPLOAD, parse_import
from ..bulk.jobs import BulkRunner, job_directory, status_of
from ..model.outcome import BadRequest, Issue, NotFound, operation_outcome
from .negotiation import body_media_type, read_json_body, response_media_type
from .responses import base_url, fhir_response, prefer

router = APIRouter()
NDJSON = "application/fhir+ndjson"
_NDJSON_BODIES = (NDJSON, "application/ndjson", "application/x-ndjson")


def _runner(request: Request) -> BulkRunner:
    return request.app.state.bulk


def _require_async(request: Request) -> None:
    if prefer(request, "respond-async") is None:
        raise BadRequest("Bulk data requests are asynchronous: send the header 'Prefer: respond-async'",
                         expression=["Prefer"])


def _accepted(request: Request, job_id: str, what: str) -> Response:
    location = f"{base_url(request)}/bulkstatus/{job_id}"
    body = operation_outcome([Issue("informational", f"{what} accepted; poll {location}", "information")])
    return fhir_response(request, body, 202, {"Content-Location": location})


async def _export(request: Request, level: str, group_id: str | None = None) -> Response:
    response_media_type(request)
    _require_async(request)
    body = None
    if request.method == "POST":
        body_media_type(request)
        body = await read_json_body(request, dict)
    service = request.app.state.service
    pairs = kickoff_pairs(list(request.query_params.multi_items()), body)
    export = parse_export(level, group_id, pairs, lenient=prefer(request, "handling") == "lenient",
                          registry=service.registry, base_url=base_url(request))
    if group_id is not None:
        await service.read("Group", group_id)  # 404 / 410 now rather than a failed job later
    candidates = export.types if export.types is not None else default_types(level)
    permitted = access.permitted_types(candidates, explicit=export.types is not None)
    if permitted != candidates:
        export.types = permitted
    params = {"request": export.__dict__, "base": base_url(request), "grant": access.job_grant(),
              "requiresAccessToken": access.requires_access_token(request.app.state.settings)}
    job = await _runner(request).submit("export", str(request.url), params)
    return _accepted(request, job.id, "Export")


@router.get("/$export")
@router.post("/$export")
async def system_export(request: Request) -> Response:
    return await _export(request, "system")


@router.get("/Patient/$export")
@router.post("/Patient/$export")
async def patient_export(request: Request) -> Response:
    return await _export(request, "patient")


@router.get("/Group/{group_id}/$export")
@router.post("/Group/{group_id}/$export")
async def group_export(request: Request, group_id: str) -> Response:
    return await _export(request, "group", group_id)


@router.post("/$import")
async def bulk_import(request: Request) -> Response:
    response_media_type(request)
    _require_async(request)
    media = body_media_type(request, (*_NDJSON_BODIES, "application/fhir+json", "application/json"))
    files = None
    if media in _NDJSON_BODIES:
        raw = await request.body()
        if not raw.strip():
            raise BadRequest("The NDJSON body is empty", expression=["body"])
        inputs = [{"type": None, "url": None}]
        files = {UPLOAD: raw}
    else:
        prefixes = [p.strip() for p in request.app.state.settings.import_url_prefixes.split(",") if p.strip()]
        inputs = parse_import(await read_json_body(request, dict), prefixes)
    access.check_import_types(sorted({i["type"] for i in inputs if i["type"]}))
    params = {"inputs": inputs, "base": base_url(request), "grant": access.job_grant(),
              "requiresAccessToken": access.requires_access_token(request.app.state.settings)}
    job = await _runner(request).submit("import", str(request.url), params, files)
    return _accepted(request, job.id, "Import")


async def _job(request: Request, job_id: str):
    job = await _runner(request).table.get(job_id)
    if job is None or not access.same_client(orjson.loads(job.params).get("grant")):
        raise NotFound(f"No bulk job '{job_id[:64]}' (never started, cancelled or expired)",
                       expression=["job"])
    return job


@router.get("/bulkstatus/{job_id}")
async def job_status(request: Request, job_id: str) -> Response:
    job = await _job(request, job_id)
    status, body, headers = status_of(job, request.app.state.settings.bulk_retention_h)
    if status == 200:  # the manifest is plain JSON, not a FHIR resource
        return Response(body, status_code=200, media_type="application/json", headers=headers)
    if body is None:
        return Response(status_code=status, headers=headers)
    return fhir_response(request, body, status, headers)


@router.delete("/bulkstatus/{job_id}")
async def job_cancel(request: Request, job_id: str) -> Response:
    await _job(request, job_id)
    await _runner(request).cancel(job_id)
    body = operation_outcome([Issue("informational", f"Bulk job {job_id} cancelled and its files removed",
                                    "information")])
    return fhir_response(request, body, 202)


@router.get("/bulkfiles/{job_id}/{name}")
async def job_file(request: Request, job_id: str, name: str) -> Response:
    job = await _job(request, job_id)
    listed = set()
    if job.manifest and job.status == "completed":
        manifest = orjson.loads(job.manifest)
        listed = {item["url"].rsplit("/", 1)[-1] for key in ("output", "error", "deleted")
                  for item in manifest.get(key, []) if "url" in item}
    path = output_path(job_directory(request.app.state.settings, job_id), name) if name in listed else None
    if path is None:
        raise NotFound(f"Bulk job {job_id} has no output file '{name[:80]}'", expression=["file"])
    return FileResponse(path, media_type=NDJSON)
