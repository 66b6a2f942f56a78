"""STOW-RS (PS3.18 10.5): every part of a multipart/related request through the one ingest path, each
touched study's ImagingStudy written once at the end, and the Store Instances Response (PS3.18 Annex I)."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from .ingest import DicomIngest
from .instance import CANNOT_UNDERSTAND, Rejected
from .media import DICOM, parse_media_type
from .multipart import Part
from .urls import instance_url, study_url

log = logging.getLogger("fhir_server.dicom")


@dataclass
class Failure:
    sop_class_uid: str | None
    sop_uid: str | None
    reason: int
    message: str


@dataclass
class StoreResponse:
    status: int  # 200 all stored, 202 some failed, 409 none stored
    body: dict[str, Any]
    failures: list[Failure]


def _identify(raw: bytes) -> tuple[str | None, str | None]:
    """The SOP Class and Instance UIDs of a refused instance, when they can be read at all."""
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=True, stop_before_pixels=True,
                             specific_tags=["SOPClassUID", "SOPInstanceUID"])
        uids = [str(ds.get(keyword, "") or "").strip().rstrip("\x00") for keyword in ("SOPClassUID", "SOPInstanceUID")]
    except Exception:  # the part may be anything at all
        return None, None
    sop_class, sop_uid = (uid if uid and UID(uid).is_valid else None for uid in uids)
    return sop_class, sop_uid


async def store_instances(ingest: DicomIngest, parts: list[Part], *, study_uid: str | None,
                          base: str) -> StoreResponse:
    references: list[Dataset] = []
    failures: list[Failure] = []
    studies: set[str] = set()
    for number, part in enumerate(parts, 1):
        raw = bytes(part.body)
        media = parse_media_type(part.content_type) if part.content_type else None
        try:
            if media is not None and media.type != DICOM:
                raise Rejected(CANNOT_UNDERSTAND, f"Part {number} is {media.type}, not {DICOM}")
            stored = await ingest.store(raw, study_uid=study_uid)
        except Rejected as exc:
            sop_class, sop_uid = _identify(raw)
            failures.append(Failure(sop_class, sop_uid, exc.status, str(exc)))
            log.warning("dicom instance rejected", extra={"status": f"0x{exc.status:04X}", "reason": str(exc),
                                                          "sop_uid": sop_uid, "part": number, "via": "stow-rs"})
            continue
        studies.add(stored.study_uid)
        reference = Dataset()
        reference.ReferencedSOPClassUID = stored.sop_class_uid
        reference.ReferencedSOPInstanceUID = stored.sop_uid
        reference.RetrieveURL = instance_url(base, stored.study_uid, stored.series_uid, stored.sop_uid)
        references.append(reference)
    for uid in sorted(studies):  # searchable through FHIR by the time the client has its answer
        await ingest.flush(uid)

    response = Dataset()
    only_study = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    response.RetrieveURL = study_url(base, only_study) if only_study else None
    if failures:
        response.FailedSOPSequence = [_failed_item(f) for f in failures]
    if references:
        response.ReferencedSOPSequence = references
    status = 200 if not failures else 202 if references else 409
    return StoreResponse(status, response.to_json_dict(), failures)


def _failed_item(failure: Failure) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = failure.sop_class_uid
    item.ReferencedSOPInstanceUID = failure.sop_uid
    item.FailureReason = failure.reason
    return item


def warning_header(failures: list[Failure], agent: str) -> str:
    """An HTTP Warning (PS3.18 8.6.2) saying why the first instances were refused."""
    def text(failure: Failure) -> str:
        said = f"{failure.sop_uid or 'instance'}: {failure.message}".replace('"', "'").replace("\\", "/")
        return f'299 {agent} "{said.encode("ascii", "replace").decode()[:300]}"'
    return ", ".join(text(f) for f in failures[:10])
