"""Booking: an Appointment holds its Slots. Writing an Appointment that names a free Slot turns the
Slot busy in the same transaction; a Slot that is not free cannot be booked (409); cancelling the
Appointment (or deleting it, or dropping the Slot from it) frees the Slot again."""

from __future__ import annotations

from typing import Any

import orjson

from ..model.outcome import Conflict, Unprocessable
from . import WriteRule

# an Appointment in these statuses holds no Slot
RELEASING = frozenset({"cancelled", "entered-in-error"})


def held_slots(appointment: dict[str, Any] | None) -> dict[str, int]:
    """Slot id -> its position in Appointment.slot, for the Slots the Appointment holds."""
    if appointment is None or appointment.get("status") in RELEASING:
        return {}
    held = {}
    for position, reference in enumerate(appointment.get("slot") or []):
        value = reference.get("reference") if isinstance(reference, dict) else None
        if not isinstance(value, str) or not value.startswith("Slot/") or "/" in value[5:] or len(value) == 5:
            raise Unprocessable(f"Appointment.slot[{position}] must refer to a Slot of this server as Slot/[id]",
                                expression=[f"Appointment.slot[{position}]"])
        held.setdefault(value[5:], position)
    return held


class SlotBooking(WriteRule):
    types = ("Appointment",)
    needs_previous = True

    async def check(self, service, tx, resource_type, resource_id, resource, previous) -> None:
        before, after = held_slots(previous), held_slots(resource)
        for slot_id in sorted(set(after) - set(before)):
            where = f"Appointment.slot[{after[slot_id]}]"
            slot = await self._slot(service, tx, slot_id)
            if slot is None:
                raise Unprocessable(f"{where} refers to Slot/{slot_id}, which does not exist",
                                    expression=[where], code="not-found")
            if slot.get("status") != "free":
                raise Conflict(f"Slot/{slot_id} is {slot.get('status')}: it cannot be booked", expression=[where])
            await service.update("Slot", slot_id, {**slot, "status": "busy"}, tx=tx)
        for slot_id in sorted(set(before) - set(after)):
            slot = await self._slot(service, tx, slot_id)
            if slot is not None and slot.get("status") == "busy":
                await service.update("Slot", slot_id, {**slot, "status": "free"}, tx=tx)

    @staticmethod
    async def _slot(service, tx, slot_id: str) -> dict[str, Any] | None:
        await tx.lock(f"Slot/{slot_id}")  # two bookings of one Slot: the second sees the first's result
        current = await tx.read("Slot", slot_id)
        return orjson.loads(current.content) if current is not None and not current.deleted else None
