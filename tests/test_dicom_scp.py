"""The DICOM SCP driven by real peers (dcmtk's echoscu/storescu, pynetdicom), then checked through
FHIR search: ImagingStudy, its Patient and its order, on both backends."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from dicom_data import pydicom_file, storescu, variant, wait_for_study
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed")


def send(server, dataset_or_path, *, contexts=(CTImageStorage, MRImageStorage)) -> int:
    """C-STORE with pynetdicom as the peer; returns the status the SCP answered. A file is sent as its
    raw bytes (STORE_SEND_CHUNKED_DATASET), not decoded and re-encoded, so damage reaches the SCP."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="PYNETDICOM")
    for context in contexts:  # one context per transfer syntax: the raw bytes need their own accepted
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            ae.add_requested_context(context, syntax)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
    assert assoc.is_established
    try:
        answer = assoc.send_c_store(dataset_or_path)
        return int(answer.Status)
    finally:
        assoc.release()


def stored_files(server) -> list[Path]:
    return sorted((server.data_dir / "dicom").rglob("*.dcm"))


def test_echo(dicom_server):
    run = subprocess.run(["echoscu", "-aec", dicom_server.ae_title, "127.0.0.1", str(dicom_server.dicom_port)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr


def test_store_makes_a_searchable_imaging_study(dicom_server, dicom_client, tmp_path):
    path, ds = variant("CT_small.dcm", tmp_path, PatientID="VC-0001", PatientName="Wang^Fang",
                       PatientBirthDate="19580312", PatientSex="F", BodyPartExamined="CHEST")
    run = storescu(dicom_server.dicom_port, path)
    assert run.returncode == 0, run.stderr
    study = wait_for_study(dicom_client, ds.StudyInstanceUID)

    patient_ref = study["subject"]["reference"]
    patient = dicom_client.get(f"/{patient_ref}").json()
    assert patient["identifier"] == [{"system": "urn:dicom:patient-id", "value": "VC-0001"}]
    assert patient["name"][0]["family"] == "Wang" and patient["name"][0]["given"] == ["Fang"]
    assert patient["birthDate"] == "1958-03-12" and patient["gender"] == "female"
    assert patient["meta"]["tag"][0]["code"] == "needs-reconciliation"

    found = dicom_client.get("/ImagingStudy", params={"patient": patient_ref, "modality": "CT"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [study["id"]]
    assert dicom_client.get("/ImagingStudy", params={"patient": patient_ref, "modality": "MR"}).json()["total"] == 0

    assert study["status"] == "available" and study["numberOfSeries"] == 1 and study["numberOfInstances"] == 1
    series = study["series"][0]
    assert series["uid"] == ds.SeriesInstanceUID
    assert series["modality"]["code"] == "CT"
    assert series["bodySite"]["code"] == "43799004"
    instance = series["instance"][0]
    assert instance["uid"] == ds.SOPInstanceUID
    assert instance["sopClass"] == {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{ds.SOPClassUID}"}
    assert study["started"].startswith("2004-01-19T07:27:30")
    endpoint = dicom_client.get(f"/{study['endpoint'][0]['reference']}").json()
    assert endpoint["address"].endswith("/dicomweb")

    # the file is kept as it arrived (storescu itself leaves out the dataset's trailing padding)
    [kept] = [f for f in stored_files(dicom_server) if f.name == f"{ds.SOPInstanceUID}.dcm"]
    sent, received = pydicom.dcmread(path), pydicom.dcmread(kept)
    del sent[0xFFFCFFFC]
    assert received == sent
    assert received.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert sent.PixelData in kept.read_bytes()


def test_known_patient_and_order_are_linked(dicom_server, dicom_client, tmp_path):
    patient = dicom_client.post("/Patient", json={
        "resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.156.112604.1", "value": "P-778"}],
        "name": [{"family": "Li"}]}).json()
    order = dicom_client.post("/ServiceRequest", json={
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "identifier": [{"system": "urn:alliance:accession", "value": "ACC-2026-0042"}],
        "subject": {"reference": f"Patient/{patient['id']}"}, "code": {"text": "Chest CT"}}).json()
    path, ds = variant("CT_small.dcm", tmp_path, PatientID="P-778", IssuerOfPatientID="1.2.156.112604.1",
                       AccessionNumber="ACC-2026-0042", ReferringPhysicianName="Zhao^Min")
    assert storescu(dicom_server.dicom_port, path).returncode == 0
    study = wait_for_study(dicom_client, ds.StudyInstanceUID)
    assert study["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert study["basedOn"] == [{"reference": f"ServiceRequest/{order['id']}"}]
    assert study["referrer"] == {"display": "Min Zhao"}
    assert {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
            "value": "ACC-2026-0042"} in study["identifier"]
    assert dicom_client.get("/Patient", params={"identifier": "P-778"}).json()["total"] == 1  # none created


def test_a_burst_is_one_version_and_later_instances_update_it(dicom_server, dicom_client, tmp_path):
    study_uid, series_uid = generate_uid(), generate_uid()
    files = [variant("CT_small.dcm", tmp_path, study_uid=study_uid, series_uid=series_uid, InstanceNumber=n)[0]
             for n in range(1, 21)]
    assert storescu(dicom_server.dicom_port, *files).returncode == 0
    study = wait_for_study(dicom_client, study_uid, instances=20)
    time.sleep(1.0)  # past the quiet period: nothing more may be written for this burst
    history = dicom_client.get(f"/ImagingStudy/{study['id']}/_history").json()
    assert history["total"] == 1
    assert [i["number"] for i in study["series"][0]["instance"]] == list(range(1, 21))

    more, _ = variant("MR_small.dcm", tmp_path, study_uid=study_uid)
    assert storescu(dicom_server.dicom_port, more).returncode == 0
    study = wait_for_study(dicom_client, study_uid, instances=21)
    assert study["meta"]["versionId"] == "2"
    assert study["numberOfSeries"] == 2
    assert sorted(m["code"] for m in study["modality"]) == ["CT", "MR"]


def test_duplicate_instance_is_idempotent(dicom_server, dicom_client, tmp_path):
    path, ds = variant("CT_small.dcm", tmp_path)
    assert storescu(dicom_server.dicom_port, path).returncode == 0
    study = wait_for_study(dicom_client, ds.StudyInstanceUID)
    assert send(dicom_server, path) == 0x0000
    assert storescu(dicom_server.dicom_port, path).returncode == 0
    time.sleep(1.0)
    again = wait_for_study(dicom_client, ds.StudyInstanceUID)
    assert again["meta"]["versionId"] == study["meta"]["versionId"] == "1"
    assert len([f for f in stored_files(dicom_server) if f.name == f"{ds.SOPInstanceUID}.dcm"]) == 1


def test_the_dataset_uid_decides_a_duplicate_not_the_announced_one(dicom_server, dicom_client, tmp_path):
    """The duplicate check starts on the UID the C-STORE request announces (the file meta's, as a
    chunked send takes it); a dataset that carries another UID is judged by its own."""
    first, ds = variant("CT_small.dcm", tmp_path)
    assert send(dicom_server, first) == 0x0000
    announced_old, new = variant("CT_small.dcm", tmp_path, study_uid=ds.StudyInstanceUID,
                                 series_uid=ds.SeriesInstanceUID, name="announced-old.dcm")
    new.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID  # announces the stored instance
    new.save_as(announced_old, enforce_file_format=False)
    assert send(dicom_server, announced_old) == 0x0000
    wait_for_study(dicom_client, ds.StudyInstanceUID, instances=2)  # stored: it is a new instance
    announced_new, same = variant("CT_small.dcm", tmp_path, study_uid=ds.StudyInstanceUID,
                                  series_uid=ds.SeriesInstanceUID, name="announced-new.dcm")
    same.SOPInstanceUID = ds.SOPInstanceUID  # the stored instance again, announced as a new one
    same.save_as(announced_new, enforce_file_format=False)
    assert send(dicom_server, announced_new) == 0x0000
    time.sleep(1.0)
    assert wait_for_study(dicom_client, ds.StudyInstanceUID, instances=2)["numberOfInstances"] == 2
    assert sorted(f.name for f in stored_files(dicom_server) if ds.StudyInstanceUID in str(f)) == sorted(
        [f"{ds.SOPInstanceUID}.dcm", f"{new.SOPInstanceUID}.dcm"])


def _rejected(server, dicom_client, path: Path, study_uid: str, expected_status: int) -> None:
    before = stored_files(server)
    assert send(server, path) == expected_status
    time.sleep(0.8)
    assert stored_files(server) == before
    found = dicom_client.get("/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"})
    assert found.json()["total"] == 0
    assert any('"dicom instance rejected"' in line and f"0x{expected_status:04X}" in line
               for line in server.log_lines())


def test_truncated_dataset_is_refused(dicom_server, dicom_client, tmp_path):
    path, ds = variant("CT_small.dcm", tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-1000])  # cut inside the pixel data
    _rejected(dicom_server, dicom_client, path, ds.StudyInstanceUID, 0xC000)


def test_truncated_inside_the_header_is_refused(dicom_server, dicom_client, tmp_path):
    path, ds = variant("CT_small.dcm", tmp_path)
    raw = path.read_bytes()
    parsed = pydicom.dcmread(path)
    cut = parsed["PatientName"].value  # cut a few bytes into an element's value
    offset = raw.index(str(cut).encode())
    path.write_bytes(raw[:offset + 2])
    _rejected(dicom_server, dicom_client, path, ds.StudyInstanceUID, 0xC000)


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_uid_is_refused(dicom_server, dicom_client, tmp_path, missing):
    path, ds = variant("CT_small.dcm", tmp_path)
    study_uid = ds.StudyInstanceUID
    delattr(ds, missing)
    ds.save_as(path, enforce_file_format=True)
    _rejected(dicom_server, dicom_client, path, study_uid, 0xA900)


def test_dataset_not_matching_its_sop_class_is_refused(dicom_server, dicom_client, tmp_path):
    """An MR dataset sent on the CT Image Storage context."""
    path, ds = variant("MR_small.dcm", tmp_path)
    ds = pydicom.dcmread(path)
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CTImageStorage, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", dicom_server.dicom_port, ae_title=dicom_server.ae_title)
    try:
        ds.SOPClassUID = CTImageStorage  # lets pynetdicom pick the CT context ...
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.save_as(path, enforce_file_format=True)
        raw = bytearray(path.read_bytes())
        # ... then the dataset itself says MR again (same length UID), as a misconfigured modality would
        at = raw.rindex(str(CTImageStorage).encode())
        raw[at:at + len(CTImageStorage)] = b"1.2.840.10008.5.1.4.1.1.4\x00"[:len(CTImageStorage)]
        path.write_bytes(bytes(raw))
        answer = assoc.send_c_store(path)
        assert int(answer.Status) == 0xA900
    finally:
        assoc.release()


def test_unknown_sop_class_is_not_accepted(dicom_server, dicom_client, tmp_path):
    path, ds = variant("CT_small.dcm", tmp_path, SOPClassUID="1.2.826.0.1.3680043.9.9999.1")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.save_as(path, enforce_file_format=True)
    run = storescu(dicom_server.dicom_port, path, extra=("-R",))  # propose only what the files need
    assert run.returncode != 0
    assert dicom_client.get("/ImagingStudy", params={
        "identifier": f"urn:dicom:uid|urn:oid:{ds.StudyInstanceUID}"}).json()["total"] == 0


def test_anonymous_study_gets_its_own_patient(dicom_server, dicom_client, tmp_path):
    path, ds = variant("CT_small.dcm", tmp_path, PatientID="")
    assert storescu(dicom_server.dicom_port, path).returncode == 0
    study = wait_for_study(dicom_client, ds.StudyInstanceUID)
    patient = dicom_client.get(f"/{study['subject']['reference']}").json()
    assert patient["identifier"] == [{"system": "urn:dicom:study-patient", "value": ds.StudyInstanceUID}]


@pytest.mark.parametrize("source, propose", [("JPEG2000.dcm", "-xw"), ("SC_rgb_jpeg_dcmtk.dcm", "-xy"),
                                             ("MR_small_RLE.dcm", "-xr")])
def test_compressed_transfer_syntax_is_kept(dicom_server, dicom_client, tmp_path, source, propose):
    ds = pydicom.dcmread(pydicom_file(source))
    path = tmp_path / source
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)
    run = storescu(dicom_server.dicom_port, path, extra=(propose,))  # the compressed syntax and uncompressed ones
    assert run.returncode == 0, run.stderr
    wait_for_study(dicom_client, ds.StudyInstanceUID)
    [kept] = [f for f in stored_files(dicom_server) if f.name == f"{ds.SOPInstanceUID}.dcm"]
    assert pydicom.dcmread(kept).file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found += [int(c) for c in children]
    return found


def test_scp_survives_its_parser_process_dying(dicom_server, dicom_client, tmp_path):
    """The parser process is killed (as the OOM killer would): the next instance is still stored."""
    path, ds = variant("CT_small.dcm", tmp_path)
    assert storescu(dicom_server.dicom_port, path).returncode == 0  # the pool has started its process
    wait_for_study(dicom_client, ds.StudyInstanceUID)
    [scp] = [c for c in _children(dicom_server.process.pid)
             if b"dicom" in Path(f"/proc/{c}/cmdline").read_bytes()]
    parsers = [c for c in _children(scp) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert parsers, "the SCP runs no parser process"
    for pid in parsers:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    again, ds2 = variant("CT_small.dcm", tmp_path)
    run = storescu(dicom_server.dicom_port, again)
    assert run.returncode == 0, run.stderr
    wait_for_study(dicom_client, ds2.StudyInstanceUID)
    assert any('"dicom parser process died; restarting it"' in line for line in dicom_server.log_lines())
