"""The patient-compartment key stored on every row (the distribution column for Citus)."""

from __future__ import annotations

from typing import Any

# Elements that name the patient a resource is about, in order of preference. Search-parameter based
# compartment membership (CompartmentDefinition) refines this once the search registry exists.
_PATIENT_ELEMENTS = ("subject", "patient", "beneficiary", "individual", "for")


def patient_key(resource_type: str, resource_id: str, resource: dict[str, Any]) -> str | None:
    if resource_type == "Patient":
        return resource_id
    for element in _PATIENT_ELEMENTS:
        value = resource.get(element)
        if isinstance(value, dict):
            reference = value.get("reference")
            if isinstance(reference, str) and reference.startswith("Patient/"):
                return reference.removeprefix("Patient/").split("/", 1)[0][:64] or None
    return None
