"""ECG waveforms that arrive over DICOM: each becomes an ECG Observation (SampledData per lead) of the
study's patient, part of its ImagingStudy, and goes straight to ECG triage, which stores it with its
findings (and, when critical, the referral and Flag) in one transaction."""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

import pydicom

from ..ecg.dicom_waveform import observation_from_dataset
from ..ecg.operation import triage
from ..model.outcome import FhirError

log = logging.getLogger("fhir_server.dicom")

# 12-lead ECG, General ECG, Ambulatory ECG Waveform Storage
ECG_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.9.1.1", "1.2.840.10008.5.1.4.1.1.9.1.2",
                             "1.2.840.10008.5.1.4.1.1.9.1.3"})


async def triage_new_ecgs(ingest, instances: list[dict[str, Any]], subject: dict[str, Any],
                          imaging_study_id: str) -> list[str]:
    """Triage the study's ECG instances that have no Observation yet; returns their SOP Instance UIDs."""
    done = []
    for row in instances:
        if row["sop_class_uid"] not in ECG_SOP_CLASSES:
            continue
        sop_uid = row["sop_uid"]
        query, page = await ingest.service.search(
            ("Observation",), [("identifier", f"urn:dicom:uid|urn:oid:{sop_uid}"), ("_count", "1")],
            base_url=ingest.settings.public_base_url, strict=True)
        if page.matches:
            continue  # triaged when an earlier instance of the study arrived
        try:
            raw = await asyncio.to_thread(ingest.blobs.get, row["blob_key"])
            dataset = await asyncio.to_thread(pydicom.dcmread, io.BytesIO(raw))
            observation = observation_from_dataset(dataset, subject)
            observation["partOf"] = [{"reference": f"ImagingStudy/{imaging_study_id}"}]
            result = await triage(ingest.service, observation, persist=True)
        except (FhirError, ValueError) as exc:
            log.warning("dicom ecg not triaged", extra={"sop_uid": sop_uid, "error": str(exc)[:300]})
            continue
        level = next((p.get("valueCode") for p in result.get("parameter", []) if p.get("name") == "triage"), None)
        log.info("dicom ecg triaged", extra={"sop_uid": sop_uid, "triage": level})
        done.append(sop_uid)
    return done
