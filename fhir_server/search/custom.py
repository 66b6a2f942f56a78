"""SearchParameter resources created at run time: checked, registered, and existing data re-indexed.

Every worker process keeps its own registry; each reloads the custom parameters from the store when
it sees that SearchParameter resources changed (checked at most every few seconds)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from ..model.outcome import Unprocessable
from ..model.types import is_resource_type
from .extract import _fhirpath_compiled, compile_expression, extract
from .registry import CORE, Registry

log = logging.getLogger("fhir_server.search")

TYPES = {"number", "date", "string", "token", "reference", "composite", "quantity", "uri"}
REFRESH_SECONDS = 5.0
REINDEX_BATCH = 500


def check_definition(resource: dict[str, Any]) -> None:
    """A SearchParameter the server can index, or 422 saying why not."""
    problems = []
    if resource.get("type") not in TYPES:
        problems.append(f"type must be one of {sorted(TYPES)}")
    bases = resource.get("base") or []
    if not bases or not all(is_resource_type(b) or b == "Resource" for b in bases):
        problems.append("base must name resource types")
    expression = resource.get("expression")
    if resource.get("type") != "composite":
        if not expression:
            problems.append("an expression is required")
        elif all(compile_expression(b.strip(), b.strip().split(".")[0]) is None for b in expression.split("|")) \
                and _fhirpath_compiled(expression) is None:
            problems.append(f"expression '{expression}' is not valid FHIRPath")
    if problems:
        raise Unprocessable("SearchParameter cannot be used: " + "; ".join(problems),
                            expression=["SearchParameter"])


def is_active(resource: dict[str, Any]) -> bool:
    return resource.get("status") in ("active", "draft")


class CustomParameters:
    """The process's registry (core + custom) and the re-indexing it triggers."""

    def __init__(self, store):
        self.store = store
        self.registry: Registry = CORE.copy()
        self._fingerprint: tuple | None = None
        self._checked = 0.0
        self._tasks: set[asyncio.Task] = set()

    async def load(self) -> None:
        registry = CORE.copy()
        after = 0
        while True:
            rows = await self.store.scan(["SearchParameter"], after, REINDEX_BATCH)
            for pk, _, _, content in rows:
                definition = orjson.loads(content)
                if is_active(definition) and definition.get("code") and definition.get("base"):
                    registry.add(definition)
                after = pk
            if len(rows) < REINDEX_BATCH:
                break
        self.registry = registry
        self._fingerprint = await self._current_fingerprint()
        self._checked = time.monotonic()

    async def _current_fingerprint(self) -> tuple:
        page = await self.store.history("SearchParameter", count=1)
        return tuple((v.id, v.version_id) for v in page.entries)

    async def refresh_if_changed(self) -> None:
        """Pick up SearchParameters written by other workers."""
        if time.monotonic() - self._checked < REFRESH_SECONDS:
            return
        self._checked = time.monotonic()
        if await self._current_fingerprint() != self._fingerprint:
            await self.load()

    async def changed(self, definition: dict[str, Any] | None) -> None:
        """After a SearchParameter write in this worker: reload, then re-index its base types."""
        await self.load()
        if definition and is_active(definition):
            bases = definition.get("base") or []
            types = sorted(self.registry.by_type) if "Resource" in bases else [b for b in bases]
            task = asyncio.create_task(self.reindex(types))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def reindex(self, resource_types: list[str]) -> int:
        """Rewrite the index rows of every current resource of these types; returns how many."""
        after, done = 0, 0
        while True:
            rows = await self.store.scan(resource_types, after, REINDEX_BATCH)
            if not rows:
                break
            async with self.store.transaction() as tx:
                for _, resource_type, resource_id, _ in rows:  # the scan may lag (a replica): read again
                    await tx.reindex(resource_type, resource_id,
                                     lambda content, t=resource_type: extract(t, orjson.loads(content), self.registry))
            done += len(rows)
            after = rows[-1][0]
        log.info("reindexed", extra={"types": resource_types[:10], "resources": done})
        return done

    async def wait(self) -> None:
        """Let running re-index tasks finish (tests, shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
