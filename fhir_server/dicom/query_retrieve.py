"""Query/Retrieve for the DICOM SCP (PS3.4 Annex C): C-FIND, C-MOVE and C-GET in the Patient Root and
Study Root information models, answered from the instance index and the blob store.

Where PS3.4 leaves room, or where common clients stray from it, the choices are:
- A unique key of a level above the query level may be left out (it then matches every value), as
  dcm4che's "relational-lenient" does; when given, a UID key must be a UID or a list of UIDs.
- Keys of other levels that the index holds are matched at any level; keys it does not hold (and
  private ones) are ignored for matching, as PS3.4 C.2.2.1.3 allows for optional keys, and the
  non-private ones come back empty.
- A retrieve needs the unique key of its own level; other keys in its identifier are ignored.
- Instances are sent as stored, in their stored transfer syntax. A C-GET requestor that accepted only
  another uncompressed syntax gets them re-encoded losslessly by pynetdicom; compressed pixel data is
  never transcoded, so a peer without the stored compressed syntax gets a failed sub-operation."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from ..settings import Settings
from .blobs import BlobStore
from .index import MATCHABLE, DicomIndex, QueryError
from .status import status

log = logging.getLogger("fhir_server.dicom")

# Statuses of PS3.4 C.4.1.1.4 (C-FIND) and C.4.2.1.5 / C.4.3.1.4 (C-MOVE, C-GET).
PENDING = 0xFF00
CANCEL = 0xFE00
OUT_OF_RESOURCES = 0xA700
UNABLE_TO_COUNT_MATCHES = 0xA701
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000

PATIENT_ROOT, STUDY_ROOT = "Patient Root", "Study Root"
MODELS = {
    PatientRootQueryRetrieveInformationModelFind: PATIENT_ROOT, StudyRootQueryRetrieveInformationModelFind: STUDY_ROOT,
    PatientRootQueryRetrieveInformationModelMove: PATIENT_ROOT, StudyRootQueryRetrieveInformationModelMove: STUDY_ROOT,
    PatientRootQueryRetrieveInformationModelGet: PATIENT_ROOT, StudyRootQueryRetrieveInformationModelGet: STUDY_ROOT,
}
QUERY_RETRIEVE_SOP_CLASSES = list(MODELS)
LEVELS = {PATIENT_ROOT: ("PATIENT", "STUDY", "SERIES", "IMAGE"), STUDY_ROOT: ("STUDY", "SERIES", "IMAGE")}
UNIQUE_KEYS = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
               "IMAGE": "SOPInstanceUID"}
QUERY_RETRIEVE_LEVEL = Tag("QueryRetrieveLevel")
# Keys the SCP answers itself rather than from a match.
_OWN_KEYS = {"SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle", "InstanceAvailability"}
PAGE_SIZE = 500  # C-FIND reads its matches in pages: memory stays bounded however many match
MAX_CONTEXTS = 128  # PS3.8: an association carries at most 128 presentation contexts


class IdentifierError(ValueError):
    """A request identifier the SCP refuses: the status to answer, why, and the element at fault."""

    def __init__(self, code: int, message: str, element: int | None = None):
        super().__init__(message)
        self.code = code
        self.element = element

    def as_status(self) -> Dataset:
        return status(self.code, str(self), [self.element] if self.element is not None else None)


def _text(element) -> str:
    """An element's value as DICOM writes it in a query: multiple values joined by backslashes."""
    value = element.value
    if value is None:
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _value(ds: Dataset, keyword: str) -> str:
    return _text(ds[keyword]) if keyword in ds else ""


def decoded_identifier(event) -> Dataset:
    """The request identifier, every element decoded now: pydicom decodes lazily, and a value it cannot
    decode must refuse the request before the first answer, not fail halfway through them."""
    try:
        identifier = event.identifier
        for _ in identifier.iterall():
            pass
    except Exception as exc:  # pydicom raises many types for a damaged dataset
        raise IdentifierError(UNABLE_TO_PROCESS, f"Cannot decode the identifier: {exc}") from exc
    return identifier


def query_level(identifier: Dataset, model: str) -> str:
    level = _value(identifier, "QueryRetrieveLevel")
    if not level:
        raise IdentifierError(IDENTIFIER_DOES_NOT_MATCH, "QueryRetrieveLevel is missing", QUERY_RETRIEVE_LEVEL)
    if level not in LEVELS[model]:
        raise IdentifierError(IDENTIFIER_DOES_NOT_MATCH, f"QueryRetrieveLevel {level[:16]!r} is not one of "
                              f"{'/'.join(LEVELS[model])}", QUERY_RETRIEVE_LEVEL)
    return level


def _is_uid_list(value: str) -> bool:
    return "*" not in value and "?" not in value


def check_higher_unique_keys(identifier: Dataset, model: str, level: str) -> None:
    """PS3.4 C.4.1.2.1: the unique keys of the levels above are single values (or UID lists); lenient: they
    may be absent. Patient ID is left alone: in the Study Root model it is an ordinary, wildcard-able key."""
    for above in LEVELS[model][:LEVELS[model].index(level)]:
        keyword = UNIQUE_KEYS[above]
        value = _value(identifier, keyword)
        if keyword != "PatientID" and value and not _is_uid_list(value):
            raise IdentifierError(IDENTIFIER_DOES_NOT_MATCH, f"{keyword} above the query level must be UIDs",
                                  Tag(keyword))


def matching_filters(identifier: Dataset) -> dict[str, str]:
    """The keys the index can match, with their values; empty and '*' values only ask for the attribute."""
    filters = {}
    for element in identifier:
        if element.keyword in MATCHABLE and element.VR != "SQ":
            value = _text(element)
            if value and value != "*":
                filters[element.keyword] = value
    return filters


def find_response(request: Dataset, level: str, match: dict[str, Any], ae_title: str) -> Dataset:
    """One C-FIND match: exactly the keys the request asked for, valued from the match (empty when the
    match does not hold them), plus the level and where to retrieve from."""
    ds = Dataset()
    ascii_only = True
    for element in request:
        tag = element.tag
        # Group lengths, command/meta groups and private keys are not attributes that can be answered.
        if tag.is_private or tag.element == 0 or tag.group < 0x0008 or element.keyword in _OWN_KEYS:
            continue
        if element.VR == "SQ":
            ds.add_new(tag, "SQ", [])
            continue
        value = match.get(element.keyword)
        ascii_only = ascii_only and (not isinstance(value, str) or value.isascii())
        ds.add_new(tag, element.VR, value)
    ds.QueryRetrieveLevel = level
    ds.RetrieveAETitle = ae_title
    if "InstanceAvailability" in request:
        ds.InstanceAvailability = "ONLINE"  # every instance is on the server's own disk
    if "SpecificCharacterSet" in request or not ascii_only:
        ds.SpecificCharacterSet = "ISO_IR 192"  # names may be in any script: answer in UTF-8
    return ds


def storage_contexts(rows: list[dict[str, Any]]) -> list[PresentationContext]:
    """One context per (SOP class, stored transfer syntax), so each instance goes out exactly as stored,
    and Verification, so that a destination refusing them all still associates and the instances fail as
    sub-operations (0xA702) rather than the move as if the destination were unknown. Instances past the
    128 contexts an association can carry fail as sub-operations too."""
    pairs = list(dict.fromkeys((row["sop_class_uid"], row["transfer_syntax"]) for row in rows))
    return [build_context(Verification)] + [build_context(sop_class, syntax)
                                            for sop_class, syntax in pairs[:MAX_CONTEXTS - 1]]


class QueryRetrieve:
    """The C-FIND, C-MOVE and C-GET handlers; they run on pynetdicom's association threads and reach the
    index through `call`, which runs a coroutine on the bridge's event loop."""

    def __init__(self, settings: Settings, index: DicomIndex, blobs: BlobStore,
                 call: Callable[[Coroutine], Any]):
        self.ae_title = settings.dicom_ae_title
        self.peers = settings.dicom_peer_table
        self.index = index
        self.blobs = blobs
        self.call = call

    # ---- C-FIND ----

    def on_find(self, event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        calling = event.assoc.requestor.ae_title
        model = MODELS[event.context.abstract_syntax]
        try:
            request = decoded_identifier(event)
            level = query_level(request, model)
            check_higher_unique_keys(request, model, level)
            filters = matching_filters(request)
        except IdentifierError as exc:
            log.warning("dicom query refused", extra={"calling_ae": calling, "model": model, "reason": str(exc)})
            yield exc.as_status(), None
            return
        matches, offset = 0, 0
        while True:
            try:
                page = self.call(self.index.find(level, filters, limit=PAGE_SIZE, offset=offset))
            except QueryError as exc:
                log.warning("dicom query refused", extra={"calling_ae": calling, "model": model, "reason": str(exc)})
                yield status(UNABLE_TO_PROCESS, str(exc)), None
                return
            except Exception as exc:
                log.exception("dicom query failed", extra={"calling_ae": calling, "level": level})
                yield status(OUT_OF_RESOURCES, f"Query failed: {type(exc).__name__}"), None
                return
            for match in page:
                if event.is_cancelled:
                    log.info("dicom query cancelled", extra={"calling_ae": calling, "level": level,
                                                             "matches": matches})
                    yield CANCEL, None
                    return
                matches += 1
                yield PENDING, find_response(request, level, match, self.ae_title)
            if len(page) < PAGE_SIZE:
                break
            offset += PAGE_SIZE
        log.info("dicom query", extra={"calling_ae": calling, "model": model, "level": level, "matches": matches})

    # ---- retrieval: which instances ----

    def retrieve_rows(self, request: Dataset, model: str) -> list[dict[str, Any]]:
        """The stored instances a C-MOVE or C-GET identifier names, in study, series and instance order."""
        level = query_level(request, model)
        check_higher_unique_keys(request, model, level)
        keyword = UNIQUE_KEYS[level]
        value = _value(request, keyword)
        if not value or not _is_uid_list(value):
            raise IdentifierError(IDENTIFIER_DOES_NOT_MATCH, f"A {level} retrieve needs {keyword} values",
                                  Tag(keyword))
        levels = LEVELS[model]
        filters = {UNIQUE_KEYS[lv]: _value(request, UNIQUE_KEYS[lv]) for lv in levels[:levels.index(level) + 1]}
        return self.call(self._rows({k: v for k, v in filters.items() if v}))

    async def _rows(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        wanted: dict[str, set[str]] = {}
        for match in await self.index.find("IMAGE", filters):
            wanted.setdefault(match["StudyInstanceUID"], set()).add(match["SOPInstanceUID"])
        rows = []
        for study_uid, sop_uids in wanted.items():
            rows += [row for row in await self.index.instances(study_uid) if row["sop_uid"] in sop_uids]
        return rows

    def stored_dataset(self, row: dict[str, Any]) -> Dataset:
        """The instance as stored. pydicom keeps the elements it is not asked about as raw bytes and writes
        them back unchanged, so what goes out in the stored transfer syntax is what came in."""
        try:
            return pydicom.dcmread(io.BytesIO(self.blobs.get(row["blob_key"])))
        except Exception as exc:
            log.error("dicom stored instance unreadable", extra={"sop_uid": row["sop_uid"], "error": str(exc)})
            # pynetdicom cannot send a dataset without file meta: it counts the sub-operation as failed and
            # lists this SOP Instance UID among the failed ones, which is the answer PS3.4 asks for.
            placeholder = Dataset()
            placeholder.SOPClassUID = row["sop_class_uid"]
            placeholder.SOPInstanceUID = row["sop_uid"]
            return placeholder

    def _sub_operations(self, event, rows: list[dict[str, Any]]) -> Iterator[tuple[int, Dataset | None]]:
        for row in rows:
            if event.is_cancelled:
                yield CANCEL, None  # pynetdicom adds the counts and the failed SOP Instance UIDs
                return
            yield PENDING, self.stored_dataset(row)

    def _plan(self, event, operation: str) -> tuple[list[dict[str, Any]] | None, Dataset | None]:
        """The instances to send, or the failure status when the request cannot be served."""
        calling = event.assoc.requestor.ae_title
        model = MODELS[event.context.abstract_syntax]
        try:
            return self.retrieve_rows(decoded_identifier(event), model), None
        except IdentifierError as exc:
            log.warning("dicom retrieve refused", extra={"operation": operation, "calling_ae": calling,
                                                         "reason": str(exc)})
            return None, exc.as_status()
        except QueryError as exc:
            log.warning("dicom retrieve refused", extra={"operation": operation, "calling_ae": calling,
                                                         "reason": str(exc)})
            return None, status(UNABLE_TO_PROCESS, str(exc))
        except Exception as exc:
            log.exception("dicom retrieve failed", extra={"operation": operation, "calling_ae": calling})
            return None, status(UNABLE_TO_COUNT_MATCHES, f"Cannot find the instances: {type(exc).__name__}")

    # ---- C-MOVE ----

    def on_move(self, event) -> Iterator[Any]:
        calling = event.assoc.requestor.ae_title
        destination = (event.move_destination or "").strip()
        peer = self.peers.get(destination)
        if peer is None:
            log.warning("dicom move destination unknown", extra={"calling_ae": calling, "destination": destination})
            yield None, None  # pynetdicom answers 0xA801, Move Destination unknown
            return
        rows, refusal = self._plan(event, "C-MOVE")
        if refusal is not None:
            # pynetdicom only takes a failure status once it has associated with the destination and has a
            # number of sub-operations; the destination sees an empty association.
            yield peer[0], peer[1], {"contexts": [build_context(Verification)]}
            yield 1
            yield refusal, None
            return
        log.info("dicom move", extra={"calling_ae": calling, "destination": destination, "instances": len(rows)})
        yield peer[0], peer[1], {"contexts": storage_contexts(rows)}
        yield len(rows)
        yield from self._sub_operations(event, rows)

    # ---- C-GET ----

    def on_get(self, event) -> Iterator[Any]:
        rows, refusal = self._plan(event, "C-GET")
        if refusal is not None:
            yield 1  # pynetdicom takes a failure status only after a number of sub-operations
            yield refusal, None
            return
        log.info("dicom get", extra={"calling_ae": event.assoc.requestor.ae_title, "instances": len(rows)})
        yield len(rows)
        yield from self._sub_operations(event, rows)
