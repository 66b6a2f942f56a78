"""DICOMweb under /dicomweb (PS3.18): STOW-RS, QIDO-RS and WADO-RS over the DICOM bridge's index and
blob store. Errors are OperationOutcomes, like the rest of the server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..auth.access import current_access
from ..auth.grant import system_access
from ..model.outcome import BadRequest, FhirError, NotFound, UnsupportedMediaType
from ..rest.responses import base_url
from . import multipart, pixels, qido
from .index import QueryError
from .ingest import DicomIngest
from .media import (
    DICOM,
    DICOM_JSON,
    MULTIPART_RELATED,
    OCTET_STREAM,
    Offer,
    accepts_json,
    frame_media_type,
    negotiate,
    parse_media_type,
    part_content_type,
)
from .stow import store_instances, warning_header
from .urls import PREFIX, absolute_bulk_data, instance_url

log = logging.getLogger("fhir_server.dicom")


def _authorize(request: Request) -> None:
    """DICOMweb answers from the DICOM index, which cannot be confined to one patient's compartment: it
    takes user/ or system/ ImagingStudy scopes without restrictions (read/search to look, create and
    update to store)."""
    access = current_access()
    if access is None:
        return
    if request.method == "POST":
        access.unrestricted("ImagingStudy", "c")
        access.unrestricted("ImagingStudy", "u")
    else:
        access.unrestricted("ImagingStudy", "r")
        access.unrestricted("ImagingStudy", "s")


router = APIRouter(prefix=PREFIX, include_in_schema=False, dependencies=[Depends(_authorize)])
AGENT = "alliance-fhir-server"
AVAILABLE_TRANSFER_SYNTAX = "00083002"


class PayloadTooLarge(FhirError):
    status, code = 413, "too-costly"


def _ingest(request: Request) -> DicomIngest:
    return request.app.state.dicom


def dicom_json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=DICOM_JSON)


# ---- STOW-RS ----

async def _read_body(request: Request, limit: int) -> bytearray:
    """The whole body, refused once it passes `limit` (a chunked upload has no Content-Length to check)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes; send fewer instances "
                                  f"per request")
    return body


@router.post("/studies")
@router.post("/studies/{study}")
async def store(request: Request) -> Response:
    content_type = request.headers.get("content-type", "")
    media = parse_media_type(content_type)
    if media.type != MULTIPART_RELATED:
        raise UnsupportedMediaType(f"Content-Type '{media.type or '(none)'}' is not accepted; send "
                                   f'{MULTIPART_RELATED}; type="{DICOM}"')
    part_type = media.params.get("type", DICOM).lower()
    if part_type != DICOM:
        raise UnsupportedMediaType(f"Parts of type '{part_type}' are not accepted; send Part 10 files as "
                                   f'{MULTIPART_RELATED}; type="{DICOM}"')
    boundary = media.params.get("boundary")
    if not boundary:
        raise BadRequest("The Content-Type has no boundary parameter")
    body = await _read_body(request, request.app.state.settings.dicomweb_max_body_bytes)
    try:
        parts = multipart.split_related(body, boundary)
    except multipart.MultipartError as exc:
        raise BadRequest(f"Malformed multipart body: {exc}", code="structure") from exc
    with system_access():  # the study's Patient, ImagingStudy and ECG triage are the server's own writes
        result = await store_instances(_ingest(request), parts, study_uid=request.path_params.get("study"),
                                       base=base_url(request))
    headers = {"Warning": warning_header(result.failures, AGENT)} if result.failures else None
    return dicom_json_response(result.body, result.status, headers)


# ---- QIDO-RS ----

async def _search(request: Request, level: str, **path_uids: str) -> Response:
    accepts_json(request.headers.get("accept"))
    settings = request.app.state.settings
    try:
        query = qido.parse_query(list(request.query_params.multi_items()), settings.dicomweb_max_results)
        results, more = [], False
        if qido.scope(query, **path_uids):
            results, more = await qido.search(_ingest(request).index, level, query, base_url(request))
    except QueryError as exc:
        raise BadRequest(str(exc)) from exc
    headers = {"Warning": f'299 {AGENT} "There are additional results that can be requested"'} if more else None
    return dicom_json_response(results, headers=headers)


@router.get("/studies")
async def search_studies(request: Request) -> Response:
    return await _search(request, "STUDY")


@router.get("/series")
async def search_series(request: Request) -> Response:
    return await _search(request, "SERIES")


@router.get("/instances")
async def search_instances(request: Request) -> Response:
    return await _search(request, "IMAGE")


@router.get("/studies/{study}/series")
async def search_study_series(request: Request, study: str) -> Response:
    return await _search(request, "SERIES", StudyInstanceUID=study)


@router.get("/studies/{study}/instances")
async def search_study_instances(request: Request, study: str) -> Response:
    return await _search(request, "IMAGE", StudyInstanceUID=study)


@router.get("/studies/{study}/series/{series}/instances")
async def search_series_instances(request: Request, study: str, series: str) -> Response:
    return await _search(request, "IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series)


# ---- WADO-RS ----

async def _stored(request: Request) -> list[dict[str, Any]]:
    """The stored instances the URL names (a study, a series or one instance); 404 when there are none."""
    study, series, instance = (request.path_params.get(name) for name in ("study", "series", "instance"))
    rows = await _ingest(request).index.instances(study, series, instance)
    if rows:
        return rows
    if instance is not None:
        raise NotFound(f"Instance {instance} of series {series} in study {study} is not stored here")
    if series is not None:
        raise NotFound(f"Series {series} of study {study} is not stored here")
    raise NotFound(f"Study {study} is not stored here")


def _missing_file(row: dict[str, Any]) -> FhirError:
    log.error("dicom file missing", extra={"sop_uid": row["sop_uid"], "blob_key": row["blob_key"]})
    return FhirError(f"The stored file of instance {row['sop_uid']} is missing", status=500, code="exception")


async def _read_file(request: Request, row: dict[str, Any]) -> bytes:
    try:
        return await asyncio.to_thread(_ingest(request).blobs.get, row["blob_key"])
    except FileNotFoundError as exc:
        raise _missing_file(row) from exc


async def _retrieve(request: Request, rows: list[dict[str, Any]]) -> Response:
    """The instances' Part 10 files, as stored, in one multipart/related body, streamed."""
    offer = Offer(DICOM, frozenset(row["transfer_syntax"] for row in rows))
    negotiate(request.headers.get("accept"), [offer])
    blobs = _ingest(request).blobs
    for row in rows:  # a missing file must be an error status, not a cut-off stream
        if not await asyncio.to_thread(blobs.exists, row["blob_key"]):
            raise _missing_file(row)
    boundary = multipart.new_boundary()

    async def body():
        for row in rows:
            raw = await asyncio.to_thread(blobs.get, row["blob_key"])
            yield multipart.part(boundary, part_content_type(DICOM, row["transfer_syntax"]), raw)
        yield multipart.closing(boundary)

    return StreamingResponse(body(), media_type=multipart.related_content_type(DICOM, boundary))


@router.get("/studies/{study}")
@router.get("/studies/{study}/series/{series}")
@router.get("/studies/{study}/series/{series}/instances/{instance}")
async def retrieve(request: Request) -> Response:
    return await _retrieve(request, await _stored(request))


async def _metadata(request: Request, rows: list[dict[str, Any]]) -> Response:
    accepts_json(request.headers.get("accept"))
    base = base_url(request)
    documents = []
    for row in rows:
        url = instance_url(base, row["study_uid"], row["series_uid"], row["sop_uid"])
        document = absolute_bulk_data(orjson.loads(row["dicom_json"]), url)
        # the file meta is not in the metadata: say which transfer syntax a retrieve gets without transcoding
        document[AVAILABLE_TRANSFER_SYNTAX] = {"vr": "UI", "Value": [row["transfer_syntax"]]}
        documents.append(dict(sorted(document.items())))
    return dicom_json_response(documents)


@router.get("/studies/{study}/metadata")
@router.get("/studies/{study}/series/{series}/metadata")
@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
async def metadata(request: Request) -> Response:
    return await _metadata(request, await _stored(request))


def _bodies_response(request: Request, bodies: pixels.Bodies) -> Response:
    """Frames or bulk data: multipart/related (or one body when the client asks for a single part)."""
    syntax = bodies.transfer_syntax
    if bodies.encapsulated:  # compressed as stored; octet-stream only if the client takes any syntax
        offers = [Offer(frame_media_type(syntax), frozenset({syntax})),
                  Offer(OCTET_STREAM, frozenset({syntax}), default=False)]
    else:
        offers = [Offer(OCTET_STREAM, frozenset({syntax}))]
    choice = negotiate(request.headers.get("accept"), offers, single_part=len(bodies.bodies) == 1)
    content_type = part_content_type(choice.offer.media_type, syntax)
    if not choice.multipart:
        return Response(bodies.bodies[0], media_type=content_type)
    boundary = multipart.new_boundary()
    content = b"".join(multipart.part(boundary, content_type, body) for body in bodies.bodies)
    return Response(content + multipart.closing(boundary),
                    media_type=multipart.related_content_type(choice.offer.media_type, boundary))


def _frame_numbers(text: str) -> list[int]:
    items = text.split(",")
    if not all(item.strip().isdigit() and int(item) > 0 for item in items):
        raise BadRequest(f"Frame numbers are positive integers separated by commas, not {text[:60]!r}")
    return [int(item) for item in items]


async def _cut(request: Request, cut: Callable[[bytes, str, Any], pixels.Bodies], what: Any) -> Response:
    """Frames or bulk data cut from the instance's stored file by `cut`."""
    [row] = await _stored(request)
    raw = await _read_file(request, row)
    try:
        bodies = await asyncio.to_thread(cut, raw, row["transfer_syntax"], what)
    except pixels.NoSuchData as exc:
        raise NotFound(f"Instance {row['sop_uid']}: {exc}") from exc
    return _bodies_response(request, bodies)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}")
async def retrieve_frames(request: Request, frame_list: str) -> Response:
    return await _cut(request, pixels.frames, _frame_numbers(frame_list))


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path:path}")
async def retrieve_bulk_data(request: Request, path: str) -> Response:
    return await _cut(request, pixels.bulk_data, path)


@router.api_route("/{rest:path}", methods=["GET", "POST"])
async def unknown(request: Request, rest: str) -> Response:
    raise NotFound(f"No such DICOMweb resource: {request.method} {request.url.path}")
