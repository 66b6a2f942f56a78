"""The filesystem blob store: atomic puts, and keys that cannot reach outside its root."""

from __future__ import annotations

import pytest

from fhir_server.dicom.blobs import FileBlobStore, instance_key


def test_a_blob_is_kept_under_its_key_and_read_back(tmp_path):
    blobs = FileBlobStore(tmp_path / "dicom")
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.5")
    blobs.put(key, b"DICM")
    assert blobs.exists(key) and blobs.get(key) == b"DICM"
    assert (tmp_path / "dicom" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm").read_bytes() == b"DICM"
    assert [p.name for p in (tmp_path / "dicom" / "1.2.3" / "1.2.3.4").iterdir()] == ["1.2.3.4.5.dcm"]  # no temp
    blobs.delete(key)
    assert not blobs.exists(key)


@pytest.mark.parametrize("key", ["../outside.dcm", "a/../../outside.dcm", "/etc/passwd", "..", "", "."])
def test_a_key_leaving_the_store_is_refused(tmp_path, key):
    blobs = FileBlobStore(tmp_path / "dicom")
    for operation in (lambda: blobs.put(key, b"x"), lambda: blobs.get(key), lambda: blobs.exists(key),
                      lambda: blobs.delete(key)):
        with pytest.raises(ValueError, match="leaves the blob store"):
            operation()
    assert not (tmp_path / "outside.dcm").exists()


def test_a_relative_root_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blobs = FileBlobStore("data/dicom")
    blobs.put("s/i.dcm", b"x")
    assert (tmp_path / "data" / "dicom" / "s" / "i.dcm").read_bytes() == b"x"
