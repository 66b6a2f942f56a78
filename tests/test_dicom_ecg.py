"""ECG carts that speak DICOM: a waveform sent with storescu becomes an ECG Observation of the study's
patient and is triaged at once; a critical one leaves a stat referral and a Flag."""

from __future__ import annotations

import shutil
import time

import pydicom
import pytest
from dicom_data import pydicom_file, storescu, wait_for_study
from ecg_signals import synthesise
from pydicom.uid import generate_uid

from fhir_server.ecg.dicom_waveform import dataset_from_waveform

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed")


def wait_for(client, path: str, params: dict, timeout: float = 15.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        entries = client.get(path, params=params).json().get("entry", [])
        if entries or time.monotonic() > deadline:
            return [e["resource"] for e in entries]
        time.sleep(0.1)


def test_dicom_ecg_is_triaged(dicom_server, dicom_client, tmp_path):
    ds = pydicom.dcmread(pydicom_file("waveform_ecg.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.PatientID = "ECG-0001"
    path = tmp_path / "ecg.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert storescu(dicom_server.dicom_port, path).returncode == 0

    study = wait_for_study(dicom_client, ds.StudyInstanceUID)
    [ecg] = wait_for(dicom_client, "/Observation", {"identifier": f"urn:dicom:uid|urn:oid:{ds.SOPInstanceUID}"})
    assert ecg["subject"] == study["subject"]
    assert ecg["partOf"] == [{"reference": f"ImagingStudy/{study['id']}"}]
    assert ecg["code"]["coding"][0]["code"] == "11524-6"
    assert len(ecg["component"]) == len(ds.WaveformSequence[0].ChannelDefinitionSequence)
    derived = wait_for(dicom_client, "/Observation", {"derived-from": f"Observation/{ecg['id']}"})
    assert any(o["code"]["coding"][0]["code"] == "8867-4" for o in derived)  # heart rate


def test_critical_dicom_ecg_is_referred(dicom_server, dicom_client, tmp_path):
    patient = dicom_client.post("/Patient", json={
        "resourceType": "Patient", "identifier": [{"system": "urn:dicom:patient-id", "value": "ECG-0002"}],
        "name": [{"family": "Zhang"}]}).json()
    ds = dataset_from_waveform(synthesise("asystole", duration=10.0, fs=500.0, seed=3))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID = "ECG-0002"
    ds.Modality = "ECG"
    path = tmp_path / "asystole.dcm"
    ds.save_as(path, enforce_file_format=True)
    run = storescu(dicom_server.dicom_port, path)
    assert run.returncode == 0, run.stderr

    [referral] = wait_for(dicom_client, "/ServiceRequest", {"subject": f"Patient/{patient['id']}"})
    assert referral["priority"] == "stat"
    [flag] = wait_for(dicom_client, "/Flag", {"subject": f"Patient/{patient['id']}"})
    assert flag["status"] == "active"
    [ecg] = wait_for(dicom_client, "/Observation", {"identifier": f"urn:dicom:uid|urn:oid:{ds.SOPInstanceUID}"})
    assert ecg["subject"] == {"reference": f"Patient/{patient['id']}"}
