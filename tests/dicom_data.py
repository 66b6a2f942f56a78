"""DICOM test data: pydicom's bundled files, and copies of them with new UIDs and chosen attributes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset


def pydicom_file(name: str) -> Path:
    return Path(get_testdata_file(name))


def variant(source: str, out_dir: Path, *, study_uid: str | None = None, series_uid: str | None = None,
            name: str | None = None, **attributes) -> tuple[Path, pydicom.Dataset]:
    """A copy of a pydicom test file with a fresh SOP Instance UID (and the given study/series UIDs and
    attributes), written as a Part 10 file; returns its path and dataset."""
    ds = pydicom.dcmread(pydicom_file(source))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    path = out_dir / (name or f"{ds.SOPInstanceUID}.dcm")
    ds.save_as(path, enforce_file_format=True)
    return path, ds


def storescu(port: int, *files: Path, ae_title: str = "ALLIANCE", extra: tuple[str, ...] = ()):
    """Send files with dcmtk's storescu (one association); returns the CompletedProcess."""
    return subprocess.run(["storescu", "-aet", "CLINIC01", "-aec", ae_title, *extra, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=120)


def wait_for_study(client, study_uid: str, *, instances: int | None = None, timeout: float = 10.0) -> dict:
    """The ImagingStudy of a study once it is searchable (and has `instances` instances, if given)."""
    deadline = time.monotonic() + timeout
    while True:
        bundle = client.get("/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}).json()
        for entry in bundle.get("entry", []):
            if instances is None or entry["resource"]["numberOfInstances"] == instances:
                return entry["resource"]
        if time.monotonic() > deadline:
            raise AssertionError(f"ImagingStudy for {study_uid} not searchable: {bundle}")
        time.sleep(0.1)


def send_unchanged(port: int, *files: Path, ae_title: str = "ALLIANCE") -> list[int]:
    """C-STORE files over one pynetdicom association, each as its raw bytes in its own transfer syntax
    (STORE_SEND_CHUNKED_DATASET), so the SCP keeps exactly those bytes; returns the statuses."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="CLINIC02")
    heads = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    for sop_class, syntax in dict.fromkeys((h.SOPClassUID, h.file_meta.TransferSyntaxUID) for h in heads):
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established, "the SCP refused the association"
    try:
        return [int(assoc.send_c_store(path).Status) for path in files]
    finally:
        assoc.release()


def dataset_bytes(path: Path) -> bytes:
    """A Part 10 file's dataset as encoded, without the preamble and file meta information."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]
