"""Bundles the REST layer returns: history (here) and searchset (built in search/bundle.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request

from ..search.bundle import build_searchset
from ..store import HistoryPage, ResourceVersion
from ..store.base import format_instant
from .responses import base_url

_STATUS = {"POST": "201 Created", "PUT": "200 OK", "DELETE": "204 No Content"}


def _history_entry(base: str, version: ResourceVersion) -> dict[str, Any]:
    url = f"{version.resource_type}/{version.id}"
    entry: dict[str, Any] = {"fullUrl": f"{base}/{url}"}
    if version.content is not None:
        entry["resource"] = orjson.Fragment(version.content)  # stored JSON passes through unparsed
    entry["request"] = {"method": version.method,
                        "url": version.resource_type if version.method == "POST" else url}
    entry["response"] = {"status": _STATUS.get(version.method, "200 OK"), "etag": version.etag,
                         "lastModified": format_instant(version.last_updated)}
    return entry


def history_bundle(request: Request, path: str, page: HistoryPage, params: dict[str, str]) -> dict[str, Any]:
    """A `history` Bundle; `params` are the normalised query parameters that the next link repeats."""
    base = base_url(request)
    query = str(request.query_params)
    links = [{"relation": "self", "url": f"{base}/{path}" + (f"?{query}" if query else "")}]
    if page.next_cursor is not None:
        links.append({"relation": "next",
                      "url": f"{base}/{path}?{urlencode({**params, '_cursor': str(page.next_cursor)})}"})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "id": str(uuid.uuid4()),
                              "meta": {"lastUpdated": format_instant(datetime.now(UTC))}, "type": "history"}
    if page.total is not None:
        bundle["total"] = page.total
    bundle["link"] = links
    if page.entries:  # FHIR JSON has no empty arrays
        bundle["entry"] = [_history_entry(base, v) for v in page.entries]
    return bundle


def searchset_bundle(request: Request, path: str, query, page) -> dict[str, Any]:
    return build_searchset(base_url(request), path, query, page)
