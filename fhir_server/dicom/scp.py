"""The DICOM SCP: a pynetdicom Application Entity that answers C-ECHO and C-STORE (every storage
SOP class, the common transfer syntaxes) and hands instances to the ingest path, and answers
C-FIND, C-MOVE and C-GET from what it has stored (query_retrieve.py).

It runs as its own process (`fhir-server dicom`, or started by `fhir-server serve`) so that any
number of HTTP workers share one DICOM port. pynetdicom calls handlers on association threads;
they wait on the process's asyncio loop, where the store and resource service live."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

from ..service import ResourceService
from ..settings import Settings
from ..store import open_store
from .connection import on_connection_open
from .ingest import DicomIngest, StudyFlusher
from .instance import OUT_OF_RESOURCES, Rejected
from .query_retrieve import QUERY_RETRIEVE_SOP_CLASSES, QueryRetrieve
from .status import status

log = logging.getLogger("fhir_server.dicom")

_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
# pynetdicom accepts the first of *its* syntaxes that the sender proposes: compressed ones first, so a
# JPEG or JPEG 2000 image is kept as the device made it instead of being decompressed by the sender.
ACCEPTED_TRANSFER_SYNTAXES = [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in _UNCOMPRESSED] + _UNCOMPRESSED


class SupportedContext(PresentationContext):
    """A supported presentation context that is cheap to deep-copy.

    pynetdicom deep-copies every supported context for each association it accepts: here 171 storage
    contexts x 45 transfer syntax UIDs, some 50 ms of CPU under the GIL before the association can even
    be negotiated. Transfer syntaxes are immutable strings, so a copy with a new list of the same UIDs
    is as good as a deep copy; any other mutable attribute is still deep-copied."""

    @classmethod
    def of(cls, context: PresentationContext) -> SupportedContext:
        clone = cls()
        clone.__dict__.update(copy.deepcopy(vars(context)))
        return clone

    def __deepcopy__(self, memo: dict[int, Any]) -> SupportedContext:
        clone = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, list) and all(isinstance(item, str) for item in value):
                setattr(clone, name, list(value))
            elif not isinstance(value, str | int | float | type(None)):
                setattr(clone, name, copy.deepcopy(value, memo))
        return clone


class DicomBridge:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server = None
        self._association_studies: dict[int, set[str]] = {}

    # ---- life cycle ----

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.store = open_store(self.settings)
        await self.store.migrate()
        self.service = ResourceService(self.store, self.settings)
        await self.service.start()
        self.ingest = DicomIngest(self.service, parser_processes=self.settings.dicom_parser_processes)
        self.flusher = StudyFlusher(self.ingest, self.settings.dicom_flush_quiet_s,
                                    self.settings.dicom_flush_max_delay_s)
        self.flusher.start()
        self.query_retrieve = QueryRetrieve(self.settings, self.ingest.index, self.ingest.blobs, self.call)
        self.ae = self.build_ae()
        host = self.settings.dicom_host or self.settings.host
        contexts = [SupportedContext.of(cx) for cx in self.ae.supported_contexts]
        self.server = self.ae.start_server((host, self.settings.dicom_port), block=False,
                                           evt_handlers=self.handlers(), contexts=contexts)
        log.info("dicom scp listening", extra={"ae_title": self.settings.dicom_ae_title, "host": host,
                                               "port": self.settings.dicom_port})

    async def stop(self) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.shutdown)
        await self.flusher.stop()
        self.ingest.close()
        await self.service.custom.wait()
        await self.store.close()

    def build_ae(self) -> AE:
        ae = AE(ae_title=self.settings.dicom_ae_title)
        ae.maximum_pdu_size = 0  # no limit: fewer, larger P-DATA PDUs for big images
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            # Both roles: a C-GET requestor proposes to be the storage SCP, so that we store to it.
            ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES, scu_role=True,
                                     scp_role=True)
        for sop_class in QUERY_RETRIEVE_SOP_CLASSES:
            ae.add_supported_context(sop_class, _UNCOMPRESSED)
        ae.connection_timeout = 15  # a C-MOVE destination that does not answer fails the move, not hangs it
        return ae

    def handlers(self) -> list[tuple[Any, Any]]:
        qr = self.query_retrieve
        return [(evt.EVT_CONN_OPEN, on_connection_open),
                (evt.EVT_C_ECHO, self.on_echo), (evt.EVT_C_STORE, self.on_store),
                (evt.EVT_C_FIND, qr.on_find), (evt.EVT_C_MOVE, qr.on_move), (evt.EVT_C_GET, qr.on_get),
                (evt.EVT_RELEASED, self.on_association_end), (evt.EVT_ABORTED, self.on_association_end)]

    def call(self, coro: Coroutine) -> Any:
        """Run a coroutine on the bridge's loop from an association thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    # ---- handlers (association threads) ----

    def on_echo(self, event) -> int:
        return 0x0000

    def on_store(self, event) -> int | Dataset:
        calling = event.assoc.requestor.ae_title
        sop_uid = str(getattr(event.request, "AffectedSOPInstanceUID", ""))
        try:
            raw = event.encoded_dataset(include_meta=True)
            stored = self.call(self.ingest.store(raw, context_sop_class=event.context.abstract_syntax,
                                                 sop_uid=sop_uid or None))
        except Rejected as exc:
            log.warning("dicom instance rejected", extra={"status": f"0x{exc.status:04X}", "reason": str(exc),
                                                          "calling_ae": calling, "sop_uid": sop_uid})
            return status(exc.status, str(exc))
        except Exception as exc:
            log.exception("dicom store failed", extra={"calling_ae": calling, "sop_uid": sop_uid})
            return status(OUT_OF_RESOURCES, f"Storage failed: {type(exc).__name__}")
        self._association_studies.setdefault(id(event.assoc), set()).add(stored.study_uid)
        self.loop.call_soon_threadsafe(self.flusher.touch, stored.study_uid)
        log.debug("dicom instance stored", extra={"sop_uid": stored.sop_uid, "duplicate": stored.duplicate,
                                                  "calling_ae": calling})
        return 0x0000

    def on_association_end(self, event) -> None:
        studies = self._association_studies.pop(id(event.assoc), set())
        if studies:  # the sender is done: make its studies searchable now, not after the quiet period
            asyncio.run_coroutine_threadsafe(self.flusher.flush_now(studies), self.loop)


async def serve_dicom(settings: Settings, *, parent_pid: int | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bridge = DicomBridge(settings)
    await bridge.start()

    async def orphan_watch() -> None:  # `serve` started us: go when it goes, even if it was killed
        while os.getppid() == parent_pid:  # noqa: ASYNC110 (polling another process, no event to wait on)
            await asyncio.sleep(1)
        stop.set()

    watch = asyncio.create_task(orphan_watch()) if parent_pid else None
    try:
        await stop.wait()
    finally:
        if watch is not None:
            watch.cancel()
        await bridge.stop()


def run(settings: Settings, *, parent_pid: int | None = None) -> None:
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    asyncio.run(serve_dicom(settings, parent_pid=parent_pid))
