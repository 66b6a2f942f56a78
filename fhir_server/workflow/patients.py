"""One resident, one record: a resident ID number belongs to one active Patient."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson

from ..identifiers import RESIDENT_ID
from ..model.outcome import Conflict
from . import WriteRule


def token_escape(value: str) -> str:
    """A value as a search token (the characters search syntax gives a meaning escaped)."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


async def patients_with_identifier(service, tx, system: str, value: str, limit: int = 10):
    criteria = urlencode([("identifier", f"{system}|{token_escape(value)}")])
    return await service.match(tx, "Patient", criteria, limit=limit)


def is_active(patient: dict[str, Any]) -> bool:
    return patient.get("active") is not False


def is_replaced(patient: dict[str, Any]) -> bool:
    """Merged into another Patient (Patient/$merge): inactive and replaced-by that one."""
    return not is_active(patient) and any(link.get("type") == "replaced-by" for link in patient.get("link") or [])


class OneResidentOneRecord(WriteRule):
    """A Patient (created, updated, in a Bundle or PATCHed) whose resident ID already belongs to another
    active Patient is refused with 409. An inactive Patient (merged away) may keep it."""

    types = ("Patient",)

    async def check(self, service, tx, resource_type, resource_id, resource, previous) -> None:
        if resource is None or not is_active(resource):
            return
        for position, identifier in enumerate(resource.get("identifier") or []):
            if not isinstance(identifier, dict) or identifier.get("system") != RESIDENT_ID:
                continue
            value = identifier.get("value")
            if not value:
                continue
            await tx.lock(f"{RESIDENT_ID}|{value}")  # two registrations of one resident: the second waits
            for match in await patients_with_identifier(service, tx, RESIDENT_ID, value):
                if match.id != resource_id and is_active(orjson.loads(match.content)):
                    raise Conflict(
                        f"Resident ID {value} already belongs to Patient/{match.id}: one resident, one record. "
                        f"Update Patient/{match.id}, or merge the records with Patient/$merge",
                        expression=[f"Patient.identifier[{position}]"], code="duplicate")
