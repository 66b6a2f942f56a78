"""The $ecg-triage operation: request parameters in, triage, derived resources written in one
transaction when asked (the inline ECG Observation with them), output Parameters out."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import orjson

from ..model.outcome import BadRequest, Unprocessable
from ..model.validate import validate_resource
from .derived import TriageContext, derived_resources, output_parameters
from .sampled_data import is_ecg, waveform_from_observation
from .triage import analyse

NAME = "ecg-triage"


@cache
def _definition() -> str:
    return resources.files("fhir_server.ecg").joinpath("data/OperationDefinition-ecg-triage.json").read_text()


def operation_definition(base_url: str) -> dict[str, Any]:
    """The OperationDefinition, its canonical URL on this server."""
    definition = json.loads(_definition())
    definition["url"] = f"{base_url}/OperationDefinition/{NAME}"
    return definition


def parse_persist(value: str | None) -> bool | None:
    if value is None:
        return None
    if value not in ("true", "false"):
        raise BadRequest(f"persist must be true or false, not {value[:20]!r}", expression=["persist"])
    return value == "true"


def read_parameters(body: dict[str, Any], *, instance: bool) -> tuple[dict[str, Any] | None, bool | None]:
    """(observation, persist) from a Parameters body or a bare Observation body."""
    kind = body.get("resourceType")
    if kind == "Observation" and not instance:
        return body, None
    if kind != "Parameters":
        expected = "a Parameters resource" if instance else "a Parameters or an ECG Observation"
        raise BadRequest(f"$ecg-triage takes {expected}, not {kind!r}", expression=["resourceType"])
    items = body.get("parameter") or []
    if not isinstance(items, list):
        raise BadRequest("Parameters.parameter must be an array", expression=["Parameters.parameter"])
    observation = persist = None
    for index, item in enumerate(items):
        where = f"Parameters.parameter[{index}]"
        name = item.get("name") if isinstance(item, dict) else None
        if name == "observation":
            if instance:
                raise BadRequest("At instance level the stored Observation is triaged; send no observation",
                                 expression=[where])
            if not isinstance(item.get("resource"), dict):
                raise BadRequest("The observation parameter must carry the ECG Observation as its resource",
                                 expression=[f"{where}.resource"])
            observation = item["resource"]
        elif name == "persist":
            if not isinstance(item.get("valueBoolean"), bool):
                raise BadRequest("The persist parameter takes valueBoolean", expression=[f"{where}.valueBoolean"])
            persist = item["valueBoolean"]
    if observation is None and not instance:
        raise BadRequest("Parameters needs an observation parameter holding the ECG Observation",
                         expression=["Parameters.parameter"])
    return observation, persist


def check_ecg(observation: dict[str, Any]) -> None:
    if observation.get("resourceType") != "Observation":
        raise BadRequest(f"$ecg-triage takes an Observation, not {observation.get('resourceType')!r}",
                         expression=["resourceType"])
    if not is_ecg(observation):
        raise Unprocessable("The Observation is not an ECG: Observation.code needs LOINC 11524-6 (EKG study) or "
                            "MDC 131328 (MDC_ECG_ELEC_POTL)", expression=["Observation.code"])


_REQUESTER_TYPES = ("Organization/", "PractitionerRole/", "Practitioner/", "Device/")


def _requester(observation: dict[str, Any]) -> dict[str, Any] | None:
    """Who recorded the ECG (the first performer a Task may name as requester): the referring clinic."""
    for performer in observation.get("performer") or []:
        reference = performer.get("reference") if isinstance(performer, dict) else None
        if isinstance(reference, str) and reference.startswith(_REQUESTER_TYPES):
            return {"reference": reference}
    return None


async def triage(service, observation: dict[str, Any], *, persist: bool, subject: dict[str, Any] | None = None,
                 source: str | None = None) -> dict[str, Any]:
    """Triage an ECG Observation; returns the output Parameters.

    `source` is "Observation/{id}" when the Observation is already stored; otherwise it is the
    inline one, validated first and, with persist, stored in the same transaction as the results.
    `subject` (a Patient reference) stands in for an Observation without one."""
    check_ecg(observation)
    if subject and not observation.get("subject"):
        observation = {**observation, "subject": subject}
    # CPU-bound work runs in a thread so the event loop keeps serving other requests
    waveform = await asyncio.to_thread(waveform_from_observation, observation)  # waveform errors first: 422
    if source is None:
        validate_resource(observation, "Observation")
    result = await asyncio.to_thread(analyse, waveform)
    context = TriageContext(ecg={"reference": source} if source else {"display": "ECG Observation of the request "
                                                                                 "(not stored)"},
                            subject=observation.get("subject"), effective=observation.get("effectiveDateTime"),
                            now=datetime.now(UTC), referral_organization=service.settings.ecg_referral_organization,
                            requester=_requester(observation))
    if not persist:
        resources_out = derived_resources(result, context)
    else:
        ecg_id = None if source else str(uuid.uuid4())
        if ecg_id:
            context.ecg = {"reference": f"Observation/{ecg_id}"}
        context.referral_id = str(uuid.uuid4())  # the referral's Task names it
        derived = derived_resources(result, context)
        async with service.transaction() as tx:
            to_write = ([observation] if ecg_id else []) + derived
            ids = ([ecg_id] if ecg_id else []) + [r.get("id") or str(uuid.uuid4()) for r in derived]
            versions = await service.create_many(to_write, tx=tx, resource_ids=ids)
        resources_out = [orjson.loads(v.content) for v in versions[len(to_write) - len(derived):]]
    return output_parameters(result, resources_out, context.ecg,
                             subject_missing=not observation.get("subject"))
