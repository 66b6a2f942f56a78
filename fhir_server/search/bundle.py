"""The searchset Bundle built from a query and its page, with self/next/previous links."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson

from ..model.outcome import operation_outcome
from ..model.summary import subset
from ..store.base import ResourceVersion, format_instant


def _link(base: str, path: str, params: list[tuple[str, str]], cursor: str | None = None) -> str:
    query = list(params) + ([("_cursor", cursor)] if cursor else [])
    return f"{base}/{path}" + (f"?{urlencode(query)}" if query else "")


def build_searchset(base: str, path: str, query, page) -> dict[str, Any]:
    """A `searchset` Bundle: matches, then includes, then (lenient mode) an outcome of ignored parameters."""
    links = [{"relation": "self", "url": _link(base, path, query.self_params, query.cursor)}]
    if page.next_cursor:
        links.append({"relation": "next", "url": _link(base, path, query.self_params, page.next_cursor)})
    if page.previous_cursor:
        links.append({"relation": "previous", "url": _link(base, path, query.self_params, page.previous_cursor)})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "id": str(uuid.uuid4()),
                              "meta": {"lastUpdated": format_instant(datetime.now(UTC))}, "type": "searchset"}
    if page.total is not None:
        bundle["total"] = page.total
    bundle["link"] = links

    def content(version: ResourceVersion):
        if query.summary or query.elements:
            return subset(orjson.loads(version.content), query.summary, query.elements)
        return orjson.Fragment(version.content)

    entries = [{"fullUrl": f"{base}/{v.resource_type}/{v.id}", "resource": content(v), "search": {"mode": mode}}
               for mode, versions in (("match", page.matches), ("include", page.included)) for v in versions]
    if query.warnings:
        entries.append({"resource": operation_outcome(query.warnings), "search": {"mode": "outcome"}})
    if entries:
        bundle["entry"] = entries
    return bundle
