"""C-FIND, C-MOVE and C-GET driven by real peers: dcmtk's findscu, movescu (into a real storescp) and
getscu, and pynetdicom, against a server with a small archive, on both backends."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from conftest import run_sql
from dicom_data import dataset_bytes, send_unchanged, variant
from pgcluster import free_port
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

pytestmark = pytest.mark.skipif(shutil.which("findscu") is None, reason="dcmtk is not installed")
# The refused requests carry invalid values on purpose; pydicom warns as it encodes them.
invalid_values = pytest.mark.filterwarnings("ignore:Invalid value for VR")

PATIENT_FIND, STUDY_FIND = PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind
PATIENT_MOVE, STUDY_MOVE = PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove
PATIENT_GET, STUDY_GET = PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet
JPEG2000, RLE = "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5"


# ---- peers: storescp destinations for C-MOVE ----

@dataclass
class Destination:
    ae_title: str
    port: int
    directory: Path
    process: subprocess.Popen | None = None

    def received(self) -> dict[str, Path]:
        """The files received since the last clear, by SOP Instance UID."""
        return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                for p in self.directory.glob("*.dcm")}

    def clear(self) -> None:
        for path in self.directory.iterdir():
            path.unlink()


def start_storescp(ae_title: str, directory: Path, *options: str) -> Destination:
    directory.mkdir(parents=True)
    port = free_port()
    with open(directory.parent / f"{ae_title}.log", "wb") as log:
        # +B: write what arrives bit for bit, so a file can be compared with the one that was stored
        process = subprocess.Popen(["storescp", "-aet", ae_title, "-od", str(directory), "+B", "-fe", ".dcm",
                                    *options, str(port)], stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Destination(ae_title, port, directory, process)
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"storescp {ae_title} did not start") from None
            time.sleep(0.05)


@dataclass
class Peers:
    viewer: Destination  # accepts every transfer syntax
    legacy: Destination  # accepts uncompressed syntaxes only (storescp's default)
    offline: Destination  # configured, but nothing listens there


@pytest.fixture(scope="module")
def peers(tmp_path_factory) -> Iterator[Peers]:
    root = tmp_path_factory.mktemp("peers")
    viewer = start_storescp("VIEWER", root / "viewer", "+xa")
    legacy = start_storescp("LEGACY", root / "legacy")
    offline = Destination("OFFLINE", free_port(), root / "offline")
    yield Peers(viewer, legacy, offline)
    for destination in (viewer, legacy):
        destination.process.terminate()
        destination.process.wait(timeout=10)


@pytest.fixture(scope="module")
def dicom_server_env(peers: Peers) -> dict[str, str]:
    table = ",".join(f"{d.ae_title}=127.0.0.1:{d.port}" for d in (peers.viewer, peers.legacy, peers.offline))
    return {"FHIR_DICOM_PEERS": table}


# ---- the archive ----

@dataclass
class Instance:
    path: Path
    ds: pydicom.Dataset

    @property
    def uid(self) -> str:
        return str(self.ds.SOPInstanceUID)


@dataclass
class Archive:
    studies: dict[str, str] = field(default_factory=dict)  # label -> Study Instance UID
    series: dict[str, str] = field(default_factory=dict)  # label -> Series Instance UID
    instances: dict[str, list[Instance]] = field(default_factory=dict)  # series label -> instances

    def study_label(self, study_uid: str) -> str:
        return next(label for label, uid in self.studies.items() if uid == study_uid)

    def in_studies(self, *labels: str) -> list[Instance]:
        return [i for series, found in self.instances.items() if series[0] in labels for i in found]


PATIENTS = {"P1": dict(PatientID="QR-1001", PatientName="Chen^Jing", PatientBirthDate="19700214", PatientSex="F"),
            "P2": dict(PatientID="QR-2002", PatientName="Zhang^Wei", PatientBirthDate="19851120", PatientSex="M"),
            "P3": dict(PatientID="QR-3003", PatientName="王^芳", PatientSex="F", SpecificCharacterSet="ISO_IR 192"),
            "P5": dict(PatientID="QR-5005", PatientName="Liu^Yang")}
# study label: (patient, StudyDate, StudyTime, [(series label, source file, SeriesNumber, instances)])
STUDIES = {
    "A": ("P1", "20250110", "083000", [("A1", "CT_small.dcm", 1, 2), ("A2", "MR_small.dcm", 2, 1)]),
    "B": ("P1", "20250301", "141500", [("B1", "JPEG2000.dcm", 1, 1), ("B2", "MR_small_RLE.dcm", 2, 1)]),
    "C": ("P2", "20240615", "100000", [("C1", "MR_small.dcm", 1, 1)]),
    "D": ("P3", "20230101", "090000", [("D1", "CT_small.dcm", 1, 1)]),
    "F": ("P5", "20220505", "110000", [("F1", "CT_small.dcm", 1, 2)]),
}


@pytest.fixture(scope="module")
def archive(dicom_server, tmp_path_factory) -> Archive:
    out = tmp_path_factory.mktemp("archive")
    archive = Archive()
    files = []
    for study, (patient, date, time_of_day, series_list) in STUDIES.items():
        archive.studies[study] = generate_uid()
        for series, source, number, count in series_list:
            archive.series[series] = generate_uid()
            archive.instances[series] = [
                Instance(*variant(source, out, study_uid=archive.studies[study], series_uid=archive.series[series],
                                  StudyDate=date, StudyTime=time_of_day, SeriesNumber=number, InstanceNumber=n,
                                  AccessionNumber=f"ACC-{study}", **PATIENTS[patient]))
                for n in range(1, count + 1)]
            files += [i.path for i in archive.instances[series]]
    assert set(send_unchanged(dicom_server.dicom_port, *files)) == {0x0000}
    return archive


# ---- requestors ----

def identifier(**keys) -> Dataset:
    """An identifier from keywords; a RawDataElement value goes in as its bytes (for values pydicom refuses)."""
    ds = Dataset()
    for keyword, value in keys.items():
        if isinstance(value, RawDataElement):
            ds[value.tag] = value
        else:
            setattr(ds, keyword, value)
    return ds


def raw(keyword: str, vr: str, value: bytes, length: int | None = None) -> RawDataElement:
    """An element written as these bytes in Implicit VR Little Endian (the syntax `find` proposes)."""
    return RawDataElement(Tag(keyword), vr, len(value) if length is None else length, value, 0, True, True)


def as_list(value) -> list[str]:
    """A multi-valued element's values; pydicom gives a single value bare."""
    return [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value)]


def associate(server, *contexts, roles=(), handlers=()) -> object:
    ae = AE(ae_title="QRTEST")
    for context in contexts:
        if isinstance(context, tuple):
            ae.add_requested_context(*context)
        else:
            ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title, ext_neg=list(roles),
                         evt_handlers=list(handlers))
    assert assoc.is_established
    return assoc


def find(server, model=STUDY_FIND, **keys) -> tuple[list[Dataset], Dataset]:
    """C-FIND with pynetdicom: the identifiers of the pending responses, and the final response."""
    assoc = associate(server, (model, [ImplicitVRLittleEndian]))
    try:
        responses = list(assoc.send_c_find(identifier(**keys), model))
    finally:
        assoc.release()
    pending = [ident for rsp, ident in responses if rsp.Status in (0xFF00, 0xFF01)]
    [final] = [rsp for rsp, _ in responses if rsp.Status not in (0xFF00, 0xFF01)]
    return pending, final


def move(server, destination: str, model=STUDY_MOVE, **keys) -> tuple[list[Dataset], Dataset, Dataset | None]:
    """C-MOVE with pynetdicom: the pending responses, the final response and its identifier."""
    assoc = associate(server, model)
    try:
        responses = list(assoc.send_c_move(identifier(**keys), destination, model))
    finally:
        assoc.release()
    return [rsp for rsp, _ in responses[:-1]], responses[-1][0], responses[-1][1]


@dataclass
class Received:
    raw: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> dataset bytes as they arrived
    syntaxes: dict[str, str] = field(default_factory=dict)
    cancel: tuple[int, int] | None = None  # (message id, context id) of a C-GET to cancel at the first store

    def on_store(self, event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        self.raw[uid] = event.request.DataSet.getvalue()
        self.syntaxes[uid] = str(event.context.transfer_syntax)
        if self.cancel:
            # Sent before this store's response, so the SCP has it before it goes on to the next instance.
            event.assoc.send_c_cancel(*self.cancel)
            self.cancel = None
        return 0x0000


def get(server, storage: list[tuple[str, str]], model=STUDY_GET, cancel: bool = False,
        **keys) -> tuple[Received, list[Dataset], Dataset, Dataset | None]:
    """C-GET with pynetdicom as the storage SCP of the given (SOP class, transfer syntax) contexts."""
    received = Received()
    contexts = [model, *storage]
    roles = [build_role(sop_class, scp_role=True) for sop_class in dict.fromkeys(s for s, _ in storage)]
    assoc = associate(server, *contexts, roles=roles, handlers=[(evt.EVT_C_STORE, received.on_store)])
    try:
        if cancel:
            received.cancel = (1, next(c.context_id for c in assoc.accepted_contexts if c.abstract_syntax == model))
        responses = list(assoc.send_c_get(identifier(**keys), model, msg_id=1))
    finally:
        assoc.release()
    return received, [rsp for rsp, _ in responses[:-1]], responses[-1][0], responses[-1][1]


def uids(responses: list[Dataset], keyword: str) -> set[str]:
    return {str(r.get(keyword)) for r in responses}


# ---- C-FIND ----

def test_findscu_study_level(dicom_server, archive, tmp_path):
    run = subprocess.run(
        ["findscu", "-S", "-X", "-od", str(tmp_path), "-aec", dicom_server.ae_title,
         "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=QR-1001", "-k", "StudyInstanceUID",
         "-k", "ModalitiesInStudy", "-k", "StudyDate", "-k", "NumberOfStudyRelatedInstances",
         "-k", "NumberOfStudyRelatedSeries", "127.0.0.1", str(dicom_server.dicom_port)],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    responses = [pydicom.dcmread(p) for p in sorted(tmp_path.glob("rsp*.dcm"))]
    by_study = {archive.study_label(r.StudyInstanceUID): r for r in responses}
    assert sorted(by_study) == ["A", "B"]
    for response in responses:
        assert {e.keyword for e in response} == {
            "QueryRetrieveLevel", "RetrieveAETitle", "PatientID", "StudyInstanceUID", "ModalitiesInStudy",
            "StudyDate", "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries"}
        assert response.RetrieveAETitle == dicom_server.ae_title and response.QueryRetrieveLevel == "STUDY"
    assert list(by_study["A"].ModalitiesInStudy) == ["CT", "MR"]
    assert by_study["A"].NumberOfStudyRelatedInstances == 3 and by_study["A"].NumberOfStudyRelatedSeries == 2
    assert by_study["A"].StudyDate == "20250110"
    assert list(by_study["B"].ModalitiesInStudy) == ["MR", "NM"]
    assert by_study["B"].NumberOfStudyRelatedInstances == 2


def test_patient_level(dicom_server, archive):
    found, final = find(dicom_server, PATIENT_FIND, QueryRetrieveLevel="PATIENT", PatientID="QR-1001",
                        PatientName="", PatientBirthDate="", NumberOfPatientRelatedStudies="",
                        NumberOfPatientRelatedSeries="", NumberOfPatientRelatedInstances="")
    assert final.Status == 0x0000
    [patient] = found
    assert str(patient.PatientName) == "Chen^Jing" and patient.PatientBirthDate == "19700214"
    assert (patient.NumberOfPatientRelatedStudies, patient.NumberOfPatientRelatedSeries,
            patient.NumberOfPatientRelatedInstances) == (2, 4, 5)


@pytest.mark.parametrize("model", [PATIENT_FIND, STUDY_FIND])
def test_study_level(dicom_server, archive, model):
    found, final = find(dicom_server, model, QueryRetrieveLevel="STUDY", PatientID="QR-1001",
                        StudyInstanceUID="", AccessionNumber="", StudyTime="")
    assert final.Status == 0x0000
    assert {(archive.study_label(r.StudyInstanceUID), r.AccessionNumber, r.StudyTime) for r in found} == {
        ("A", "ACC-A", "083000"), ("B", "ACC-B", "141500")}


@pytest.mark.parametrize("model", [PATIENT_FIND, STUDY_FIND])
def test_series_level(dicom_server, archive, model):
    found, final = find(dicom_server, model, QueryRetrieveLevel="SERIES", PatientID="QR-1001",
                        StudyInstanceUID=archive.studies["B"], SeriesInstanceUID="", Modality="", SeriesNumber="",
                        NumberOfSeriesRelatedInstances="")
    assert final.Status == 0x0000
    assert {(r.SeriesInstanceUID, r.Modality, r.SeriesNumber, r.NumberOfSeriesRelatedInstances) for r in found} == {
        (archive.series["B1"], "NM", 1, 1), (archive.series["B2"], "MR", 2, 1)}
    assert all(r.StudyInstanceUID == archive.studies["B"] for r in found)


@pytest.mark.parametrize("model", [PATIENT_FIND, STUDY_FIND])
def test_image_level(dicom_server, archive, model):
    found, final = find(dicom_server, model, QueryRetrieveLevel="IMAGE", PatientID="QR-1001",
                        StudyInstanceUID=archive.studies["A"], SeriesInstanceUID=archive.series["A1"],
                        SOPInstanceUID="", SOPClassUID="", InstanceNumber="")
    assert final.Status == 0x0000
    assert [(r.SOPInstanceUID, r.SOPClassUID, r.InstanceNumber) for r in found] == [
        (i.uid, CTImageStorage, n) for n, i in enumerate(archive.instances["A1"], 1)]


def test_series_level_without_the_study_uid_is_relational(dicom_server, archive):
    """Lenient: the unique key of the level above may be left out; it then matches every study."""
    found, final = find(dicom_server, QueryRetrieveLevel="SERIES", Modality="MR", SeriesInstanceUID="",
                        PatientID="QR-1001")
    assert final.Status == 0x0000
    assert uids(found, "SeriesInstanceUID") == {archive.series["A2"], archive.series["B2"]}


@pytest.mark.parametrize("keys, studies", [
    (dict(PatientName="chen*"), {"A", "B"}),
    (dict(PatientName="*Wei"), {"C"}),
    (dict(PatientName="Zh?ng^Wei"), {"C"}),
    (dict(StudyDate="20250101-20250228"), {"A"}),
    (dict(StudyDate="-20231231"), {"D", "F"}),
    (dict(StudyDate="20250301-"), {"B"}),
    (dict(StudyDate="20240615"), {"C"}),
    (dict(StudyTime="0800-0900", PatientID="QR-1001"), {"A"}),
    (dict(ModalitiesInStudy="NM"), {"B"}),
    (dict(ModalitiesInStudy=["NM", "CT"], StudyDate="20230101-"), {"A", "B", "D"}),
    (dict(AccessionNumber="ACC-?"), {"A", "B", "C", "D", "F"}),
], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_matching(dicom_server, archive, keys, studies):
    found, final = find(dicom_server, QueryRetrieveLevel="STUDY", StudyInstanceUID="", **keys)
    assert final.Status == 0x0000
    assert {archive.study_label(r.StudyInstanceUID) for r in found} == studies


def test_uid_list_and_universal_matching(dicom_server, archive):
    found, _ = find(dicom_server, QueryRetrieveLevel="STUDY", PatientName="", PatientSex="",
                    StudyInstanceUID=[archive.studies["A"], archive.studies["C"]])
    assert {(archive.study_label(r.StudyInstanceUID), str(r.PatientName), r.PatientSex) for r in found} == {
        ("A", "Chen^Jing", "F"), ("C", "Zhang^Wei", "M")}


def test_keys_the_index_lacks_are_ignored_and_returned_empty(dicom_server, archive):
    ident = identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=archive.studies["C"], PatientAge="045Y",
                       ReferencedStudySequence=[], InstanceAvailability="")
    block = ident.private_block(0x0011, "ALLIANCE TEST", create=True)
    block.add_new(0x01, "LO", "private")
    assoc = associate(dicom_server, STUDY_FIND)
    try:
        [(pending, found), (final, _)] = list(assoc.send_c_find(ident, STUDY_FIND))
    finally:
        assoc.release()
    assert pending.Status == 0xFF00 and final.Status == 0x0000
    assert found.PatientAge == "" and found.ReferencedStudySequence == []
    assert found.InstanceAvailability == "ONLINE"
    assert not any(e.tag.is_private for e in found)
    assert found.StudyInstanceUID == archive.studies["C"]


def test_names_in_other_scripts_are_answered_in_utf8(dicom_server, archive):
    found, _ = find(dicom_server, QueryRetrieveLevel="PATIENT", model=PATIENT_FIND, PatientID="QR-3003",
                    PatientName="")
    [patient] = found
    assert patient.SpecificCharacterSet == "ISO_IR 192" and str(patient.PatientName) == "王^芳"
    found, _ = find(dicom_server, QueryRetrieveLevel="STUDY", SpecificCharacterSet="ISO_IR 192",
                    PatientName="王*", StudyInstanceUID="")
    assert uids(found, "StudyInstanceUID") == {archive.studies["D"]}


def test_cancel_stops_the_matches(dicom_server, archive):
    """The C-FIND is held on a lock of the index table while its C-CANCEL arrives; once let go, the SCP
    answers Cancel instead of its matches. (A SQLite reader in WAL mode cannot be held this way.)"""
    if not dicom_server.database_url:
        pytest.skip("only a PostgreSQL lock can hold a C-FIND mid-way")
    import asyncpg

    assoc = associate(dicom_server, STUDY_FIND)
    cx = assoc.accepted_contexts[0]
    responses: list = []

    async def scenario() -> None:
        lock = await asyncpg.connect(dicom_server.database_url)
        try:
            async with lock.transaction():
                await lock.execute("LOCK TABLE dicom_instances IN ACCESS EXCLUSIVE MODE")
                query = asyncio.create_task(asyncio.to_thread(lambda: responses.extend(assoc.send_c_find(
                    identifier(QueryRetrieveLevel="IMAGE", SOPInstanceUID=""), STUDY_FIND, msg_id=7))))
                waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'dicom_instances'::regclass"
                while not await lock.fetchval(waiting):  # noqa: ASYNC110 (polling the SCP's query: no event to await)
                    await asyncio.sleep(0.05)
                assoc.send_c_cancel(7, cx.context_id)
                await asyncio.sleep(1)  # for the SCP to read the C-CANCEL while its query still waits
            await query
        finally:
            await lock.close()

    try:
        asyncio.run(scenario())
    finally:
        assoc.release()
    assert [rsp.Status for rsp, _ in responses] == [0xFE00]
    assert any('"dicom query cancelled"' in line for line in dicom_server.log_lines())


@pytest.mark.parametrize("model, keys, code, comment", [
    (STUDY_FIND, dict(PatientID="QR-1001"), 0xA900, "QueryRetrieveLevel is missing"),
    (STUDY_FIND, dict(QueryRetrieveLevel="SERIESX"), 0xA900, "is not one of STUDY/SERIES/IMAGE"),
    (STUDY_FIND, dict(QueryRetrieveLevel="PATIENT"), 0xA900, "is not one of STUDY/SERIES/IMAGE"),
    (PATIENT_FIND, dict(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.*"), 0xA900, "must be UIDs"),
    (STUDY_FIND, dict(QueryRetrieveLevel="STUDY", StudyDate="2025-01-01"), 0xC000, "malformed bound"),
    (STUDY_FIND, dict(QueryRetrieveLevel="STUDY", StudyTime="08:00-9"), 0xC000, "malformed bound"),
    (STUDY_FIND, dict(QueryRetrieveLevel="STUDY", StudyDate="-"), 0xC000, "has no bounds"),
    (STUDY_FIND, dict(QueryRetrieveLevel="SERIES", SeriesNumber=raw("SeriesNumber", "IS", b"first ")), 0xC000,
     "must be an integer"),
], ids=["no-level", "bad-level", "patient-level-in-study-root", "wildcard-study-uid", "bad-date-range",
        "bad-time-range", "range-without-bounds", "bad-number"])
@invalid_values
def test_refused_queries(dicom_server, archive, model, keys, code, comment):
    found, final = find(dicom_server, model, **keys)
    assert found == []
    assert final.Status == code
    assert comment in final.ErrorComment
    if code == 0xA900:
        assert final.OffendingElement is not None
    assert any('"dicom query refused"' in line for line in dicom_server.log_lines())


def test_undecodable_identifier(dicom_server, archive):
    """An element of undefined length whose value is not items: pydicom cannot read past it."""
    found, final = find(dicom_server, QueryRetrieveLevel="STUDY",
                        ReferencedStudySequence=raw("ReferencedStudySequence", "OB", b"\x01\x02", 0xFFFFFFFF))
    assert found == []
    assert final.Status == 0xC000 and final.ErrorComment.startswith("Cannot decode the identifier")


def _rename_index_table(server, old: str, new: str) -> None:
    run_sql(server, f"ALTER TABLE {old} RENAME TO {new}")


def test_database_failure_is_out_of_resources(dicom_server, archive):
    _rename_index_table(dicom_server, "dicom_instances", "dicom_instances_away")
    try:
        found, final = find(dicom_server, QueryRetrieveLevel="STUDY", StudyInstanceUID="")
        received, _, get_final, _ = get(dicom_server, [(CTImageStorage, ExplicitVRLittleEndian)],
                                        QueryRetrieveLevel="STUDY", StudyInstanceUID=archive.studies["A"])
    finally:
        _rename_index_table(dicom_server, "dicom_instances_away", "dicom_instances")
    assert found == [] and final.Status == 0xA700 and final.ErrorComment.startswith("Query failed")
    assert get_final.Status == 0xA701 and received.raw == {}
    lines = dicom_server.log_lines()
    assert any('"dicom query failed"' in line for line in lines)
    assert any('"dicom retrieve failed"' in line for line in lines)
    assert len(find(dicom_server, QueryRetrieveLevel="STUDY", StudyInstanceUID="")[0]) == len(STUDIES)


# ---- C-MOVE ----

def test_movescu_to_storescp_sends_the_files_unchanged(dicom_server, archive, peers):
    peers.viewer.clear()
    run = subprocess.run(
        ["movescu", "-S", "-aec", dicom_server.ae_title, "-aem", peers.viewer.ae_title,
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={archive.studies['A']}\\{archive.studies['B']}",
         "127.0.0.1", str(dicom_server.dicom_port)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    received = peers.viewer.received()
    expected = archive.in_studies("A", "B")
    assert set(received) == {i.uid for i in expected}
    for instance in expected:
        got = pydicom.dcmread(received[instance.uid])
        assert got.file_meta.TransferSyntaxUID == instance.ds.file_meta.TransferSyntaxUID
        assert dataset_bytes(received[instance.uid]) == dataset_bytes(instance.path)


def test_move_reports_each_sub_operation(dicom_server, archive, peers):
    peers.viewer.clear()
    pending, final, _ = move(dicom_server, "VIEWER", PATIENT_MOVE, QueryRetrieveLevel="SERIES",
                             PatientID="QR-1001", StudyInstanceUID=archive.studies["A"],
                             SeriesInstanceUID=archive.series["A1"])
    assert [(p.Status, p.NumberOfRemainingSuboperations, p.NumberOfCompletedSuboperations) for p in pending] == [
        (0xFF00, 1, 1), (0xFF00, 0, 2)]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 2
    assert final.NumberOfFailedSuboperations == 0
    assert set(peers.viewer.received()) == {i.uid for i in archive.instances["A1"]}


def test_move_a_patient(dicom_server, archive, peers):
    peers.viewer.clear()
    _, final, _ = move(dicom_server, "VIEWER", PATIENT_MOVE, QueryRetrieveLevel="PATIENT", PatientID="QR-2002")
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 1
    assert set(peers.viewer.received()) == {archive.instances["C1"][0].uid}


def test_move_nothing_matching_succeeds_with_no_sub_operations(dicom_server, archive, peers):
    _, final, _ = move(dicom_server, "VIEWER", QueryRetrieveLevel="STUDY", StudyInstanceUID=generate_uid())
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 0


def test_move_partly_refused_by_the_destination_is_a_warning(dicom_server, archive, peers):
    """The legacy peer takes only uncompressed syntaxes: the JPEG 2000 and RLE instances are not transcoded
    for it, they fail, and the rest arrives."""
    peers.legacy.clear()
    pending, final, failed = move(dicom_server, "LEGACY", QueryRetrieveLevel="STUDY",
                                  StudyInstanceUID=[archive.studies["A"], archive.studies["B"]])
    compressed = {i.uid for i in archive.in_studies("B")}
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (3, 2)
    assert set(as_list(failed.FailedSOPInstanceUIDList)) == compressed
    assert [p.NumberOfRemainingSuboperations for p in pending] == [4, 3, 2, 1, 0]
    assert set(peers.legacy.received()) == {i.uid for i in archive.in_studies("A")}


def test_move_all_refused_is_a_failure(dicom_server, archive, peers):
    _, final, failed = move(dicom_server, "LEGACY", QueryRetrieveLevel="STUDY", StudyInstanceUID=archive.studies["B"])
    assert final.Status == 0xA702 and final.NumberOfFailedSuboperations == 2
    assert set(as_list(failed.FailedSOPInstanceUIDList)) == {i.uid for i in archive.in_studies("B")}


@pytest.mark.parametrize("destination", ["NOBODY", "OFFLINE"])
def test_move_to_an_unknown_or_unreachable_destination(dicom_server, archive, destination):
    pending, final, _ = move(dicom_server, destination, QueryRetrieveLevel="STUDY",
                             StudyInstanceUID=archive.studies["C"])
    assert pending == [] and final.Status == 0xA801
    if destination == "NOBODY":
        assert any('"dicom move destination unknown"' in line and "NOBODY" in line
                   for line in dicom_server.log_lines())


def test_movescu_unknown_destination(dicom_server, archive):
    run = subprocess.run(["movescu", "-v", "-S", "-aec", dicom_server.ae_title, "-aem", "NOBODY",
                          "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={archive.studies['C']}",
                          "127.0.0.1", str(dicom_server.dicom_port)], capture_output=True, text=True, timeout=60)
    assert "Refused: MoveDestinationUnknown" in run.stdout + run.stderr


# ---- C-GET ----

def test_getscu_retrieves_a_series(dicom_server, archive, tmp_path):
    run = subprocess.run(
        ["getscu", "-S", "+B", "-od", str(tmp_path), "-aec", dicom_server.ae_title,
         "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={archive.studies['A']}",
         "-k", f"SeriesInstanceUID={archive.series['A1']}", "127.0.0.1", str(dicom_server.dicom_port)],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    received = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in tmp_path.iterdir()}
    assert set(received) == {i.uid for i in archive.instances["A1"]}
    for instance in archive.instances["A1"]:
        assert pydicom.dcmread(received[instance.uid]) == instance.ds
        assert dataset_bytes(received[instance.uid]) == dataset_bytes(instance.path)


def test_get_sends_compressed_instances_byte_for_byte(dicom_server, archive):
    storage = [(SecondaryCaptureImageStorage, JPEG2000), (MRImageStorage, RLE),
               (MRImageStorage, ExplicitVRLittleEndian)]
    received, pending, final, _ = get(dicom_server, storage, QueryRetrieveLevel="STUDY",
                                      StudyInstanceUID=archive.studies["B"])
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 2
    assert len(pending) == 2
    for instance in archive.in_studies("B"):
        assert received.raw[instance.uid] == dataset_bytes(instance.path)
        assert received.syntaxes[instance.uid] == instance.ds.file_meta.TransferSyntaxUID


def test_get_an_image(dicom_server, archive):
    wanted = archive.instances["A1"][1]
    received, _, final, _ = get(dicom_server, [(CTImageStorage, ExplicitVRLittleEndian)], PATIENT_GET,
                                QueryRetrieveLevel="IMAGE", PatientID="QR-1001", StudyInstanceUID=archive.studies["A"],
                                SeriesInstanceUID=archive.series["A1"], SOPInstanceUID=wanted.uid)
    assert final.Status == 0x0000 and set(received.raw) == {wanted.uid}


def test_get_without_the_stored_syntax_is_not_transcoded(dicom_server, archive):
    received, _, final, failed = get(dicom_server, [(SecondaryCaptureImageStorage, ExplicitVRLittleEndian),
                                                    (MRImageStorage, ExplicitVRLittleEndian)],
                                     QueryRetrieveLevel="STUDY", StudyInstanceUID=archive.studies["B"])
    assert received.raw == {}
    assert final.Status == 0xA702 and final.NumberOfFailedSuboperations == 2
    assert set(as_list(failed.FailedSOPInstanceUIDList)) == {i.uid for i in archive.in_studies("B")}


def test_get_cancelled(dicom_server, archive):
    received, _, final, _ = get(dicom_server, [(CTImageStorage, ExplicitVRLittleEndian)], cancel=True,
                                QueryRetrieveLevel="SERIES", StudyInstanceUID=archive.studies["A"],
                                SeriesInstanceUID=archive.series["A1"])
    assert final.Status == 0xFE00
    assert (final.NumberOfCompletedSuboperations, final.NumberOfRemainingSuboperations) == (1, 1)
    assert set(received.raw) == {archive.instances["A1"][0].uid}


def test_get_with_a_stored_file_missing(dicom_server, archive):
    """The last instance of study F loses its file: it fails as a sub-operation, the other is sent."""
    kept, lost = archive.instances["F1"]
    [path] = (dicom_server.data_dir / "dicom").rglob(f"{lost.uid}.dcm")
    path.unlink()
    received, _, final, failed = get(dicom_server, [(CTImageStorage, ExplicitVRLittleEndian)],
                                     QueryRetrieveLevel="STUDY", StudyInstanceUID=archive.studies["F"])
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 1)
    assert as_list(failed.FailedSOPInstanceUIDList) == [lost.uid]
    assert set(received.raw) == {kept.uid}
    assert any('"dicom stored instance unreadable"' in line and lost.uid in line
               for line in dicom_server.log_lines())


# ---- refused retrieves ----

RETRIEVE_REFUSALS = [
    (dict(QueryRetrieveLevel="STUDY"), "A STUDY retrieve needs StudyInstanceUID"),
    (dict(QueryRetrieveLevel="STUDY", StudyInstanceUID="*"), "A STUDY retrieve needs StudyInstanceUID"),
    (dict(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2*", SeriesInstanceUID="1.2.3"), "must be UIDs"),
    (dict(QueryRetrieveLevel="WARD", StudyInstanceUID="1.2.3"), "is not one of STUDY/SERIES/IMAGE"),
]
REFUSAL_IDS = ["no-study-uid", "wildcard-study-uid", "wildcard-above", "bad-level"]


@pytest.mark.parametrize("keys, comment", RETRIEVE_REFUSALS, ids=REFUSAL_IDS)
@invalid_values
def test_refused_get(dicom_server, archive, keys, comment):
    received, _, final, _ = get(dicom_server, [(CTImageStorage, ExplicitVRLittleEndian)], **keys)
    assert final.Status == 0xA900 and comment in final.ErrorComment
    assert received.raw == {}


@pytest.mark.parametrize("keys, comment", RETRIEVE_REFUSALS, ids=REFUSAL_IDS)
@invalid_values
def test_refused_move(dicom_server, archive, peers, keys, comment):
    peers.viewer.clear()
    _, final, _ = move(dicom_server, "VIEWER", **keys)
    assert final.Status == 0xA900 and comment in final.ErrorComment
    assert peers.viewer.received() == {}
    assert any('"dicom retrieve refused"' in line for line in dicom_server.log_lines())


# ---- configuration ----

def test_malformed_peer_table_stops_the_start(tmp_path):
    exe = Path(sys.executable).parent / "fhir-server"
    run = subprocess.run([str(exe), "dicom", "--port", "0", "--data-dir", str(tmp_path)],
                         env={"FHIR_DICOM_PEERS": "VIEWER"}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "FHIR_DICOM_PEERS entry 'VIEWER' is not AE=host:port" in run.stderr
