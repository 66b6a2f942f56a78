"""Central pharmacy: a MedicationDispense is filled against an active MedicationRequest; one that is
declined says why (statusReason), so that a stock-out is a searchable fact:
MedicationDispense?status=declined&status-reason=<system>|outofstock&location=Location/<id>."""

from __future__ import annotations

import orjson

from ..model.outcome import Unprocessable
from . import WriteRule

STATUS_REASON = "http://terminology.hl7.org/CodeSystem/medicationdispense-status-reason"
OUT_OF_STOCK = "outofstock"
# dispenses in these statuses hand medication out, so their prescription must be in force
DISPENSING = frozenset({"preparation", "in-progress", "completed"})


class DispenseRules(WriteRule):
    types = ("MedicationDispense",)

    async def check(self, service, tx, resource_type, resource_id, resource, previous) -> None:
        if resource is None:
            return
        status = resource.get("status")
        if status == "declined" and not (resource.get("statusReasonCodeableConcept")
                                         or resource.get("statusReasonReference")):
            raise Unprocessable("A declined MedicationDispense must say why in statusReason (for a stock-out: "
                                f"{STATUS_REASON}|{OUT_OF_STOCK})", expression=["MedicationDispense.statusReason"],
                                code="business-rule")
        if status not in DISPENSING:
            return
        for position, reference in enumerate(resource.get("authorizingPrescription") or []):
            where = f"MedicationDispense.authorizingPrescription[{position}]"
            value = reference.get("reference", "") if isinstance(reference, dict) else ""
            if not value.startswith("MedicationRequest/"):
                continue
            current = await tx.read("MedicationRequest", value.removeprefix("MedicationRequest/"))
            if current is None or current.deleted:
                raise Unprocessable(f"{where} refers to {value}, which does not exist", expression=[where],
                                    code="not-found")
            request_status = orjson.loads(current.content).get("status")
            if request_status != "active":
                raise Unprocessable(f"{value} is {request_status}: a dispense needs an active prescription",
                                    expression=[where], code="business-rule")
