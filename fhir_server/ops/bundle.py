"""POST [base] with a transaction or batch Bundle.

Transaction: all or nothing in one database transaction, entries processed in the spec's order
(DELETE, POST, PUT/PATCH, GET), `urn:uuid:` / fullUrl and conditional references rewritten
everywhere, ifNoneExist honoured. Batch: every entry on its own, failures reported per entry."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson

from ..model.outcome import BadRequest, FhirError, Issue, NotFound, PreconditionFailed, operation_outcome
from ..model.types import is_resource_type
from ..search.bundle import build_searchset
from ..store import ResourceVersion, StoreTransaction
from ..store.base import format_instant
from .patch import JSON_PATCH

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
            404: "Not Found", 409: "Conflict", 410: "Gone", 412: "Precondition Failed", 422: "Unprocessable Entity"}


def _status(code: int) -> str:
    return f"{code} {_REASONS.get(code, '')}".strip()


@dataclass
class _Entry:
    index: int
    method: str
    url: str  # relative: Type, Type/id, Type?criteria
    resource: dict[str, Any] | None
    full_url: str | None
    if_none_exist: str | None
    if_match: int | None
    resource_type: str = ""
    resource_id: str | None = None
    criteria: str | None = None
    response: dict[str, Any] = field(default_factory=dict)
    error: FhirError | None = None  # a batch entry that could not even be parsed


def _parse_if_match(value: str | None, where: str) -> int | None:
    if value is None:
        return None
    tag = value.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise BadRequest(f"{where}: ifMatch must be a version ETag such as W/\"3\"")
    return int(tag)


def _parse_entries(bundle: dict[str, Any], base_url: str, max_entries: int, batch: bool) -> list[_Entry]:
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise BadRequest("Bundle.entry must be an array", expression=["Bundle.entry"])
    if len(entries) > max_entries:
        raise BadRequest(f"Bundle has {len(entries)} entries; the limit is {max_entries} (FHIR_MAX_BUNDLE_ENTRIES)")
    parsed = []
    for i, raw in enumerate(entries):
        where = f"Bundle.entry[{i}]"
        request = raw.get("request") if isinstance(raw, dict) else None
        if not isinstance(request, dict) or not request.get("method") or not request.get("url"):
            raise BadRequest(f"{where}: request.method and request.url are required", expression=[f"{where}.request"])
        method = str(request["method"]).upper()
        if method not in _ORDER:
            raise BadRequest(f"{where}: method {method} is not supported", expression=[f"{where}.request.method"])
        url = str(request["url"])
        if base_url and url.startswith(base_url.rstrip("/") + "/"):
            url = url[len(base_url.rstrip("/")) + 1:]
        url = url.lstrip("/")
        resource = raw.get("resource")
        if method in ("POST", "PUT", "PATCH") and not isinstance(resource, dict):
            raise BadRequest(f"{where}: a {method} entry needs a resource", expression=[f"{where}.resource"])
        entry = _Entry(i, method, url, resource, raw.get("fullUrl"), request.get("ifNoneExist"),
                       _parse_if_match(request.get("ifMatch"), where))
        try:
            _parse_url(entry, where)
        except FhirError as exc:
            if not batch:
                raise
            entry.error = exc  # in a batch only this entry fails
        parsed.append(entry)
    return parsed


def _parse_url(entry: _Entry, where: str) -> None:
    path, _, query = entry.url.partition("?")
    parts = path.split("/")
    entry.resource_type = parts[0]
    if not is_resource_type(entry.resource_type):
        raise NotFound(f"{where}: unknown resource type '{entry.resource_type}' in request.url",
                       expression=[f"{where}.request.url"])
    if query:
        entry.criteria = query
    elif len(parts) >= 2:
        entry.resource_id = parts[1]
    if entry.method in ("PUT", "DELETE", "PATCH") and entry.resource_id is None and entry.criteria is None:
        raise BadRequest(f"{where}: {entry.method} needs Type/id or Type?criteria in request.url",
                         expression=[f"{where}.request.url"])


def _check_overlaps(entries: list[_Entry]) -> None:
    """A transaction may not touch one resource from two entries (spec: identities must not overlap)."""
    seen: dict[tuple[str, str], int] = {}
    for entry in entries:
        if entry.method in ("GET", "HEAD") or entry.resource_id is None:
            continue
        key = (entry.resource_type, entry.resource_id)
        if key in seen:
            raise BadRequest(f"Bundle.entry[{seen[key]}] and Bundle.entry[{entry.index}] both change "
                             f"{key[0]}/{key[1]}; a transaction's entries must name different resources")
        seen[key] = entry.index


def _rewrite_references(value: Any, mapping: dict[str, str]) -> Any:
    """Replace references to fullUrls (urn:uuid:..., absolute URLs) with the Type/id they became."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and item in mapping:
                out[key] = mapping[item]
            else:
                out[key] = _rewrite_references(item, mapping)
        return out
    if isinstance(value, list):
        return [_rewrite_references(v, mapping) for v in value]
    return value


def _conditional_references(value: Any, found: set[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and "?" in item and "://" not in item:
                found.add(item)
            else:
                _conditional_references(item, found)
    elif isinstance(value, list):
        for v in value:
            _conditional_references(v, found)


class BundleProcessor:
    def __init__(self, service, base_url: str, prefer_return: str | None):
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.prefer_return = prefer_return

    async def process(self, bundle: dict[str, Any]) -> dict[str, Any]:
        if bundle.get("resourceType") != "Bundle":
            raise BadRequest("POST to the base URL takes a Bundle", expression=["resourceType"])
        kind = bundle.get("type")
        if kind not in ("transaction", "batch"):
            raise BadRequest(f"Bundle.type must be transaction or batch, not {kind!r}", expression=["Bundle.type"])
        entries = _parse_entries(bundle, self.base_url, self.service.settings.max_bundle_entries, kind == "batch")
        if kind == "transaction":
            await self._transaction(entries)
        else:
            await self._batch(entries)
        return {"resourceType": "Bundle", "id": str(uuid.uuid4()),
                "meta": {"lastUpdated": format_instant(datetime.now(UTC))}, "type": f"{kind}-response",
                **({"entry": [e.response for e in entries]} if entries else {})}

    # ---- transaction ----

    async def _transaction(self, entries: list[_Entry]) -> None:
        async with self.service.transaction() as tx:
            for entry in entries:  # DELETEs first: later conditional matches must not see what they remove
                if entry.method == "DELETE":
                    await self._entry(tx, entry)
            mapping = await self._assign_ids(tx, entries)
            _check_overlaps(entries)
            references: set[str] = set()
            for entry in entries:
                if entry.resource is not None:
                    _conditional_references(entry.resource, references)
            for reference in references:
                mapping[reference] = await self._resolve_conditional_reference(tx, reference)
            for entry in entries:
                if entry.resource is not None and mapping:
                    entry.resource = _rewrite_references(entry.resource, mapping)
            await self._bulk_posts(tx, [e for e in entries if e.method == "POST" and not e.response])
            for entry in sorted(entries, key=lambda e: _ORDER[e.method]):
                if entry.method not in ("DELETE", "POST"):
                    await self._entry(tx, entry)

    async def _entry(self, tx: StoreTransaction, entry: _Entry) -> None:
        try:
            await self._execute(tx, entry)
        except FhirError as exc:
            exc.issues[0].diagnostics = f"Bundle.entry[{entry.index}] ({entry.method} {entry.url}): " \
                                        f"{exc.issues[0].diagnostics}"
            raise

    async def _assign_ids(self, tx: StoreTransaction, entries: list[_Entry]) -> dict[str, str]:
        """fullUrl -> Type/id for every entry that creates or names a resource."""
        mapping: dict[str, str] = {}
        for entry in entries:
            if entry.method == "POST":
                if entry.if_none_exist:
                    matches = await self.service.match(tx, entry.resource_type, entry.if_none_exist, lock=True)
                    if len(matches) > 1:
                        raise PreconditionFailed(f"Bundle.entry[{entry.index}]: ifNoneExist matches "
                                                 f"{len(matches)} resources")
                    if matches:
                        entry.resource_id = matches[0].id
                        entry.response = self._response(matches[0], 200)
                entry.resource_id = entry.resource_id or str(uuid.uuid4())
            elif entry.method in ("PUT", "PATCH") and entry.criteria:
                matches = await self.service.match(tx, entry.resource_type, entry.criteria, lock=True)
                if len(matches) > 1:
                    raise PreconditionFailed(f"Bundle.entry[{entry.index}]: conditional {entry.method} matches "
                                             f"{len(matches)} resources")
                if matches:
                    entry.resource_id = matches[0].id
                elif entry.method == "PUT":
                    entry.resource_id = (entry.resource or {}).get("id") or str(uuid.uuid4())
                else:
                    raise NotFound(f"Bundle.entry[{entry.index}]: conditional PATCH matches nothing")
            if entry.full_url and entry.resource_id and entry.method in ("POST", "PUT"):
                mapping[entry.full_url] = f"{entry.resource_type}/{entry.resource_id}"
        return mapping

    async def _resolve_conditional_reference(self, tx: StoreTransaction, reference: str) -> str:
        resource_type = reference.split("?", 1)[0]
        if not is_resource_type(resource_type):
            raise BadRequest(f"Conditional reference '{reference}' names no resource type")
        matches = await self.service.match(tx, resource_type, reference)
        if len(matches) != 1:
            raise PreconditionFailed(f"Conditional reference '{reference}' matches {len(matches)} resources; "
                                     "it must match exactly one")
        return f"{resource_type}/{matches[0].id}"

    async def _bulk_posts(self, tx: StoreTransaction, posts: list[_Entry]) -> None:
        """Every plain POST of the transaction in one bulk write (the common case for loads)."""
        if not posts:
            return
        for entry in posts:
            entry.resource = {k: v for k, v in entry.resource.items() if k != "id"}
            if entry.resource.get("resourceType") != entry.resource_type:
                raise BadRequest(f"Bundle.entry[{entry.index}]: resourceType does not match request.url")
        try:
            versions = await self.service.create_many(
                [e.resource for e in posts], tx=tx, resource_ids=[e.resource_id for e in posts])
        except FhirError as exc:
            failed = getattr(exc, "item_index", None)
            if failed is not None:
                exc.issues[0].diagnostics = f"Bundle.entry[{posts[failed].index}] (POST {posts[failed].url}): " \
                                            f"{exc.issues[0].diagnostics}"
                where = f"Bundle.entry[{posts[failed].index}].resource"
                own = posts[failed].resource_type  # Patient.identifier[0] -> Bundle.entry[n].resource.identifier[0]
                exc.issues[0].expression = [where + e[len(own):] for e in exc.issues[0].expression
                                            if e == own or e.startswith(f"{own}.")] or [where]
            raise
        for entry, version in zip(posts, versions, strict=True):
            entry.response = self._response(version, 201)

    # ---- batch ----

    async def _batch(self, entries: list[_Entry]) -> None:
        for entry in entries:
            if entry.error is not None:
                entry.response = {"response": {"status": _status(entry.error.status),
                                               "outcome": entry.error.outcome()}}
                continue
            try:
                async with self.service.transaction() as tx:
                    if entry.method == "POST":
                        result = await self.service.create(entry.resource_type, entry.resource, tx=tx,
                                                           if_none_exist=entry.if_none_exist)
                        entry.response = self._response(result.version, 201 if result.created else 200)
                    else:
                        if entry.criteria and entry.method in ("PUT", "PATCH"):
                            await self._assign_ids(tx, [entry])
                        await self._execute(tx, entry)
            except FhirError as exc:
                entry.response = {"response": {"status": _status(exc.status), "outcome": exc.outcome()}}

    # ---- one entry ----

    async def _execute(self, tx: StoreTransaction, entry: _Entry) -> None:
        service = self.service
        if entry.method == "DELETE":
            if entry.criteria:
                deleted = await service.conditional_delete(entry.resource_type, entry.criteria, tx=tx)
                entry.response = {"response": {"status": _status(204 if deleted else 200)}}
            else:
                version = await service.delete(entry.resource_type, entry.resource_id, if_match=entry.if_match,
                                               tx=tx)
                entry.response = {"response": {"status": _status(204)}}
                if version is not None:
                    entry.response["response"]["etag"] = version.etag
        elif entry.method == "PUT":
            resource = entry.resource
            if entry.criteria and "id" not in resource:
                resource = {**resource, "id": entry.resource_id}
            result = await service.update(entry.resource_type, entry.resource_id, resource,
                                          if_match=entry.if_match, tx=tx)
            entry.response = self._response(result.version, 201 if result.created else 200)
        elif entry.method == "PATCH":
            content_type, patch = "application/fhir+json", entry.resource
            if entry.resource.get("resourceType") == "Binary":  # JSON Patch travels as a Binary
                if entry.resource.get("contentType") != JSON_PATCH:
                    raise BadRequest(f"Bundle.entry[{entry.index}]: a Binary patch must be {JSON_PATCH}")
                try:
                    content_type, patch = JSON_PATCH, orjson.loads(base64.b64decode(entry.resource.get("data", "")))
                except (ValueError, orjson.JSONDecodeError) as exc:
                    raise BadRequest(f"Bundle.entry[{entry.index}]: the Binary does not hold a JSON Patch") from exc
            result = await service.patch(entry.resource_type, entry.resource_id, content_type, patch,
                                         if_match=entry.if_match, tx=tx)
            entry.response = self._response(result.version, 200)
        else:  # GET / HEAD
            await self._read(tx, entry)

    async def _read(self, tx: StoreTransaction, entry: _Entry) -> None:
        path = entry.url.split("?", 1)[0].split("/")
        if entry.criteria is not None or len(path) == 1:
            query, page = await self.service.search((entry.resource_type,), parse_qsl(entry.criteria or ""),
                                                    base_url=self.base_url, strict=False, tx=tx)
            resource = build_searchset(self.base_url, entry.resource_type, query, page)
            entry.response = {"resource": resource, "response": {"status": _status(200)}}
            return
        if len(path) == 4 and path[2] == "_history":
            version = await self.service.vread(path[0], path[1], path[3])
        elif len(path) == 2:
            version = await self.service.read(path[0], path[1], tx=tx)
        else:
            raise BadRequest(f"GET {entry.url} is not supported inside a Bundle")
        entry.response = self._response(version, 200, always_resource=True)

    def _response(self, version: ResourceVersion, status: int, always_resource: bool = False) -> dict[str, Any]:
        response: dict[str, Any] = {
            "status": _status(status), "etag": version.etag,
            "lastModified": format_instant(version.last_updated)}
        if status == 201:
            response["location"] = f"{version.resource_type}/{version.id}/_history/{version.version_id}"
        out: dict[str, Any] = {"fullUrl": f"{self.base_url}/{version.resource_type}/{version.id}"}
        if always_resource or self.prefer_return in (None, "representation"):
            out["resource"] = orjson.Fragment(version.content)
        elif self.prefer_return == "OperationOutcome":
            response["outcome"] = operation_outcome([Issue("informational", f"{_status(status)}", "information")])
        out["response"] = response
        return out
