"""The terminology service: CodeSystems, ValueSets, ConceptMaps and StructureDefinitions held in the
store (those shipped in terminology/ and those users write), and what is computed from them: the
terminology operations, the terminology search modifiers and profile validation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..model.outcome import Issue
from .definitions import Definitions
from .profiles import check_profile
from .search import resolve_search
from .valueset import ValueSets

if TYPE_CHECKING:
    from ..search.query import SearchQuery
    from ..service import ResourceService


class Terminology:
    def __init__(self, service: ResourceService, max_expansion: int = 10000, definitions: Definitions | None = None):
        self.service = service
        self.max_expansion = max_expansion
        self.definitions = definitions or Definitions(service)
        self.valuesets = ValueSets(self.definitions, max_expansion)

    def scoped(self) -> Terminology:
        """The service for one request (see Definitions.scoped)."""
        return Terminology(self.service, self.max_expansion, self.definitions.scoped())

    async def resolve_search(self, query: SearchQuery, strict: bool) -> None:
        await resolve_search(self, query, strict)

    async def profile_issues(self, resource: dict[str, Any], profiles: list[str], *,
                             declared_only: bool = False) -> list[Issue]:
        """Issues of the resource against each profile (canonical URLs). An unknown profile is an error
        when it was asked for, and a warning when the resource only declares it in meta.profile."""
        issues: list[Issue] = []
        for position, canonical in enumerate(profiles):
            definition = await self.definitions.find("StructureDefinition", canonical)
            if definition is None:
                where = f"{resource.get('resourceType')}.meta.profile[{position}]" if declared_only else "profile"
                issues.append(Issue("not-found", f"Profile {canonical} is not known to this server, so the resource "
                                    "was not checked against it", "warning" if declared_only else "error", [where]))
                continue
            issues += await check_profile(self, definition, resource)
        return issues


__all__ = ["Terminology"]
