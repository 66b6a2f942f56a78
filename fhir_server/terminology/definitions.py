"""Finding CodeSystems, ValueSets, ConceptMaps and StructureDefinitions by canonical URL (and
version) in the store: the shipped ones and those users POST are found the same way."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from ..auth.grant import system_access
from .codesystem import CodeSystemIndex

if TYPE_CHECKING:
    from ..service import ResourceService
    from ..store import StoreTransaction

_COMPILED_MAX = 256


def split_canonical(canonical: str) -> tuple[str, str | None]:
    """'url|version' -> (url, version)."""
    url, _, version = canonical.partition("|")
    return url, version or None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("$", "\\$").replace("|", "\\|")


class Definitions:
    def __init__(self, service: ResourceService, compiled: dict[tuple[str, str, str], Any] | None = None,
                 memo: dict[tuple[str, str, str | None], dict[str, Any] | None] | None = None):
        self.service = service
        self._compiled = {} if compiled is None else compiled  # (type, id, versionId) -> compiled form
        self._memo = memo  # canonical look-ups of one request: a value set's includes often name one system

    def scoped(self) -> Definitions:
        """A view for one request: each canonical is looked up once; compiled forms are shared."""
        return Definitions(self.service, self._compiled, {})

    async def find(self, resource_type: str, canonical: str, version: str | None = None, *,
                   tx: StoreTransaction | None = None) -> dict[str, Any] | None:
        """The resource with this canonical URL (and version, if given or in 'url|version'); without a
        version, the most recently written one. None when the server holds none."""
        url, in_url = split_canonical(canonical)
        version = version or in_url
        if not url:
            return None
        key = (resource_type, url, version)
        if self._memo is not None and tx is None and key in self._memo:
            return self._memo[key]
        params = [("url", _escape(url)), ("_sort", "-_lastUpdated"), ("_count", "1")]
        if version:
            params.append(("version", _escape(version)))
        with system_access():  # resolving a canonical for the server's own use (:in, bindings, profiles)
            _, page = await self.service.search((resource_type,), params, base_url="", strict=True, tx=tx)
        found = orjson.loads(page.matches[0].content) if page.matches else None
        if self._memo is not None and tx is None:
            self._memo[key] = found
        return found

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """By id; NotFound (404) or Gone (410) when there is none."""
        return orjson.loads((await self.service.read(resource_type, resource_id)).content)

    def compiled(self, resource: dict[str, Any], build):
        """build(resource), kept while the resource's version is current (stored resources only)."""
        version = (resource.get("meta") or {}).get("versionId")
        if not resource.get("id") or version is None:
            return build(resource)
        key = (resource["resourceType"], resource["id"], version)
        found = self._compiled.get(key)
        if found is None:
            if len(self._compiled) >= _COMPILED_MAX:
                self._compiled.pop(next(iter(self._compiled)))
            found = self._compiled[key] = build(resource)
        return found

    async def code_system(self, system: str, version: str | None = None) -> CodeSystemIndex | None:
        resource = await self.find("CodeSystem", system, version)
        return self.compiled(resource, CodeSystemIndex) if resource is not None else None
