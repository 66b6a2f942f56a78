"""The one write/read path for resources: type checks, validation, ids, compartment keys, search
indexing, conditional interactions and PATCH, then the store. The REST layer, bundles, the loader,
the DICOM bridge and ECG triage all go through here, inside a transaction of their own or the
caller's (a transaction Bundle)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson

from .auth.access import current_access
from .auth.grant import system_access
from .model.compartment import patient_key
from .model.outcome import (
    BadRequest,
    Conflict,
    FhirError,
    Forbidden,
    Gone,
    NotFound,
    PreconditionFailed,
    Unprocessable,
)
from .model.types import RESOURCE_TYPES, is_resource_type, is_valid_id
from .model.validate import InvalidResource, validate_resource
from .ops.patch import apply_patch
from .search.custom import CustomParameters, check_definition, is_active
from .search.extract import extract
from .search.query import SearchQuery, compartment_clause, parse_search
from .search.registry import Registry
from .settings import Settings
from .store import HistoryPage, ResourceStore, ResourceVersion, StoreTransaction, WriteResult
from .subscriptions import rules as subscription_rules
from .terminology import Terminology
from .terminology.loading import load_definitions, terminology_dir
from .workflow import WriteRule, default_rules, rules_by_type

# Types whose writes need the transaction path: their hooks read or write more than the resource.
_HOOKED_TYPES = ("SearchParameter", "Subscription")


def check_type(resource_type: str) -> None:
    if not is_resource_type(resource_type):
        raise NotFound(f"Unknown resource type '{resource_type}'", code="not-supported")


def check_id(resource_id: str) -> None:
    if not is_valid_id(resource_id):
        raise BadRequest(f"Invalid resource id '{resource_id[:80]}': 1-64 of A-Z a-z 0-9 - .")


def check_body_type(resource_type: str, resource: dict[str, Any]) -> None:
    body_type = resource.get("resourceType")
    if body_type is None:
        raise BadRequest("The resource has no resourceType", expression=["resourceType"])
    if body_type != resource_type:
        raise BadRequest(f"resourceType '{body_type}' in the body does not match '{resource_type}' in the URL",
                         expression=["resourceType"])


class ResourceService:
    def __init__(self, store: ResourceStore, settings: Settings | None = None):
        self.store = store
        self.settings = settings or Settings()
        self.custom = CustomParameters(store)
        self.rules = rules_by_type(default_rules())
        self.terminology = Terminology(self, self.settings.terminology_max_expansion)
        # Called with the resource type after each committed write (the subscription dispatcher's wake-up).
        self.on_write: Callable[[str], None] | None = None

    @property
    def registry(self) -> Registry:
        """Search parameters in force: the R4 core ones plus active SearchParameter resources."""
        return self.custom.registry

    async def start(self) -> None:
        await self.custom.load()
        if self.settings.terminology_load:
            await load_definitions(self, terminology_dir(self.settings))

    # ---- transactions ----

    @asynccontextmanager
    async def transaction(self, tx: StoreTransaction | None = None) -> AsyncIterator[StoreTransaction]:
        """The caller's transaction, or a new one; registry changes apply once it commits."""
        if tx is not None:
            yield tx
            return
        async with self.store.transaction() as new:
            new.changed_parameters = []  # SearchParameter writes, handled after commit
            new.written_types = set()
            yield new
        for definition in new.changed_parameters:
            await self.custom.changed(definition)
        if self.on_write is not None:
            for resource_type in new.written_types:
                self.on_write(resource_type)

    async def _after_write(self, tx: StoreTransaction, resource_type: str, resource_id: str,
                           resource: dict[str, Any] | None) -> None:
        if resource_type == "SearchParameter":
            tx.changed_parameters.append(resource)
        elif resource_type == "Subscription":
            await tx.track_subscription(resource_id, subscription_rules.watched_type(resource))
        tx.written_types.add(resource_type)

    # ---- workflow rules (fhir_server/workflow) ----

    def _fill(self, resource_type: str, resource: dict[str, Any]) -> dict[str, Any]:
        for rule in self.rules.get(resource_type, ()):
            resource = rule.fill(resource_type, resource)
        return resource

    def _checked(self, resource_type: str) -> list[WriteRule]:
        return [rule for rule in self.rules.get(resource_type, ()) if rule.checks]

    async def _previous(self, tx: StoreTransaction, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The live version a write replaces, for rules that compare with it (locked: no concurrent write
        of the same resource can slip in between this read and the write)."""
        if not any(rule.needs_previous for rule in self._checked(resource_type)):
            return None
        await tx.lock(f"{resource_type}/{resource_id}")
        current = await tx.read(resource_type, resource_id)
        return orjson.loads(current.content) if current is not None and not current.deleted else None

    async def _check(self, tx: StoreTransaction, resource_type: str, resource_id: str,
                     resource: dict[str, Any] | None, previous: dict[str, Any] | None) -> None:
        with system_access():  # the server's own rules see the whole store, whatever the caller's scopes
            for rule in self._checked(resource_type):
                await rule.check(self, tx, resource_type, resource_id, resource, previous)

    def _prepare(self, resource_type: str, resource_id: str, resource: dict[str, Any], *, client: bool = True):
        """Validate and index a resource to be written. A client's Subscription is checked and gets the
        status the server gives it (in place); the server's own status writes pass client=False (the
        server may have to record that criteria which were valid no longer are)."""
        subscription = resource_type == "Subscription" and client
        if subscription:
            subscription_rules.client_status(resource)
        validate_resource(resource, resource_type)
        if resource_type == "SearchParameter" and is_active(resource):
            check_definition(resource)
        elif subscription:
            subscription_rules.check(resource, self.registry)
        return patient_key(resource_type, resource_id, resource), extract(resource_type, resource, self.registry)

    async def _conform(self, resource_type: str, resource: dict[str, Any]) -> None:
        """A resource that claims known profiles in meta.profile must conform to them (422 otherwise)."""
        profiles = (resource.get("meta") or {}).get("profile")
        if not profiles or not isinstance(profiles, list):
            return
        issues = [i for i in await self.terminology.scoped().profile_issues(resource, profiles, declared_only=True)
                  if i.severity == "error"]
        if issues:
            summary = "; ".join(i.diagnostics for i in issues[:3])
            raise Unprocessable(f"The {resource_type} does not conform to its profile: {summary}", issues=issues)

    # ---- writes ----

    async def create(self, resource_type: str, resource: dict[str, Any], *, if_none_exist: str | None = None,
                     tx: StoreTransaction | None = None, resource_id: str | None = None) -> WriteResult:
        """Create with a server-assigned id (or resource_id, for bundles that pre-assign one).
        If-None-Exist: an existing match is returned instead (created=False); several matches are 412."""
        check_type(resource_type)
        check_body_type(resource_type, resource)
        # spec: the server ignores a client id
        resource = self._fill(resource_type, {k: v for k, v in resource.items() if k != "id"})
        resource_id = resource_id or str(uuid.uuid4())
        access = current_access()
        found = access.require(resource_type, "c") if access else None
        key, index = self._prepare(resource_type, resource_id, resource)
        await self._conform(resource_type, resource)
        if tx is None and if_none_exist is None and resource_type not in _HOOKED_TYPES and found is None \
                and not self._checked(resource_type):
            # nothing to match or to reload: a single write the store may do in one statement
            version = await self.store.create(resource_type, resource_id, resource, key, index)
            if self.on_write is not None:
                self.on_write(resource_type)
            return WriteResult(version, True)
        async with self.transaction(tx) as t:
            if if_none_exist is not None:
                matches = await self.match(t, resource_type, if_none_exist, lock=True)
                if len(matches) > 1:
                    raise PreconditionFailed(f"If-None-Exist '{if_none_exist}' matches {len(matches)} resources")
                if matches:
                    return WriteResult(matches[0], False)
            version = await t.create(resource_type, resource_id, resource, key, index)
            if found is not None:  # the new resource must be one the token may create (compartment, restriction)
                await access.check(self, resource_type, resource_id, "c", t, found)
            await self._check(t, resource_type, resource_id, resource, None)
            await self._after_write(t, resource_type, resource_id, resource)
        return WriteResult(version, True)

    async def create_many(self, resources: list[dict[str, Any]], *, tx: StoreTransaction | None = None,
                          resource_ids: list[str] | None = None) -> list[ResourceVersion]:
        """Validate and create many resources in one transaction (bulk load); all or nothing.
        A failure carries `item_index`, the position of the resource that failed."""
        items = []
        for position, resource in enumerate(resources):
            try:
                resource_type = resource.get("resourceType", "")
                check_type(resource_type)
                resource = self._fill(resource_type, {k: v for k, v in resource.items() if k != "id"})
                resource_id = resource_ids[position] if resource_ids else str(uuid.uuid4())
                key, index = self._prepare(resource_type, resource_id, resource)
                await self._conform(resource_type, resource)
            except FhirError as exc:
                exc.item_index = position
                raise
            items.append((resource_type, resource_id, resource, key, index))
        access = current_access()
        async with self.transaction(tx) as t:
            versions = await t.create_many(items)
            if access is not None:
                await self._check_created(access, t, items)
            for position, (resource_type, resource_id, resource, _, _) in enumerate(items):
                try:  # after the whole batch is written, so that its members see each other
                    await self._check(t, resource_type, resource_id, resource, None)
                except FhirError as exc:
                    exc.item_index = position
                    raise
                await self._after_write(t, resource_type, resource_id, resource)
        return versions

    async def _check_created(self, access, tx: StoreTransaction, items: list[tuple]) -> None:
        by_type: dict[str, list[str]] = {}
        for item in items:
            by_type.setdefault(item[0], []).append(item[1])
        for resource_type, ids in by_type.items():
            await access.check_many(self, resource_type, ids, "c", tx, access.require(resource_type, "c"))

    async def upsert_many(self, resources: list[dict[str, Any]]) -> tuple[int, list[tuple[int, FhirError]]]:
        """Bulk load: resources keep their ids (new ones get one). Invalid resources are returned with
        their errors and skipped; the rest are written in one transaction. Returns (written, errors)."""
        items, errors = [], []
        access = current_access()
        for position, resource in enumerate(resources):
            try:
                resource_type = resource.get("resourceType", "")
                check_type(resource_type)
                if access is not None:  # a bulk load writes whole types: only unrestricted scopes may
                    access.unrestricted(resource_type, "c")
                    access.unrestricted(resource_type, "u")
                resource_id = resource.get("id") or str(uuid.uuid4())
                check_id(resource_id)
                body = self._fill(resource_type, {k: v for k, v in resource.items() if k != "id"})
                key, index = self._prepare(resource_type, resource_id, body)
                await self._conform(resource_type, body)
                items.append((resource_type, resource_id, body, key, index))
            except FhirError as exc:
                errors.append((position, exc))
        if not items:
            return 0, errors
        try:
            async with self.transaction() as tx:
                await tx.create_many(items)
                for item in items:
                    await self._after_write(tx, item[0], item[1], item[2])
        except Conflict:  # some already exist: write version by version instead
            async with self.transaction() as tx:
                for resource_type, resource_id, body, key, index in items:
                    await tx.update(resource_type, resource_id, body, patient_key=key, index=index)
                    await self._after_write(tx, resource_type, resource_id, body)
        return len(items), errors

    async def update(self, resource_type: str, resource_id: str, resource: dict[str, Any], *,
                     if_match: int | None = None, tx: StoreTransaction | None = None) -> WriteResult:
        check_type(resource_type)
        check_id(resource_id)
        check_body_type(resource_type, resource)
        body_id = resource.get("id")
        if body_id is None:
            raise BadRequest("The resource has no id; an update must carry the id of the URL",
                             expression=[f"{resource_type}.id"])
        if body_id != resource_id:
            raise BadRequest(f"id '{body_id}' in the body does not match '{resource_id}' in the URL",
                             expression=[f"{resource_type}.id"])
        access = current_access()
        found = access.require(resource_type, "u") if access else None
        resource = self._fill(resource_type, resource)
        key, index = self._prepare(resource_type, resource_id, resource)
        await self._conform(resource_type, resource)
        async with self.transaction(tx) as t:
            if access is not None:
                current = await t.read(resource_type, resource_id)
                if current is None or current.deleted:
                    access.require(resource_type, "c")  # update as create
                elif found is not None:  # may the token touch what is there now?
                    await access.check(self, resource_type, resource_id, "u", t, found)
            previous = await self._previous(t, resource_type, resource_id)
            result = await t.update(resource_type, resource_id, resource, if_match=if_match, patient_key=key,
                                    index=index)
            if found is not None:  # ... and is what it wrote still its own?
                await access.check(self, resource_type, resource_id, "u", t, found)
            await self._check(t, resource_type, resource_id, resource, previous)
            await self._after_write(t, resource_type, resource_id, resource)
        return result

    async def set_subscription_status(self, subscription_id: str, version_id: int, status: str,
                                      error: str | None = None) -> WriteResult:
        """The server's own status write (active once checked, error, off once ended), as a new version
        of the version it judged: PreconditionFailed if a client has written it since."""
        async with self.transaction() as t:
            current = await self.read("Subscription", subscription_id, tx=t)
            resource = orjson.loads(current.content)
            resource["status"] = status
            if error:
                resource["error"] = error[:1000]
            else:
                resource.pop("error", None)
            key, index = self._prepare("Subscription", subscription_id, resource, client=False)
            result = await t.update("Subscription", subscription_id, resource, if_match=version_id, patient_key=key,
                                    index=index)
            await self._after_write(t, "Subscription", subscription_id, resource)
        return result

    async def conditional_update(self, resource_type: str, criteria: str, resource: dict[str, Any], *,
                                 if_match: int | None = None, tx: StoreTransaction | None = None) -> WriteResult:
        """PUT [type]?criteria: no match creates, one match updates it, several are 412."""
        check_type(resource_type)
        async with self.transaction(tx) as t:
            matches = await self.match(t, resource_type, criteria, lock=True)
            if len(matches) > 1:
                raise PreconditionFailed(f"Conditional update '{criteria}' matches {len(matches)} resources")
            if matches:
                body_id = resource.get("id")
                if body_id is not None and body_id != matches[0].id:
                    raise BadRequest(f"id '{body_id}' in the body is not the matched resource {matches[0].id}",
                                     expression=[f"{resource_type}.id"])
                return await self.update(resource_type, matches[0].id, {**resource, "id": matches[0].id},
                                         if_match=if_match, tx=t)
            if resource.get("id"):
                return await self.update(resource_type, resource["id"], resource, if_match=if_match, tx=t)
            return await self.create(resource_type, resource, tx=t)

    async def delete(self, resource_type: str, resource_id: str, *, if_match: int | None = None,
                     tx: StoreTransaction | None = None) -> ResourceVersion | None:
        check_type(resource_type)
        check_id(resource_id)
        access = current_access()
        found = access.require(resource_type, "d") if access else None
        async with self.transaction(tx) as t:
            if found is not None:
                current = await t.read(resource_type, resource_id)
                if current is not None and not current.deleted:
                    await access.check(self, resource_type, resource_id, "d", t, found)
            previous = await self._previous(t, resource_type, resource_id)
            version = await t.delete(resource_type, resource_id, if_match=if_match)
            if version is not None:
                await self._check(t, resource_type, resource_id, None, previous)
                await self._after_write(t, resource_type, resource_id, None)
        return version

    async def conditional_delete(self, resource_type: str, criteria: str, *,
                                 tx: StoreTransaction | None = None) -> list[ResourceVersion]:
        """DELETE [type]?criteria: deletes every match, up to FHIR_CONDITIONAL_DELETE_MAX (else 412)."""
        check_type(resource_type)
        limit = self.settings.conditional_delete_max
        async with self.transaction(tx) as t:
            matches = await self.match(t, resource_type, criteria, lock=True, limit=limit + 1)
            if len(matches) > limit:
                raise PreconditionFailed(f"Conditional delete '{criteria}' matches more than {limit} resources "
                                         "(FHIR_CONDITIONAL_DELETE_MAX)")
            deleted = []
            for match in matches:
                version = await self.delete(resource_type, match.id, tx=t)
                if version is not None:
                    deleted.append(version)
        return deleted

    async def patch(self, resource_type: str, resource_id: str, content_type: str, patch: Any, *,
                    if_match: int | None = None, tx: StoreTransaction | None = None) -> WriteResult:
        """Apply a JSON Patch or FHIRPath Patch to the current version; an invalid result is 422."""
        async with self.transaction(tx) as t:
            current = await self._current(resource_type, resource_id, tx=t)
            if if_match is not None and if_match != current.version_id:
                raise PreconditionFailed(f"Version conflict: If-Match is {if_match} but {resource_type}/"
                                         f"{resource_id} is at version {current.version_id}")
            patched = apply_patch(orjson.loads(current.content), content_type, patch)
            try:
                validate_resource(patched, resource_type)
            except InvalidResource as exc:
                raise Unprocessable(f"The patched resource is not valid: {exc}", issues=exc.issues) from exc
            return await self.update(resource_type, resource_id, patched, if_match=current.version_id, tx=t)

    async def conditional_patch(self, resource_type: str, criteria: str, content_type: str, patch: Any, *,
                                if_match: int | None = None, tx: StoreTransaction | None = None) -> WriteResult:
        check_type(resource_type)
        async with self.transaction(tx) as t:
            matches = await self.match(t, resource_type, criteria)
            if len(matches) != 1:
                raise (PreconditionFailed if matches else NotFound)(
                    f"Conditional patch '{criteria}' matches {len(matches)} resources; it needs exactly one")
            return await self.patch(resource_type, matches[0].id, content_type, patch, if_match=if_match, tx=t)

    async def match(self, tx: StoreTransaction, resource_type: str, criteria: str, *, lock: bool = False,
                    limit: int = 2) -> list[ResourceVersion]:
        """Resources matching conditional criteria (a search query string), seen inside the transaction."""
        criteria = criteria.split("?", 1)[1] if "?" in criteria else criteria
        params = parse_qsl(criteria, keep_blank_values=True)
        if not params:
            raise BadRequest("Conditional criteria must have at least one search parameter")
        if lock:  # two conditional writes with the same criteria must not both see "no match"
            await tx.lock(f"{resource_type}?{sorted(params)}")
        query = parse_search(self.registry, (resource_type,), params, base_url=self.settings.base_url,
                             strict=True, default_count=limit, max_count=max(limit, 1))
        query.total = "none"
        query.count = limit
        await self.terminology.scoped().resolve_search(query, strict=True)
        access = current_access()
        extra = [] if access is None else [c for c in [access.search_clause(self.registry, query)] if c is not None]
        return (await tx.search(query, extra)).matches

    # ---- reads ----

    async def read(self, resource_type: str, resource_id: str, *,
                   tx: StoreTransaction | None = None) -> ResourceVersion:
        access = current_access()
        found = access.require(resource_type, "r") if access else None
        current = await self._current(resource_type, resource_id, tx=tx)
        if found is not None:
            await access.check(self, resource_type, resource_id, "r", tx, found)
        return current

    async def _current(self, resource_type: str, resource_id: str, *,
                       tx: StoreTransaction | None = None) -> ResourceVersion:
        """The current version, without access checks (the caller's own reads for a write)."""
        check_type(resource_type)
        check_id(resource_id)
        current = await (tx or self.store).read(resource_type, resource_id)
        if current is None:
            raise NotFound(f"Resource {resource_type}/{resource_id} is not known")
        if current.deleted:
            raise Gone(f"Resource {resource_type}/{resource_id} was deleted",
                       version_id=current.version_id, last_updated=current.last_updated_instant)
        return current

    async def vread(self, resource_type: str, resource_id: str, version: str) -> ResourceVersion:
        check_type(resource_type)
        check_id(resource_id)
        if not version.isdigit() or len(version) > 9:
            raise NotFound(f"Version '{version[:20]}' of {resource_type}/{resource_id} is not known")
        access = current_access()
        allowed = access.require(resource_type, "r") if access else None
        found = await self.store.vread(resource_type, resource_id, int(version))
        if found is None:
            raise NotFound(f"Version {version} of {resource_type}/{resource_id} is not known")
        if found.deleted:
            raise Gone(f"Version {version} of {resource_type}/{resource_id} is a deletion",
                       version_id=found.version_id, last_updated=found.last_updated_instant)
        if allowed is not None:  # the resource as it is now, and as it was then
            await access.check(self, resource_type, resource_id, "r", None, allowed)
            if not access.version_allowed(self.registry, resource_type, orjson.loads(found.content), allowed):
                raise Forbidden(f"Version {version} of {resource_type}/{resource_id} is outside what the access "
                                "token's scopes allow")
        return found

    async def history(self, resource_type: str | None = None, resource_id: str | None = None, *,
                      since: datetime | None = None, count: int, cursor: int | None = None) -> HistoryPage:
        if resource_type is not None:
            check_type(resource_type)
        if resource_id is not None:
            check_id(resource_id)
            if await self.store.read(resource_type, resource_id) is None:
                raise NotFound(f"Resource {resource_type}/{resource_id} is not known")
        access = current_access()
        if access is not None:
            allowed = await self._history_access(access, resource_type, resource_id)
        page = await self.store.history(resource_type, resource_id, since=since, count=count, cursor=cursor)
        if access is not None:
            kept = [e for e in page.entries if e.resource_type in allowed and access.version_allowed(
                self.registry, e.resource_type, orjson.loads(e.content) if e.content else None,
                allowed[e.resource_type])]
            if len(kept) != len(page.entries):  # the total counted what this token may not see
                page = HistoryPage(kept, page.next_cursor, None)
        return page

    async def _history_access(self, access, resource_type: str | None, resource_id: str | None) -> dict:
        """The alternatives per type a history may show. Instance history is a read ('r'), type and system
        history a search ('s'); a search restriction (v2 `?param=`) cannot be applied to old versions, so
        type and system history are refused to it."""
        if resource_id is not None:
            found = access.require(resource_type, "r")
            await access.check(self, resource_type, resource_id, "r", None, found)
            return {resource_type: found}
        allowed = {}
        for rt in [resource_type] if resource_type else sorted(RESOURCE_TYPES):
            found = access.require(rt, "s") if resource_type else access.filters(rt, "s")
            if found is None or (found and all(not f.params for f in found)):
                allowed[rt] = found
            elif resource_type:
                raise Forbidden(f"History of {rt} is not available to scopes restricted by search parameters")
        if not allowed:
            raise Forbidden("The access token's scopes allow no history")
        return allowed

    async def search(self, resource_types: tuple[str, ...], params: list[tuple[str, str]], *, base_url: str,
                     strict: bool, compartment: tuple[str, str] | None = None,
                     tx: StoreTransaction | None = None) -> tuple[SearchQuery, Any]:
        """Parse and run a search; returns the parsed query (links, warnings) and the page."""
        for resource_type in resource_types:
            check_type(resource_type)
        await self.custom.refresh_if_changed()
        query = parse_search(self.registry, resource_types, params, base_url=base_url, strict=strict,
                             default_count=self.settings.default_page_size, max_count=self.settings.max_page_size)
        await self.terminology.scoped().resolve_search(query, strict)
        extra = []
        if compartment is not None:
            compartment_type, compartment_id = compartment
            if compartment_type != "Patient":
                raise NotFound(f"Compartment {compartment_type} is not supported (only Patient)")
            check_id(compartment_id)
            extra.append(compartment_clause(self.registry, query.resource_types[0], compartment_id))
        access = current_access()
        if access is not None:
            clause = access.search_clause(self.registry, query)
            if clause is not None:
                extra.append(clause)
        page = await (tx or self.store).search(query, extra)
        if access is not None and page.included:  # _include/_revinclude: only what the token could read itself
            page.included = await access.filter_versions(self, page.included, "r", tx)
        return query, page
