"""The one path a DICOM instance takes into the server, whether it came by C-STORE or STOW-RS:
parse and check it, keep the file unchanged in the blob store, index it, and bring the study's
ImagingStudy (with its Patient and order) up to date through the resource service."""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from ..service import ResourceService
from .blobs import BlobStore, FileBlobStore, instance_key
from .imaging_study import build_imaging_study
from .index import DicomIndex
from .instance import OUT_OF_RESOURCES, ParsedInstance, Rejected, parse_instance
from .mapping import DicomMapping
from .waveforms import ECG_SOP_CLASSES, triage_new_ecgs

log = logging.getLogger("fhir_server.dicom")

ENDPOINT_IDENTIFIER = ("urn:alliance:endpoint", "dicomweb")


def analyse(raw: bytes, context_sop_class: str | None, study_uid: str | None,
            timezone: str) -> tuple[ParsedInstance, str]:
    """Parse and check an instance and apply the mapping table, giving its ImagingStudy fragments as JSON
    text; what comes back is small and flat (no pixel data, no dataset, documents already encoded) so
    that it comes from a parser process cheaply (unpickling a CT's documents as dicts took the SCP's event
    loop 88 us, as text 5 us)."""
    instance = parse_instance(raw, context_sop_class=context_sop_class, study_uid=study_uid)
    fragments = _mapping(timezone).fragments(instance.dataset)
    instance.dataset = None
    instance.raw = b""
    return instance, orjson.dumps(fragments).decode()


@functools.cache
def _mapping(timezone: str) -> DicomMapping:
    return DicomMapping(timezone)


@dataclass
class Stored:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    duplicate: bool
    instance: ParsedInstance | None = None


def token(system: str, value: str) -> str:
    """A token search value with FHIR's escapes, URL-encoded for criteria strings."""
    def escape(text: str) -> str:
        for char in ("\\", ",", "|", "$"):
            text = text.replace(char, "\\" + char)
        return quote(text, safe="")
    return f"{escape(system)}|{escape(value)}" if system else escape(value)


def _same(existing: dict[str, Any], new: dict[str, Any]) -> bool:
    strip = ("id", "meta")
    return {k: v for k, v in existing.items() if k not in strip} == {k: v for k, v in new.items() if k not in strip}


def _discard(task: asyncio.Future | None) -> None:
    """Let a look-up whose answer is no longer needed finish on its own (cancelling a database call
    midway costs the connection); its outcome, even an error, is dropped."""
    if task is not None:
        task.add_done_callback(lambda done: done.cancelled() or done.exception())


class DicomIngest:
    def __init__(self, service: ResourceService, blobs: BlobStore | None = None, *, parser_processes: int = 0):
        self.service = service
        self._parser_processes = parser_processes
        self.parsers = self._parser_pool(parser_processes) if parser_processes > 0 else None
        self.settings = service.settings
        self.blobs = blobs or FileBlobStore(self.settings.data_dir / "dicom")
        self.index = DicomIndex(service.store)
        self.mapping = DicomMapping(self.settings.dicom_timezone)

    @staticmethod
    def _parser_pool(processes: int) -> ProcessPoolExecutor:
        # spawn, not fork: the parent runs threads (pynetdicom) and an event loop
        return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))

    def close(self) -> None:
        if self.parsers is not None:
            self.parsers.shutdown(cancel_futures=True)

    # ---- instances ----

    async def store(self, raw: bytes, *, context_sop_class: str | None = None, study_uid: str | None = None,
                    sop_uid: str | None = None) -> Stored:
        """Keep one instance (of study `study_uid`, when given). Raises Rejected (with the DICOM status) when
        it is refused; a duplicate SOP Instance UID is accepted and changes nothing. `sop_uid`, the UID the
        request announced (C-STORE's Affected SOP Instance UID), lets the duplicate check run meanwhile."""
        known = asyncio.ensure_future(self.index.exists(sop_uid)) if sop_uid else None
        try:
            instance, fragments = await self._analyse(raw, context_sop_class, study_uid)
        except BaseException:
            _discard(known)
            raise
        instance.raw = raw
        stored = Stored(instance.study_uid, instance.series_uid, instance.sop_uid, instance.sop_class_uid,
                        duplicate=False, instance=instance)
        if known is not None and sop_uid != instance.sop_uid:  # announced one UID, sent another
            _discard(known)
            known = None
        if await (known if known is not None else self.index.exists(instance.sop_uid)):
            stored.duplicate = True
            return stored
        key = instance_key(instance.study_uid, instance.series_uid, instance.sop_uid)
        try:
            await asyncio.to_thread(self.blobs.put, key, raw)
        except OSError as exc:
            log.error("dicom blob write failed", extra={"sop_uid": instance.sop_uid, "error": str(exc)})
            raise Rejected(OUT_OF_RESOURCES, "Cannot store the instance") from exc
        try:
            inserted = await self.index.add(instance, key, fragments)
        except Exception as exc:
            # The file is only reachable through the index: without its row it must not stay.
            await asyncio.to_thread(self.blobs.delete, key)
            log.error("dicom index write failed", extra={"sop_uid": instance.sop_uid, "error": str(exc)})
            raise Rejected(OUT_OF_RESOURCES, "Cannot index the instance") from exc
        stored.duplicate = not inserted
        return stored

    async def _analyse(self, raw: bytes, context_sop_class: str | None, study_uid: str | None):
        if self.parsers is not None:  # parsing is most of an instance's CPU: give it a core of its own
            args = (analyse, raw, context_sop_class, study_uid, self.mapping.timezone)
            try:
                return await asyncio.get_running_loop().run_in_executor(self.parsers, *args)
            except BrokenProcessPool:  # a parser process died (killed, out of memory): start afresh, once
                log.error("dicom parser process died; restarting it")
                self.parsers.shutdown(wait=False)
                self.parsers = self._parser_pool(self._parser_processes)
                return await asyncio.get_running_loop().run_in_executor(self.parsers, *args)
        return await asyncio.to_thread(analyse, raw, context_sop_class, study_uid, self.mapping.timezone)

    # ---- the study's FHIR resources ----

    async def _subject(self, tx, first: dict[str, Any], study_uid: str) -> dict[str, Any]:
        """The Patient with this Patient ID (in the issuer's system), created and tagged for
        reconciliation when the alliance does not know it yet."""
        patient_id, issuer = first["patient_id"], first["issuer"]
        if patient_id:
            system, value = self.mapping.patient_system(issuer), patient_id
        else:  # Patient ID is type 2: an anonymous study gets a patient of its own
            system, value = "urn:dicom:study-patient", study_uid
        matches = await self.service.match(tx, "Patient", f"identifier={token(system, value)}", lock=True)
        if matches:
            return {"reference": f"Patient/{matches[0].id}"}
        patient = {"resourceType": "Patient", "meta": {"tag": [self.mapping.reconciliation_tag]},
                   "identifier": [{"system": system, "value": value}], **first["fhir"]["patient"]}
        created = await self.service.create("Patient", patient, tx=tx)
        log.info("dicom patient created for reconciliation", extra={"patient": created.version.id,
                                                                    "study_uid": study_uid})
        return {"reference": f"Patient/{created.version.id}"}

    async def _orders(self, tx, accession: str | None) -> list[dict[str, Any]]:
        if not accession:
            return []
        matches = await self.service.match(tx, "ServiceRequest", f"identifier={token('', accession)}", limit=10)
        return [{"reference": f"ServiceRequest/{m.id}"} for m in matches]

    async def _endpoint(self, tx) -> dict[str, Any]:
        criteria = f"identifier={token(*ENDPOINT_IDENTIFIER)}"
        endpoint = {
            "resourceType": "Endpoint", "status": "active",
            "identifier": [{"system": ENDPOINT_IDENTIFIER[0], "value": ENDPOINT_IDENTIFIER[1]}],
            "name": "DICOMweb (WADO-RS, QIDO-RS, STOW-RS)",
            "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                               "code": "dicom-wado-rs"},
            "payloadType": [{"text": "DICOM"}], "payloadMimeType": ["application/dicom"],
            "address": f"{self.settings.public_base_url}/dicomweb"}
        created = await self.service.create("Endpoint", endpoint, if_none_exist=criteria, tx=tx)
        return {"reference": f"Endpoint/{created.version.id}"}

    async def flush(self, study_uid: str) -> str | None:
        """Write the study's ImagingStudy as its instances now stand (one version, only if it changed),
        then hand new ECG waveforms to triage. Returns the ImagingStudy id, or None for no instances."""
        started = time.perf_counter()
        written = None
        async with self.service.transaction() as tx:
            await tx.lock(f"dicom-study:{study_uid}")
            instances = await self.index.study_instances(tx.conn, study_uid)
            if not instances:
                return None
            first = instances[0]
            subject = await self._subject(tx, first, study_uid)
            study = build_imaging_study(
                study_uid, instances, subject=subject, based_on=await self._orders(tx, first["accession"]),
                endpoint=await self._endpoint(tx))
            criteria = f"identifier={token('urn:dicom:uid', f'urn:oid:{study_uid}')}"
            matches = await self.service.match(tx, "ImagingStudy", criteria, lock=True)
            if matches:
                study_id = matches[0].id
                if not _same(orjson.loads(matches[0].content), study):
                    written = await self.service.update("ImagingStudy", study_id, {**study, "id": study_id}, tx=tx)
            else:
                written = await self.service.create("ImagingStudy", study, tx=tx)
                study_id = written.version.id
        if written is not None:
            log.info("imaging study written", extra={
                "study_uid": study_uid, "imaging_study": study_id, "version": written.version.version_id,
                "instances": len(instances), "ms": round((time.perf_counter() - started) * 1000, 1)})
        if any(row["sop_class_uid"] in ECG_SOP_CLASSES for row in instances):
            await triage_new_ecgs(self, instances, subject, study_id)
        return study_id


class StudyFlusher:
    """Coalesces a burst of instances into one ImagingStudy write per study: a study is flushed when
    it has been quiet for `quiet` seconds, at the latest `max_delay` after its first unflushed instance,
    or at once when the sender says it is done (flush_now)."""

    def __init__(self, ingest: DicomIngest, quiet: float, max_delay: float):
        self.ingest = ingest
        self.quiet = quiet
        self.max_delay = max_delay
        self._dirty: dict[str, tuple[float, float]] = {}  # study uid -> (first, last) touch
        self._failures: dict[str, int] = {}
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    def touch(self, study_uid: str) -> None:
        now = time.monotonic()
        first, _ = self._dirty.get(study_uid, (now, now))
        self._dirty[study_uid] = (first, now)
        self._wake.set()

    async def flush_now(self, study_uids) -> None:
        for study_uid in list(study_uids):
            self._dirty.pop(study_uid, None)
            await self._flush(study_uid)

    async def _flush(self, study_uid: str) -> None:
        try:
            await self.ingest.flush(study_uid)
            self._failures.pop(study_uid, None)
        except Exception as exc:  # keep serving: retry a few times, then the next instance retries
            failures = self._failures[study_uid] = self._failures.get(study_uid, 0) + 1
            log.error("imaging study write failed", extra={"study_uid": study_uid, "attempt": failures,
                                                           "error": str(exc)[:500]})
            if failures < 3:
                later = time.monotonic() + 2 * failures
                self._dirty[study_uid] = (later, later)
            else:
                self._failures.pop(study_uid, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.flush_now(list(self._dirty))

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            due = [uid for uid, (first, last) in self._dirty.items()
                   if now - last >= self.quiet or now - first >= self.max_delay]
            for study_uid in due:
                self._dirty.pop(study_uid, None)
                await self._flush(study_uid)
            if self._dirty:
                await asyncio.sleep(min(self.quiet, 0.1))
            else:
                await self._wake.wait()
