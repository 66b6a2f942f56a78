"""The patient-compartment key stored on every row, and the distribution value derived from it."""

from __future__ import annotations

import hashlib
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


def shard_key(resource_type: str, resource_id: str, patient: str | None) -> int:
    """The distribution value of a resource's rows (resources, history, search index): a stable 64-bit
    hash of its patient's reference, so that a patient's whole record shares one value and lands on one
    shard (one partition); a resource outside every record hashes its own reference. Changing this
    function misplaces every stored row: it is fixed."""
    return hash64(f"Patient/{patient}" if patient is not None else f"{resource_type}/{resource_id}")


def hash64(text: str) -> int:
    """A stable signed 64-bit hash of a text (PostgreSQL's bigint): shard keys and advisory lock numbers."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)
