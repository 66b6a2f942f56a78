"""Loading the definitions shipped in terminology/ into the store on start-up. Idempotent: a
definition whose url and version (a NamingSystem: its unique id) the store already holds is left as
it is, so restarts and workers starting together create no duplicates and no new versions."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from ..mapping_tables import data_folder

if TYPE_CHECKING:
    from ..service import ResourceService
    from ..settings import Settings

log = logging.getLogger("fhir_server.terminology")
LOCK = "terminology-definitions"


def terminology_dir(settings: Settings) -> Path:
    return data_folder("terminology", settings.terminology_dir)


def read_definitions(directory: Path) -> list[dict[str, Any]]:
    """Every resource of the folder's *.json files (one resource a file), in path order."""
    if not directory.is_dir():
        raise RuntimeError(f"terminology folder {directory} is missing (set FHIR_TERMINOLOGY_DIR)")
    resources = []
    for path in sorted(directory.rglob("*.json")):
        try:
            resource = json.loads(path.read_text())
        except ValueError as exc:
            raise RuntimeError(f"{path} is not JSON: {exc}") from exc
        if not isinstance(resource, dict) or "resourceType" not in resource:
            raise RuntimeError(f"{path} is not a FHIR resource")
        resources.append(resource)
    return resources


def _criteria(resource: dict[str, Any]) -> str:
    if resource["resourceType"] == "NamingSystem":
        return urlencode([("value:exact", unique["value"]) for unique in resource.get("uniqueId", [])[:1]])
    pairs = [("url", resource.get("url", ""))]
    if resource.get("version"):
        pairs.append(("version", resource["version"].replace("\\", "\\\\").replace(",", "\\,")))
    return urlencode(pairs)


async def load_definitions(service: ResourceService, directory: Path) -> tuple[int, int]:
    """Write the definitions the store lacks; returns (created, already there)."""
    resources = read_definitions(directory)
    created = 0
    async with service.transaction() as tx:
        await tx.lock(LOCK)  # a second worker waits here, then finds everything written
        for resource in resources:
            resource_type = resource["resourceType"]
            if await service.match(tx, resource_type, _criteria(resource), limit=1):
                continue
            resource_id = resource.get("id")
            if resource_id and await tx.read(resource_type, resource_id) is None:
                await service.update(resource_type, resource_id, resource, tx=tx)
            else:  # the id is taken by another resource: keep that one, give this a new id
                await service.create(resource_type, resource, tx=tx)
            created += 1
    log.info("terminology loaded", extra={"written": created, "existing": len(resources) - created,
                                          "folder": str(directory)})
    return created, len(resources) - created
