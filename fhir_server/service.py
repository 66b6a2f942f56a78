"""The one write/read path for resources: type checks, validation, ids, compartment keys, then the
store. The REST layer, the DICOM bridge and ECG triage all go through here."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from .model.compartment import patient_key
from .model.outcome import BadRequest, Gone, NotFound
from .model.types import is_resource_type, is_valid_id
from .model.validate import validate_resource
from .search.custom import CustomParameters, check_definition, is_active
from .search.extract import extract
from .search.query import SearchQuery, compartment_clause, parse_search
from .search.registry import Registry
from .store import HistoryPage, ResourceStore, ResourceVersion, WriteResult


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
    def __init__(self, store: ResourceStore):
        self.store = store
        self.custom = CustomParameters(store)

    @property
    def registry(self) -> Registry:
        """Search parameters in force: the R4 core ones plus active SearchParameter resources."""
        return self.custom.registry

    async def start(self) -> None:
        await self.custom.load()

    async def create(self, resource_type: str, resource: dict[str, Any]) -> ResourceVersion:
        check_type(resource_type)
        check_body_type(resource_type, resource)
        resource = {k: v for k, v in resource.items() if k != "id"}  # spec: the server ignores a client id
        validate_resource(resource, resource_type)
        self._check_business_rules(resource_type, resource)
        resource_id = str(uuid.uuid4())
        version = await self.store.create(resource_type, resource_id, resource,
                                          patient_key(resource_type, resource_id, resource),
                                          extract(resource_type, resource, self.registry))
        await self._after_write(resource_type, resource)
        return version

    async def create_many(self, resources: list[dict[str, Any]]) -> list[ResourceVersion]:
        """Validate and create many resources in one transaction (bulk load); all or nothing."""
        items = []
        for resource in resources:
            resource_type = resource.get("resourceType", "")
            check_type(resource_type)
            resource = {k: v for k, v in resource.items() if k != "id"}
            validate_resource(resource, resource_type)
            self._check_business_rules(resource_type, resource)
            resource_id = str(uuid.uuid4())
            items.append((resource_type, resource_id, resource, patient_key(resource_type, resource_id, resource),
                          extract(resource_type, resource, self.registry)))
        async with self.store.transaction() as tx:
            versions = await tx.create_many(items)
        for resource_type in {item[0] for item in items} & {"SearchParameter"}:
            await self._after_write(resource_type, None)
        return versions

    def _check_business_rules(self, resource_type: str, resource: dict[str, Any]) -> None:
        if resource_type == "SearchParameter" and is_active(resource):
            check_definition(resource)

    async def _after_write(self, resource_type: str, resource: dict[str, Any] | None) -> None:
        if resource_type == "SearchParameter":
            await self.custom.changed(resource)

    async def update(self, resource_type: str, resource_id: str, resource: dict[str, Any], *,
                     if_match: int | None = None) -> WriteResult:
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
        validate_resource(resource, resource_type)
        self._check_business_rules(resource_type, resource)
        result = await self.store.update(resource_type, resource_id, resource, if_match=if_match,
                                         patient_key=patient_key(resource_type, resource_id, resource),
                                         index=extract(resource_type, resource, self.registry))
        await self._after_write(resource_type, resource)
        return result

    async def read(self, resource_type: str, resource_id: str) -> ResourceVersion:
        check_type(resource_type)
        check_id(resource_id)
        current = await self.store.read(resource_type, resource_id)
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
        found = await self.store.vread(resource_type, resource_id, int(version))
        if found is None:
            raise NotFound(f"Version {version} of {resource_type}/{resource_id} is not known")
        if found.deleted:
            raise Gone(f"Version {version} of {resource_type}/{resource_id} is a deletion",
                       version_id=found.version_id, last_updated=found.last_updated_instant)
        return found

    async def delete(self, resource_type: str, resource_id: str, *,
                     if_match: int | None = None) -> ResourceVersion | None:
        check_type(resource_type)
        check_id(resource_id)
        version = await self.store.delete(resource_type, resource_id, if_match=if_match)
        if version is not None:
            await self._after_write(resource_type, None)
        return version

    async def history(self, resource_type: str | None = None, resource_id: str | None = None, *,
                      since: datetime | None = None, count: int, cursor: int | None = None) -> HistoryPage:
        if resource_type is not None:
            check_type(resource_type)
        if resource_id is not None:
            check_id(resource_id)
            if await self.store.read(resource_type, resource_id) is None:
                raise NotFound(f"Resource {resource_type}/{resource_id} is not known")
        return await self.store.history(resource_type, resource_id, since=since, count=count, cursor=cursor)

    async def search(self, resource_types: tuple[str, ...], params: list[tuple[str, str]], *, base_url: str,
                     strict: bool, default_count: int, max_count: int,
                     compartment: tuple[str, str] | None = None) -> tuple[SearchQuery, Any]:
        """Parse and run a search; returns the parsed query (links, warnings) and the page."""
        for resource_type in resource_types:
            check_type(resource_type)
        await self.custom.refresh_if_changed()
        query = parse_search(self.registry, resource_types, params, base_url=base_url, strict=strict,
                             default_count=default_count, max_count=max_count)
        extra = []
        if compartment is not None:
            compartment_type, compartment_id = compartment
            if compartment_type != "Patient":
                raise NotFound(f"Compartment {compartment_type} is not supported (only Patient)")
            check_id(compartment_id)
            extra.append(compartment_clause(self.registry, query.resource_types[0], compartment_id))
        return query, await self.store.search(query, extra)
