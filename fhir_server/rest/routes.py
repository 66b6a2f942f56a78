"""FHIR RESTful interactions: create, read, vread, update, delete and history at every level."""

from __future__ import annotations

from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ..model.outcome import BadRequest, Issue, UnsupportedMediaType, operation_outcome
from ..model.types import RESOURCE_TYPES
from ..ops.bundle import BundleProcessor
from ..search.dates import parse_since
from ..service import ResourceService, check_type
from .bundles import history_bundle, searchset_bundle
from .capability import capability_statement
from .negotiation import (
    FHIR_JSON,
    JSON,
    JSON_PATCH,
    body_media_type,
    read_json_body,
    read_resource_body,
    response_media_type,
)
from .responses import base_url, fhir_response, prefer, version_headers, write_response

router = APIRouter()


def service(request: Request) -> ResourceService:
    return request.app.state.service


def parse_if_match(request: Request) -> int | None:
    """The version an If-Match header names (W/"3" or "3"), or None when absent."""
    value = request.headers.get("if-match")
    if value is None:
        return None
    tag = value.strip().removeprefix("W/").strip('"')
    if not tag.isdigit() or len(tag) > 9:
        raise BadRequest(f"If-Match must be a version ETag such as W/\"3\", not {value[:40]!r}")
    return int(tag)


def _not_modified(request: Request, etag: str, last_updated: datetime) -> bool:
    """Conditional read: If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2)."""
    none_match = request.headers.get("if-none-match")
    if none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in none_match.split(",")}
        return "*" in tags or etag.removeprefix("W/") in tags
    modified_since = request.headers.get("if-modified-since")
    if modified_since:
        try:
            since = parsedate_to_datetime(modified_since)
        except (TypeError, ValueError):
            return False  # an invalid date is ignored
        if since.tzinfo is None:
            return False
        return last_updated.replace(microsecond=0) <= since
    return False


def _history_params(request: Request, settings) -> tuple[dict[str, str], datetime | None, int, int | None]:
    query = request.query_params
    params: dict[str, str] = {}
    since = None
    if "_since" in query:
        raw = query["_since"]
        since = parse_since(raw)
        params["_since"] = raw
    count = settings.default_page_size
    if "_count" in query:
        raw = query["_count"]
        if not raw.isdigit():
            raise BadRequest(f"_count must be a non-negative integer, not {raw[:20]!r}", expression=["_count"])
        count = min(int(raw), settings.max_page_size)
        params["_count"] = str(count)
    cursor = None
    if "_cursor" in query:
        raw = query["_cursor"]
        if not raw.isdigit():
            raise BadRequest("Invalid paging cursor", expression=["_cursor"])
        cursor = int(raw)
    return params, since, max(count, 0), cursor


async def _history(request: Request, path: str, resource_type=None, resource_id=None) -> Response:
    response_media_type(request)
    params, since, count, cursor = _history_params(request, request.app.state.settings)
    page = await service(request).history(resource_type, resource_id, since=since, count=max(count, 1),
                                          cursor=cursor)
    if count == 0:  # _count=0: only the total (where known)
        page = type(page)([], None, page.total)
    return fhir_response(request, history_bundle(request, path, page, params))


async def _search_params(request: Request) -> list[tuple[str, str]]:
    """Query parameters, plus the form body of POST _search."""
    params = list(request.query_params.multi_items())
    if request.method == "POST":
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise UnsupportedMediaType("POST _search takes an application/x-www-form-urlencoded body")
        try:
            params += parse_qsl((await request.body()).decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError as exc:
            raise BadRequest("The form body is not UTF-8") from exc
    return params


async def _search(request: Request, resource_types: tuple[str, ...] | None, path: str,
                  compartment: tuple[str, str] | None = None) -> Response:
    response_media_type(request)
    params = await _search_params(request)
    if resource_types is None:  # system level: the types come from _type
        resource_types = _system_types(params)
    query, page = await service(request).search(
        resource_types, params, base_url=base_url(request), strict=prefer(request, "handling") == "strict",
        compartment=compartment)
    return fhir_response(request, searchset_bundle(request, path, query, page))


def _system_types(params: list[tuple[str, str]]) -> tuple[str, ...]:
    raw = [t.strip() for k, v in params if k == "_type" for t in v.split(",") if t.strip()]
    for rt in raw:
        check_type(rt)
    return tuple(raw) or tuple(sorted(RESOURCE_TYPES))


@router.get("/")
async def system_search(request: Request) -> Response:
    return await _search(request, None, "")


@router.post("/_search")
async def system_search_post(request: Request) -> Response:
    return await _search(request, None, "")


@router.post("/")
async def bundle(request: Request) -> Response:
    """Transaction and batch Bundles."""
    response_media_type(request)
    body = await read_resource_body(request)
    processor = BundleProcessor(service(request), base_url(request), prefer(request, "return"))
    return fhir_response(request, await processor.process(body))


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    response_media_type(request)
    return fhir_response(request, capability_statement(base_url(request), request.app.state.store.backend,
                                                          service(request).registry,
                                                          smart=request.app.state.settings.auth_enabled))


@router.get("/_history")
async def system_history(request: Request) -> Response:
    return await _history(request, "_history")


@router.get("/{resource_type}")
async def type_search(request: Request, resource_type: str) -> Response:
    check_type(resource_type)
    return await _search(request, (resource_type,), resource_type)


@router.get("/{resource_type}/_search")
@router.post("/{resource_type}/_search")
async def type_search_post(request: Request, resource_type: str) -> Response:
    check_type(resource_type)
    return await _search(request, (resource_type,), resource_type)


@router.post("/{resource_type}")
async def create(request: Request, resource_type: str) -> Response:
    check_type(resource_type)
    response_media_type(request)
    resource = await read_resource_body(request)
    result = await service(request).create(resource_type, resource,
                                           if_none_exist=request.headers.get("if-none-exist"))
    if not result.created:  # If-None-Exist matched: the existing resource, 200
        return write_response(request, result.version, 200, f"{resource_type}/{result.version.id} already exists")
    return write_response(request, result.version, 201, f"Created {resource_type}/{result.version.id}")


def _criteria(request: Request) -> str:
    criteria = str(request.query_params)
    if not criteria:
        raise BadRequest("A conditional interaction needs search criteria, e.g. ?identifier=system|value")
    return criteria


@router.put("/{resource_type}")
async def conditional_update(request: Request, resource_type: str) -> Response:
    check_type(resource_type)
    response_media_type(request)
    if_match = parse_if_match(request)
    resource = await read_resource_body(request)
    result = await service(request).conditional_update(resource_type, _criteria(request), resource,
                                                       if_match=if_match)
    status, verb = (201, "Created") if result.created else (200, "Updated")
    return write_response(request, result.version, status, f"{verb} {resource_type}/{result.version.id}")


@router.delete("/{resource_type}")
async def conditional_delete(request: Request, resource_type: str) -> Response:
    check_type(resource_type)
    response_media_type(request)
    deleted = await service(request).conditional_delete(resource_type, _criteria(request))
    if prefer(request, "return") == "minimal":
        return Response(status_code=204)
    message = f"Deleted {len(deleted)} {resource_type} resource(s)" + (
        ": " + ", ".join(f"{v.resource_type}/{v.id}" for v in deleted) if deleted else "")
    return fhir_response(request, operation_outcome([Issue("informational", message, "information")]))


async def _read_patch(request: Request) -> tuple[str, Any]:
    media = body_media_type(request, (JSON_PATCH, FHIR_JSON, JSON))
    if media == JSON_PATCH:
        return media, await read_json_body(request, list)
    return media, await read_json_body(request, dict)


@router.patch("/{resource_type}")
async def conditional_patch(request: Request, resource_type: str) -> Response:
    check_type(resource_type)
    response_media_type(request)
    if_match = parse_if_match(request)
    media, patch = await _read_patch(request)
    result = await service(request).conditional_patch(resource_type, _criteria(request), media, patch,
                                                      if_match=if_match)
    return write_response(request, result.version, 200, f"Patched {resource_type}/{result.version.id}")


@router.patch("/{resource_type}/{resource_id}")
async def patch(request: Request, resource_type: str, resource_id: str) -> Response:
    check_type(resource_type)
    response_media_type(request)
    if_match = parse_if_match(request)
    media, body = await _read_patch(request)
    result = await service(request).patch(resource_type, resource_id, media, body, if_match=if_match)
    return write_response(request, result.version, 200, f"Patched {resource_type}/{resource_id}")


@router.get("/{resource_type}/_history")
async def type_history(request: Request, resource_type: str) -> Response:
    check_type(resource_type)
    return await _history(request, f"{resource_type}/_history", resource_type)


@router.get("/{resource_type}/{resource_id}")
async def read(request: Request, resource_type: str, resource_id: str) -> Response:
    response_media_type(request)
    version = await service(request).read(resource_type, resource_id)
    headers = version_headers(version)
    if _not_modified(request, version.etag, version.last_updated):
        return Response(status_code=304, headers=headers)
    return fhir_response(request, version.content, headers=headers)


@router.put("/{resource_type}/{resource_id}")
async def update(request: Request, resource_type: str, resource_id: str) -> Response:
    check_type(resource_type)
    response_media_type(request)
    if_match = parse_if_match(request)
    resource = await read_resource_body(request)
    result = await service(request).update(resource_type, resource_id, resource, if_match=if_match)
    status, verb = (201, "Created") if result.created else (200, "Updated")
    return write_response(request, result.version, status, f"{verb} {resource_type}/{resource_id}")


@router.delete("/{resource_type}/{resource_id}")
async def delete(request: Request, resource_type: str, resource_id: str) -> Response:
    response_media_type(request)
    if_match = parse_if_match(request)
    version = await service(request).delete(resource_type, resource_id, if_match=if_match)
    headers = version_headers(version) if version is not None else {}
    if prefer(request, "return") == "minimal":
        return Response(status_code=204, headers=headers)
    message = (f"Deleted {resource_type}/{resource_id}" if version is not None
               else f"{resource_type}/{resource_id} was already deleted")
    return fhir_response(request, operation_outcome([Issue("informational", message, "information")]),
                         headers=headers)


@router.get("/{resource_type}/{resource_id}/_history")
async def instance_history(request: Request, resource_type: str, resource_id: str) -> Response:
    check_type(resource_type)
    return await _history(request, f"{resource_type}/{resource_id}/_history", resource_type, resource_id)


@router.get("/{compartment_type}/{compartment_id}/{resource_type}")
async def compartment_search(request: Request, compartment_type: str, compartment_id: str,
                             resource_type: str) -> Response:
    check_type(compartment_type)
    check_type(resource_type)
    return await _search(request, (resource_type,), f"{compartment_type}/{compartment_id}/{resource_type}",
                         (compartment_type, compartment_id))


@router.get("/{resource_type}/{resource_id}/_history/{version_id}")
async def vread(request: Request, resource_type: str, resource_id: str, version_id: str) -> Response:
    response_media_type(request)
    version = await service(request).vread(resource_type, resource_id, version_id)
    headers = version_headers(version)
    if _not_modified(request, version.etag, version.last_updated):
        return Response(status_code=304, headers=headers)
    return fhir_response(request, version.content, headers=headers)
