"""Content negotiation: `_format` and `Accept` for responses, `Content-Type` for request bodies."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from ..model.outcome import BadRequest, NotAcceptable, UnsupportedMediaType

FHIR_JSON = "application/fhir+json"
JSON = "application/json"

_JSON_TYPES = {FHIR_JSON: FHIR_JSON, "application/json+fhir": FHIR_JSON, JSON: JSON, "text/json": JSON,
               "*/*": FHIR_JSON, "application/*": FHIR_JSON}
_FORMAT_JSON = {"json", FHIR_JSON, JSON, "application/json+fhir", "text/json"}
_XML_TYPES = {"xml", "text/xml", "application/xml", "application/fhir+xml", "application/xml+fhir"}


def _media_ranges(accept: str) -> list[tuple[float, str]]:
    """Media ranges with q > 0, best first (ties keep their order)."""
    ranges = []
    for position, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if media and quality > 0:
            ranges.append((-quality, position, media.lower()))
    return [(q, m) for q, _, m in sorted(ranges)]


def response_media_type(request: Request) -> str:
    """The JSON media type to answer with; 406 for XML or anything else we cannot produce."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        fmt = fmt.strip().split(";")[0].lower()
        if fmt in _FORMAT_JSON:
            return FHIR_JSON
        if fmt in _XML_TYPES:
            raise NotAcceptable("XML is not supported; use _format=json")
        raise NotAcceptable(f"Unsupported _format '{fmt}'; use _format=json")
    accept = request.headers.get("accept")
    if not accept:
        return FHIR_JSON
    ranges = _media_ranges(accept)
    for _, media in ranges:
        if media in _JSON_TYPES:
            return _JSON_TYPES[media]
    wanted = ", ".join(m for _, m in ranges) or accept
    raise NotAcceptable(f"Cannot produce any of [{wanted}]; this server speaks {FHIR_JSON}")


_RESOURCE_TYPES = (FHIR_JSON, JSON, "application/json+fhir")
JSON_PATCH = "application/json-patch+json"


def body_media_type(request: Request, allowed: tuple[str, ...] = _RESOURCE_TYPES) -> str:
    content_type = request.headers.get("content-type")
    if not content_type:
        raise UnsupportedMediaType(f"Missing Content-Type; send {allowed[0]}")
    media = content_type.split(";")[0].strip().lower()
    if media not in allowed:
        raise UnsupportedMediaType(f"Content-Type '{media}' is not supported here; send {' or '.join(allowed[:2])}")
    return media


async def read_resource_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or 400/415 saying what is wrong with it."""
    body_media_type(request)
    return await read_json_body(request, dict)


async def read_json_body(request: Request, expected: type = dict) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise BadRequest("The request body is empty")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Malformed JSON: {exc}", code="structure") from exc
    if not isinstance(body, expected):
        what = "a JSON object (a FHIR resource)" if expected is dict else "a JSON array"
        raise BadRequest(f"The request body must be {what}", code="structure")
    limit = request.app.state.settings.max_json_depth
    if raw.count(b"{") + raw.count(b"[") > limit:  # else it cannot be nested deeper than the limit
        check_depth(body, limit)
    return body


def check_depth(value: Any, limit: int) -> None:
    """400 for JSON nested deeper than `limit` (validation and indexing recurse through it)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise BadRequest(f"The JSON is nested deeper than {limit} levels (FHIR_MAX_JSON_DEPTH)",
                             code="too-costly")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
