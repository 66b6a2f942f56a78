"""Patient/$merge (the FHIR R5 operation, on this R4 server): the source Patient is marked inactive
and `replaced-by` the target, the target `replaces` the source, and every resource in the source's
compartment is moved to the target (its references to the source rewritten), all in one transaction
with a Provenance that records what the merge changed. Audit records (Provenance, AuditEvent) keep
naming the source; Patients that link to the source are left as they are."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson

from ..model.outcome import BadRequest, FhirError, Issue, Unprocessable, operation_outcome
from ..model.types import is_valid_id
from ..search.query import parse_search, patient_compartment_clause
from ..search.registry import PATIENT_COMPARTMENT
from ..workflow.patients import is_replaced, token_escape
from .parameters import parameter_items, single, value

# resources that stay with the source: the audit trail says what happened to whom, and Patients that link
# to the source keep their own links
NOT_MOVED = frozenset({"Patient", "Provenance", "AuditEvent"})
MOVED_TYPES = tuple(sorted(t for t in PATIENT_COMPARTMENT if t not in NOT_MOVED))
PAGE = 500
LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"


@dataclass
class MergeRequest:
    source: tuple[str, str | None, list[dict[str, Any]]]  # (parameter expression, id, identifiers)
    target: tuple[str, str | None, list[dict[str, Any]]]
    result: tuple[str, dict[str, Any]] | None
    preview: bool
    body: dict[str, Any] = field(default_factory=dict)


def _side(items, name: str) -> tuple[str, str | None, list[dict[str, Any]]]:
    reference = single(items, f"{name}-patient")
    identifiers = [(where, item) for where, item in items if item["name"] == f"{name}-patient-identifier"]
    if reference is None and not identifiers:
        raise BadRequest(f"Patient/$merge needs {name}-patient or {name}-patient-identifier",
                         expression=["Parameters.parameter"])
    if reference is not None:
        where, item = reference
        target = value(where, item, "Reference").get("reference", "")
        patient_id = target.removeprefix("Patient/")
        if not target.startswith("Patient/") or not is_valid_id(patient_id):
            raise BadRequest(f"{name}-patient must refer to a Patient as Patient/[id]",
                             expression=[f"{where}.valueReference"])
        return f"{where}.valueReference", patient_id, []
    found = []
    for where, item in identifiers:
        identifier = value(where, item, "Identifier")
        if not identifier.get("system") or not identifier.get("value"):
            raise BadRequest(f"{name}-patient-identifier needs a system and a value",
                             expression=[f"{where}.valueIdentifier"])
        found.append(identifier)
    return identifiers[0][0], None, found


def read_request(body: dict[str, Any]) -> MergeRequest:
    items = parameter_items(body, "Patient/$merge")
    result = single(items, "result-patient")
    if result is not None and (not isinstance(result[1].get("resource"), dict)
                               or result[1]["resource"].get("resourceType") != "Patient"):
        raise BadRequest("result-patient must hold a Patient", expression=[f"{result[0]}.resource"])
    preview = single(items, "preview")
    return MergeRequest(_side(items, "source"), _side(items, "target"),
                        (f"{result[0]}.resource", result[1]["resource"]) if result else None,
                        bool(value(*preview, "Boolean")) if preview else False, body)


class _Preview(Exception):
    """Rolls the merge back after it was worked out (preview=true)."""

    def __init__(self, output: dict[str, Any]):
        super().__init__("preview")
        self.output = output


async def _resolve(service, tx, side, name: str) -> dict[str, Any]:
    where, patient_id, identifiers = side
    if patient_id is None:
        matches: set[str] | None = None
        for identifier in identifiers:
            criteria = urlencode([("identifier", f"{identifier['system']}|{token_escape(identifier['value'])}")])
            ids = {v.id for v in await service.match(tx, "Patient", criteria, limit=2)}
            matches = ids if matches is None else matches & ids
        if len(matches) != 1:
            raise Unprocessable(f"{name}-patient-identifier matches {len(matches)} Patients; it must match exactly "
                                "one", expression=[where], code="not-found" if not matches else "multiple-matches")
        patient_id = matches.pop()
    await tx.lock(f"Patient/{patient_id}")
    current = await tx.read("Patient", patient_id)
    if current is None or current.deleted:
        raise Unprocessable(f"{name}-patient Patient/{patient_id} does not exist", expression=[where],
                            code="not-found")
    return orjson.loads(current.content)


def _rewrite(value: Any, old: set[str], new: str) -> Any:
    if isinstance(value, dict):
        return {k: (new if k == "reference" and v in old else _rewrite(v, old, new)) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, old, new) for v in value]
    return value


def _link(patient: dict[str, Any], other: str, kind: str) -> dict[str, Any]:
    links = [link for link in patient.get("link") or [] if link.get("other", {}).get("reference") != other]
    return {**patient, "link": [*links, {"other": {"reference": other}, "type": kind}]}


async def _move(service, tx, base_url: str, source_id: str, target_id: str) -> list[str]:
    """Rewrite the references to the source in every resource of its compartment; their versioned refs."""
    old = {f"Patient/{source_id}", f"{base_url}/Patient/{source_id}"}
    moved = []
    cursor = None
    while True:
        params = [("_count", str(PAGE))] + ([("_cursor", cursor)] if cursor else [])
        query = parse_search(service.registry, MOVED_TYPES, params, base_url=base_url, strict=True,
                             default_count=PAGE, max_count=PAGE)
        query.total = "none"
        page = await tx.search(query, [patient_compartment_clause(service.registry, MOVED_TYPES, source_id)])
        for version in page.matches:
            resource = orjson.loads(version.content)
            rewritten = _rewrite(resource, old, f"Patient/{target_id}")
            if rewritten != resource:
                written = await service.update(version.resource_type, version.id, rewritten, tx=tx)
                moved.append(f"{version.resource_type}/{version.id}/_history/{written.version.version_id}")
        cursor = page.next_cursor
        if not cursor:
            return moved


async def merge(service, base_url: str, request: MergeRequest) -> dict[str, Any]:
    try:
        async with service.transaction() as tx:
            output = await _merge(service, tx, base_url, request)
            if request.preview:
                raise _Preview(output)
    except _Preview as preview:
        return preview.output
    return output


async def _merge(service, tx, base_url: str, request: MergeRequest) -> dict[str, Any]:
    source = await _resolve(service, tx, request.source, "source")
    target = await _resolve(service, tx, request.target, "target")
    source_ref, target_ref = f"Patient/{source['id']}", f"Patient/{target['id']}"
    if source["id"] == target["id"]:
        raise Unprocessable("source and target are the same Patient", expression=[request.target[0]],
                            code="business-rule")
    for patient, side in ((source, request.source), (target, request.target)):
        if is_replaced(patient):
            raise Unprocessable(f"Patient/{patient['id']} was already merged into another Patient",
                                expression=[side[0]], code="business-rule")
    if request.result is not None:
        where, result = request.result
        if result.get("id") != target["id"]:
            raise Unprocessable(f"result-patient must be the target, Patient/{target['id']}",
                                expression=[f"{where}.id"], code="business-rule")
        merged = dict(result)
    else:  # the source's identifiers the target lacks go to the target as old ones
        known = {(i.get("system"), i.get("value")) for i in target.get("identifier") or []}
        extra = [{**i, "use": "old"} for i in source.get("identifier") or []
                 if (i.get("system"), i.get("value")) not in known]
        merged = {**target, **({"identifier": [*(target.get("identifier") or []), *extra]} if extra else {})}
    try:  # the source first: once inactive, its resident ID no longer stands in the target's way
        written_source = await service.update("Patient", source["id"], {
            **_link(source, target_ref, "replaced-by"), "active": False}, tx=tx)
        written_target = await service.update("Patient", target["id"], _link(merged, source_ref, "replaces"), tx=tx)
        moved = await _move(service, tx, base_url, source["id"], target["id"])
    except FhirError as exc:
        exc.issues[0].diagnostics = f"Merging {source_ref} into {target_ref}: {exc.issues[0].diagnostics}"
        raise
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    provenance = {
        "resourceType": "Provenance",
        "target": [{"reference": f"{target_ref}/_history/{written_target.version.version_id}"},
                   {"reference": f"{source_ref}/_history/{written_source.version.version_id}"},
                   *({"reference": ref} for ref in moved)],
        "recorded": now,
        "activity": {"coding": [{"system": LIFECYCLE, "code": "merge", "display": "Merge Record Lifecycle Event"}],
                     "text": f"Patient/$merge of {source_ref} into {target_ref}"},
        "agent": [{"who": {"display": "Patient/$merge of the alliance FHIR server"}}],
    }
    await service.create("Provenance", provenance, tx=tx)
    summary = (f"{'Would merge' if request.preview else 'Merged'} {source_ref} into {target_ref}; "
               f"{len(moved)} resource(s) of its compartment {'would move' if request.preview else 'moved'}")
    return {"resourceType": "Parameters", "parameter": [
        {"name": "input", "resource": request.body},
        {"name": "outcome", "resource": operation_outcome([Issue("informational", summary, "information")])},
        {"name": "result", "resource": orjson.loads(written_target.version.content)},
    ]}
