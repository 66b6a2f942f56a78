"""Where DICOMweb resources live: Retrieve URLs of studies, series and instances, and the metadata's
BulkDataURIs made absolute."""

from __future__ import annotations

from typing import Any

PREFIX = "/dicomweb"


def study_url(base: str, study_uid: str) -> str:
    return f"{base}{PREFIX}/studies/{study_uid}"


def series_url(base: str, study_uid: str, series_uid: str) -> str:
    return f"{study_url(base, study_uid)}/series/{series_uid}"


def instance_url(base: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"{series_url(base, study_uid, series_uid)}/instances/{sop_uid}"


def absolute_bulk_data(document: dict[str, Any], instance: str) -> dict[str, Any]:
    """The stored DICOM JSON with its relative BulkDataURIs (bulkdata/...) under the instance's URL."""
    for attribute in document.values():
        uri = attribute.get("BulkDataURI")
        if uri is not None and not uri.startswith(("http:", "https:")):
            attribute["BulkDataURI"] = f"{instance}/{uri}"
        for item in attribute.get("Value", []) if attribute.get("vr") == "SQ" else []:
            absolute_bulk_data(item, instance)
    return document
