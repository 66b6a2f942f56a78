"""The alliance's workflow rules: checks and derived elements that apply to every write of some
resource types, whichever way it comes (REST, transaction Bundle, PATCH, ECG triage, DICOM bridge).

ResourceService calls each rule of a resource type twice: `fill` before validation (elements the
server derives, such as an Observation's interpretation), and `check` inside the write's own
transaction once the new version is written, with the version it replaced. A check that raises
rolls the whole transaction back; a check may also write other resources in that transaction (a
booked Slot turns busy)."""

from __future__ import annotations

from typing import Any


class WriteRule:
    types: tuple[str, ...] = ()
    checks = True  # False: fill only (no transaction of its own needed)
    # True: the check compares with the replaced version, read under a lock on the resource
    needs_previous = False

    def fill(self, resource_type: str, resource: dict[str, Any]) -> dict[str, Any]:
        return resource

    async def check(self, service, tx, resource_type: str, resource_id: str, resource: dict[str, Any] | None,
                    previous: dict[str, Any] | None) -> None:
        """resource None: a deletion; previous None: nothing (live) was there before."""


def default_rules() -> list[WriteRule]:
    from .appointments import SlotBooking
    from .observations import Interpretation
    from .patients import OneResidentOneRecord
    from .pharmacy import DispenseRules
    from .tasks import TaskStatusMachine

    return [OneResidentOneRecord(), TaskStatusMachine(), SlotBooking(), Interpretation(), DispenseRules()]


def rules_by_type(rules: list[WriteRule]) -> dict[str, list[WriteRule]]:
    table: dict[str, list[WriteRule]] = {}
    for rule in rules:
        for resource_type in rule.types:
            table.setdefault(resource_type, []).append(rule)
    return table
