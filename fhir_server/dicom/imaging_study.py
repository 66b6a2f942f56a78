"""An ImagingStudy built from every stored instance of one study: the study, series and instance
fragments the mapping table produced, merged, counted and linked to the patient and the order."""

from __future__ import annotations

from typing import Any


def _merge(target: dict[str, Any], fragment: dict[str, Any]) -> None:
    """First value wins for single elements; list elements collect distinct items in arrival order."""
    for key, value in fragment.items():
        if isinstance(value, list):
            items = target.setdefault(key, [])
            items.extend(v for v in value if v not in items)
        elif key not in target:
            target[key] = value


def build_imaging_study(study_uid: str, instances: list[dict[str, Any]], *, subject: dict[str, Any],
                        based_on: list[dict[str, Any]], endpoint: dict[str, Any] | None) -> dict[str, Any]:
    """`instances`: rows of DicomIndex.study_instances (series and instance order), each with `fhir`."""
    study: dict[str, Any] = {}
    series_by_uid: dict[str, dict[str, Any]] = {}
    for row in instances:
        _merge(study, row["fhir"]["study"])
        series = series_by_uid.get(row["series_uid"])
        if series is None:
            series = series_by_uid[row["series_uid"]] = {"uid": row["series_uid"], "instance": []}
        _merge(series, row["fhir"]["series"])
        series["instance"].append(row["fhir"]["instance"])
    modalities: list[dict[str, Any]] = []
    series_list = []
    for series in series_by_uid.values():
        series["numberOfInstances"] = len(series["instance"])
        series.setdefault("modality", {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "OT"})
        if endpoint is not None:
            series["endpoint"] = [endpoint]
        if series["modality"] not in modalities:
            modalities.append(series["modality"])
        series_list.append(series)
    resource: dict[str, Any] = {"resourceType": "ImagingStudy"}
    study.setdefault("identifier", [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}])
    resource["identifier"] = study.pop("identifier")
    resource["status"] = "available"
    resource["modality"] = modalities
    resource["subject"] = subject
    if based_on:
        resource["basedOn"] = based_on
    resource.update(study)
    if endpoint is not None:
        resource["endpoint"] = [endpoint]
    resource["numberOfSeries"] = len(series_list)
    resource["numberOfInstances"] = sum(s["numberOfInstances"] for s in series_list)
    resource["series"] = series_list
    return resource
