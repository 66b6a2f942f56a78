"""Building FHIR HTTP responses: bodies, version headers, Prefer handling, OperationOutcomes."""

from __future__ import annotations

from email.utils import format_datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..model.outcome import FhirError, Issue, operation_outcome
from ..store import ResourceVersion
from .negotiation import FHIR_JSON, response_media_type


def base_url(request: Request) -> str:
    configured = request.app.state.settings.base_url
    return (configured or str(request.base_url)).rstrip("/")


def _encode(body: Any, request: Request | None) -> bytes:
    pretty = request is not None and request.query_params.get("_pretty") == "true"
    if isinstance(body, str | bytes):
        if not pretty:
            return body.encode() if isinstance(body, str) else body
        body = orjson.loads(body)
    return orjson.dumps(body, option=orjson.OPT_INDENT_2 if pretty else 0)


def fhir_response(request: Request, body: Any, status: int = 200, headers: dict[str, str] | None = None,
                  media_type: str | None = None) -> Response:
    """A JSON response; body may be a dict or already-encoded JSON text (a stored resource)."""
    if media_type is None:
        try:
            media_type = response_media_type(request)
        except FhirError:  # the error being reported may itself be about negotiation
            media_type = FHIR_JSON
    content = b"" if body is None else _encode(body, request)
    return Response(content, status_code=status, headers=headers,
                    media_type=f"{media_type}; charset=utf-8" if body is not None else None)


def version_headers(version: ResourceVersion) -> dict[str, str]:
    return {"ETag": version.etag, "Last-Modified": format_datetime(version.last_updated, usegmt=True)}


def outcome_response(request: Request, error: FhirError, headers: dict[str, str] | None = None) -> Response:
    return fhir_response(request, error.outcome(), error.status, headers)


def prefer(request: Request, key: str) -> str | None:
    """A token of the Prefer header, e.g. prefer(request, "return") -> "minimal"."""
    for part in request.headers.get("prefer", "").split(","):
        for item in part.split(";"):
            name, _, value = item.strip().partition("=")
            if name.strip().lower() == key:
                return value.strip().strip('"')
    return None


def write_response(request: Request, version: ResourceVersion, status: int, message: str) -> Response:
    """The answer to a create or update, honouring Prefer: return=minimal|representation|OperationOutcome."""
    headers = version_headers(version)
    headers["Location"] = f"{base_url(request)}/{version.resource_type}/{version.id}/_history/{version.version_id}"
    wanted = prefer(request, "return")
    if wanted == "minimal":
        return fhir_response(request, None, status, headers)
    if wanted == "OperationOutcome":
        return fhir_response(request, operation_outcome([Issue("informational", message, "information")]),
                             status, headers)
    return fhir_response(request, version.content, status, headers)
