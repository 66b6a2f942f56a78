"""The FHIR resources a triage produces: heart rate, RR statistics and rhythm interpretation
Observations derived from the ECG and, for a critical ECG of a known patient, a stat referral
(ServiceRequest) to the county ECG centre with its Task and a Flag on the patient; and the output
Parameters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..mapping_tables import load_table
from .triage import TriageResult

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
# the triage level as the v3 interpretation of the rhythm Observation
_LEVEL_INTERPRETATION = {"critical": ("AA", "Critical abnormal"), "urgent": ("A", "Abnormal"),
                         "routine": ("N", "Normal")}


@dataclass
class TriageContext:
    ecg: dict[str, Any]  # Reference to the ECG Observation (a real one, or a display when it is not stored)
    subject: dict[str, Any] | None
    effective: str | None  # the ECG's effectiveDateTime
    now: datetime
    referral_organization: str  # Organization reference of the county ECG centre; "" when not configured
    requester: dict[str, Any] | None = None  # who sent the ECG (its performer): the referral's requester
    referral_id: str | None = None  # the id the ServiceRequest will be stored under (None: not stored)


def rhythm_concept(category: str) -> dict[str, Any]:
    table = load_table("ecg/rhythms.json")
    row = table["rhythms"][category]
    concept: dict[str, Any] = {"text": row["text"]}
    if "code" in row:
        concept["coding"] = [{"system": table["snomedSystem"], "code": row["code"], "display": row["display"]}]
    return concept


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": round(value, 1), "unit": unit, "system": UCUM, "code": unit}


def _observation(context: TriageContext, category: str, code: dict[str, Any], **fields: Any) -> dict[str, Any]:
    observation: dict[str, Any] = {"resourceType": "Observation", "status": "final",
                                   "category": [{"coding": [{"system": _CATEGORY, "code": category}]}], "code": code}
    if context.subject:
        observation["subject"] = context.subject
    if context.effective:
        observation["effectiveDateTime"] = context.effective
    observation["issued"] = context.now.isoformat()
    observation.update(fields)
    observation["derivedFrom"] = [context.ecg]
    return observation


def _component(text: str, value: dict[str, Any], coding: dict[str, Any] | None = None) -> dict[str, Any]:
    code: dict[str, Any] = {"text": text}
    if coding:
        code["coding"] = [coding]
    return {"code": code, **value}


def _rr_observation(result: TriageResult, context: TriageContext) -> dict[str, Any]:
    rr = result.rr
    components = [_component("QRS complexes detected", {"valueInteger": rr.beats})]
    for text, value, unit in (("Mean R-R interval", rr.mean_rr, "ms"), ("SDNN (standard deviation of R-R)", rr.sdnn,
                              "ms"), ("RMSSD (successive R-R differences)", rr.rmssd, "ms")):
        if value is not None:
            components.append(_component(text, {"valueQuantity": _quantity(1000 * value, unit)}))
    if rr.irregularity is not None:
        components.append(_component("R-R irregularity (successive intervals differing by more than 10 %)",
                                     {"valueQuantity": _quantity(100 * rr.irregularity, "%")}))
    components.append(_component("Slowest beat-to-beat heart rate", {"valueQuantity": _quantity(rr.rate_min, "/min")}))
    components.append(_component("Fastest beat-to-beat heart rate", {"valueQuantity": _quantity(rr.rate_max, "/min")}))
    if result.qrs_width is not None:
        components.append(_component("QRS duration (median estimate)",
                                     {"valueQuantity": _quantity(1000 * result.qrs_width, "ms")},
                                     {"system": LOINC, "code": "8633-4", "display": "QRS duration"}))
    return _observation(context, "procedure", {"text": "R-R interval statistics by ECG"}, component=components)


def derived_resources(result: TriageResult, context: TriageContext) -> list[dict[str, Any]]:
    resources = []
    if result.rhythm != "unreadable" and result.rr is not None:
        rate = result.rr.rate_mean or 0.0  # no RR interval at all: asystole
        resources.append(_observation(
            context, "vital-signs", {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}],
                                     "text": "Heart rate"},
            valueQuantity=_quantity(rate, "/min")))
        if result.rr.mean_rr is not None:
            resources.append(_rr_observation(result, context))
    code, display = _LEVEL_INTERPRETATION[result.level]
    reasons = [f.reason for f in result.findings]
    resources.append(_observation(
        context, "procedure", {"coding": [{"system": LOINC, "code": "8884-9", "display": "Heart rate rhythm"}],
                               "text": "ECG rhythm and triage"},
        valueCodeableConcept=rhythm_concept(result.rhythm),
        interpretation=[{"coding": [{"system": _INTERPRETATION, "code": code, "display": display}],
                         "text": f"Triage: {result.level}"}],
        note=[{"text": reason} for reason in reasons]))
    if result.level == "critical" and context.subject:
        resources += _referral(result, context)
    return resources


def _referral(result: TriageResult, context: TriageContext) -> list[dict[str, Any]]:
    worst = result.worst.reason
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order", "priority": "stat",
        "code": {"text": "Immediate review of a critical ECG by the county ECG centre"},
        "subject": context.subject, "authoredOn": context.now.isoformat(),
        "reasonCode": [rhythm_concept(result.rhythm)],
        "note": [{"text": f.reason} for f in result.findings if f.level == "critical"],
    }
    if context.referral_organization:
        request["performer"] = [{"reference": context.referral_organization}]
    if context.requester:
        request["requester"] = context.requester
    if "reference" in context.ecg:
        request["supportingInfo"] = [context.ecg]
    task: dict[str, Any] = {
        "resourceType": "Task", "status": "requested", "intent": "order", "priority": "stat",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill",
                             "display": "Fulfill the focal request"}]},
        "description": request["code"]["text"], "for": context.subject, "authoredOn": context.now.isoformat(),
        "lastModified": context.now.isoformat()}
    if context.referral_id:
        request["id"] = context.referral_id
        task["focus"] = {"reference": f"ServiceRequest/{context.referral_id}"}
    else:
        task["focus"] = {"display": "The stat ServiceRequest of this triage (not stored)"}
    if context.requester:
        task["requester"] = context.requester
    if context.referral_organization:
        task["owner"] = {"reference": context.referral_organization}
    flag = {"resourceType": "Flag", "status": "active",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category",
                                      "code": "clinical", "display": "Clinical"}]}],
            "code": {"text": f"Critical ECG: {worst}"}, "subject": context.subject,
            "period": {"start": context.now.isoformat()}}
    return [request, task, flag]


def output_parameters(result: TriageResult, resources: list[dict[str, Any]],
                      ecg: dict[str, Any], subject_missing: bool) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [{"name": "triage", "valueCode": result.level}]
    parameters += [{"name": "reason", "valueString": f.reason} for f in result.findings]
    if result.level == "critical" and subject_missing:
        parameters.append({"name": "reason", "valueString": "No referral or flag made: the ECG names no patient "
                                                            "(Observation.subject)"})
    if result.rhythm != "unreadable" and result.rr is not None:
        parameters.append({"name": "heartRate", "valueQuantity": _quantity(result.rr.rate_mean or 0.0, "/min")})
        parameters.append({"name": "beats", "valueInteger": result.rr.beats})
    parameters.append({"name": "rhythm", "valueCodeableConcept": rhythm_concept(result.rhythm)})
    parameters.append({"name": "ecg", "valueReference": ecg})
    parameters += [{"name": "result", "resource": resource} for resource in resources]
    return {"resourceType": "Parameters", "parameter": parameters}
