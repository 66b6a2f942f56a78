"""DICOMweb over real HTTP on both backends: STOW-RS uploads searchable through FHIR, QIDO-RS at every
level, WADO-RS byte for byte (instances, metadata, frames, bulk data), every refusal; and the path a
modality takes end to end: storescu -> FHIR search -> WADO-RS."""

from __future__ import annotations

import io
import re
import shutil
import uuid
from pathlib import Path
from types import SimpleNamespace

import httpx
import pydicom
import pytest
from conftest import start_server, stop_server
from dicom_data import pydicom_file, storescu, variant, wait_for_study
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

DICOM_JSON = "application/dicom+json"
BOUNDARY = "alliance-test-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
ANY_SYNTAX = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
TRUNCATED, MISMATCH = 0xC000, 0xC409


def multipart_body(payloads: list[bytes], boundary: str = BOUNDARY, part_type: str = "application/dicom") -> bytes:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: " + part_type.encode() + b"\r\n\r\n" + p
                    + b"\r\n" for p in payloads)
    return body + b"--" + boundary.encode() + b"--\r\n"


def stow(client: httpx.Client, payloads: list[bytes], study: str | None = None,
         content_type: str = STOW_TYPE) -> httpx.Response:
    path = f"/dicomweb/studies/{study}" if study else "/dicomweb/studies"
    return client.post(path, content=multipart_body(payloads), headers={"Content-Type": content_type,
                                                                         "Accept": DICOM_JSON})


def parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart response, read without the server's own parser."""
    boundary = re.search(r'boundary="?([^";]+)"?', response.headers["content-type"]).group(1).encode()
    pieces = (b"\r\n" + response.content).split(b"\r\n--" + boundary)
    assert pieces[0] == b"" and pieces[-1] in (b"--", b"--\r\n"), pieces[-1][:40]
    found = []
    for piece in pieces[1:-1]:
        head, _, body = piece[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        found.append((headers["Content-Type"], body))
    return found


def values(result: dict, tag: str) -> list:
    return result.get(tag, {}).get("Value", [])


def uids(results: list[dict], tag: str) -> list[str]:
    return [values(r, tag)[0] for r in results]


def sop(ds: pydicom.Dataset) -> str:
    return str(ds.SOPInstanceUID)


def instance_path(ds: pydicom.Dataset) -> str:
    return f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


@pytest.fixture(scope="module")
def uploaded(dicom_client, tmp_path_factory) -> SimpleNamespace:
    """Two studies of one patient sent by STOW-RS: a CT series of two and an MR; then multi-frame,
    compressed, big endian and waveform instances, each a series of its own."""
    out = tmp_path_factory.mktemp("stow")
    patient = f"DW-{uuid.uuid4().hex[:8]}"
    common = {"PatientID": patient, "PatientName": "Chen^Jing", "PatientBirthDate": "19610704", "PatientSex": "F"}
    first, second, ct_series = generate_uid(), generate_uid(), generate_uid()
    first_study = {**common, "study_uid": first, "StudyDate": "20260105", "StudyTime": "101500",
                   "AccessionNumber": "ACC-DW-1", "InstitutionName": "Lintong County Hospital"}
    ct1 = variant("CT_small.dcm", out, series_uid=ct_series, InstanceNumber=1, SeriesNumber=1, **first_study)
    ct2 = variant("CT_small.dcm", out, series_uid=ct_series, InstanceNumber=2, SeriesNumber=1, **first_study)
    mr = variant("MR_small.dcm", out, SeriesNumber=2, **first_study)
    second_study = {**common, "study_uid": second, "StudyDate": "20260302", "StudyTime": "090000",
                    "AccessionNumber": "ACC-DW-2"}
    others = {name: variant(name, out, SeriesNumber=n, **second_study) for n, name in enumerate(
        ["rtdose.dcm", "SC_rgb_rle_2frame.dcm", "JPEG2000.dcm", "examples_ybr_color.dcm", "MR_small_bigendian.dcm",
         "waveform_ecg.dcm"], start=3)}
    first_answer = stow(dicom_client, [ct1[0].read_bytes(), ct2[0].read_bytes(), mr[0].read_bytes()], study=first)
    second_answer = stow(dicom_client, [path.read_bytes() for path, _ in others.values()])
    return SimpleNamespace(patient=patient, first=first, second=second, ct_series=ct_series,
                           ct1=ct1[1], ct2=ct2[1], mr=mr[1], files={sop(ds): path for path, ds in
                                                                  [ct1, ct2, mr, *others.values()]},
                           others={name: ds for name, (_, ds) in others.items()},
                           first_answer=first_answer, second_answer=second_answer)


# ---- STOW-RS ----

def test_stow_answers_the_store_instances_response(dicom_server, uploaded):
    answer = uploaded.first_answer
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == DICOM_JSON
    body = answer.json()
    assert values(body, "00081190") == [f"{dicom_server.base_url}/dicomweb/studies/{uploaded.first}"]
    assert "00081198" not in body
    stored = body["00081199"]["Value"]
    assert [values(item, "00081155")[0] for item in stored] == [sop(uploaded.ct1), sop(uploaded.ct2),
                                                                sop(uploaded.mr)]
    assert values(stored[0], "00081150") == [str(uploaded.ct1.SOPClassUID)]
    assert values(stored[0], "00081190") == [dicom_server.base_url + instance_path(uploaded.ct1)]
    assert uploaded.second_answer.status_code == 200, uploaded.second_answer.text
    assert len(uploaded.second_answer.json()["00081199"]["Value"]) == 6


def test_stowed_study_is_found_through_fhir_search(dicom_client, uploaded):
    """The ImagingStudy is written before STOW-RS answers: searchable at once, no waiting."""
    patients = dicom_client.get("/Patient", params={"identifier": uploaded.patient}).json()
    [patient] = [e["resource"]["id"] for e in patients["entry"]]
    found = dicom_client.get("/ImagingStudy", params={"patient": f"Patient/{patient}", "modality": "CT"}).json()
    [study] = [e["resource"] for e in found["entry"]]
    assert study["identifier"][0]["value"] == f"urn:oid:{uploaded.first}"
    assert study["numberOfSeries"] == 2 and study["numberOfInstances"] == 3
    both = dicom_client.get("/ImagingStudy", params={"patient": f"Patient/{patient}"}).json()
    assert both["total"] == 2
    assert dicom_client.get(f"/ImagingStudy/{study['id']}/_history").json()["total"] == 1


def test_stow_of_a_stored_instance_changes_nothing(dicom_client, uploaded):
    answer = stow(dicom_client, [uploaded.files[sop(uploaded.ct1)].read_bytes()])
    assert answer.status_code == 200
    assert values(answer.json()["00081199"]["Value"][0], "00081155") == [sop(uploaded.ct1)]
    found = dicom_client.get("/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{uploaded.first}"})
    assert found.json()["entry"][0]["resource"]["meta"]["versionId"] == "1"


def test_stow_boundary_and_type_unquoted(dicom_client, tmp_path):
    path, ds = variant("MR_small.dcm", tmp_path)
    answer = stow(dicom_client, [path.read_bytes()],
                  content_type=f"multipart/related; boundary={BOUNDARY}; type=application/dicom")
    assert answer.status_code == 200, answer.text
    assert dicom_client.get(instance_path(ds)).status_code == 200


def test_stow_skips_preamble_and_epilogue(dicom_client, tmp_path):
    """Text before the first boundary (even a line that starts like it) and after the last is not a part."""
    path, ds = variant("MR_small.dcm", tmp_path)
    body = (f"A preamble\r\n--{BOUNDARY}-not-it\r\n\r\n".encode() + multipart_body([path.read_bytes()])
            + b"an epilogue\r\n")
    answer = dicom_client.post("/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE})
    assert answer.status_code == 200 and len(answer.json()["00081199"]["Value"]) == 1
    assert parts(dicom_client.get(instance_path(ds)))[0][1] == path.read_bytes()


# ---- QIDO-RS ----

def qido(client: httpx.Client, path: str, **params) -> list[dict]:
    answer = client.get(path, params=params, headers={"Accept": DICOM_JSON})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == DICOM_JSON
    return answer.json()


def test_qido_studies(dicom_server, dicom_client, uploaded):
    studies = qido(dicom_client, "/dicomweb/studies", PatientID=uploaded.patient)
    assert sorted(uids(studies, "0020000D")) == sorted([uploaded.first, uploaded.second])
    [first] = [s for s in studies if values(s, "0020000D") == [uploaded.first]]
    assert values(first, "00080061") == ["CT", "MR"]
    assert values(first, "00201206") == [2] and values(first, "00201208") == [3]
    assert values(first, "00100010") == [{"Alphabetic": "Chen^Jing"}]
    assert values(first, "00080020") == ["20260105"] and values(first, "00080050") == ["ACC-DW-1"]
    assert values(first, "00081190") == [f"{dicom_server.base_url}/dicomweb/studies/{uploaded.first}"]
    assert values(first, "00080056") == ["ONLINE"]
    assert "00080080" not in first  # Institution Name only when asked for

    assert qido(dicom_client, "/dicomweb/studies", **{"00100020": uploaded.patient}) == studies
    assert len(qido(dicom_client, "/dicomweb/studies", PatientID=uploaded.patient, PatientName="chen*")) == 2
    assert qido(dicom_client, "/dicomweb/studies", PatientID=uploaded.patient, PatientName="Wang*") == []
    by_date = qido(dicom_client, "/dicomweb/studies", PatientID=uploaded.patient, StudyDate="20260101-20260131")
    assert uids(by_date, "0020000D") == [uploaded.first]
    assert uids(qido(dicom_client, "/dicomweb/studies", PatientID=uploaded.patient, StudyDate="20260201-"),
                "0020000D") == [uploaded.second]
    assert uids(qido(dicom_client, "/dicomweb/studies", PatientID=uploaded.patient, ModalitiesInStudy="MR"),
                "0020000D") == sorted([uploaded.first, uploaded.second])  # the big endian MR is in the second
    assert uids(qido(dicom_client, "/dicomweb/studies", ModalitiesInStudy="RTDOSE"), "0020000D") == [uploaded.second]
    assert uids(qido(dicom_client, "/dicomweb/studies", PatientID=uploaded.patient, ModalitiesInStudy="CT\\OT"),
                "0020000D") == sorted([uploaded.first, uploaded.second])
    assert uids(qido(dicom_client, "/dicomweb/studies", StudyInstanceUID=f"{uploaded.first},{uploaded.second}"),
                "0020000D") == sorted([uploaded.first, uploaded.second])
    assert qido(dicom_client, "/dicomweb/studies", PatientID="NOBODY-HERE") == []
    assert qido(dicom_client, "/dicomweb/studies", PatientID=uploaded.patient, fuzzymatching="true") == studies

    ordered = uids(studies, "0020000D")
    page = qido(dicom_client, "/dicomweb/studies", PatientID=uploaded.patient, limit=1, offset=1)
    assert uids(page, "0020000D") == ordered[1:]
    assert qido(dicom_client, "/dicomweb/studies", PatientID=uploaded.patient, limit=1, offset=2) == []

    wanted = qido(dicom_client, "/dicomweb/studies", StudyInstanceUID=uploaded.first,
                  includefield="InstitutionName,00081030")
    assert values(wanted[0], "00080080") == ["Lintong County Hospital"]


def test_qido_series(dicom_server, dicom_client, uploaded):
    series = qido(dicom_client, f"/dicomweb/studies/{uploaded.first}/series")
    assert uids(series, "0020000E") == sorted([uploaded.ct_series, str(uploaded.mr.SeriesInstanceUID)])
    [ct] = [s for s in series if values(s, "0020000E") == [uploaded.ct_series]]
    assert values(ct, "00080060") == ["CT"] and values(ct, "00201209") == [2] and values(ct, "00200011") == [1]
    assert values(ct, "00081190") == [f"{dicom_server.base_url}/dicomweb/studies/{uploaded.first}/series/"
                                      f"{uploaded.ct_series}"]
    everywhere = qido(dicom_client, "/dicomweb/series", PatientID=uploaded.patient, Modality="MR")
    assert sorted(uids(everywhere, "0020000E")) == sorted([str(uploaded.mr.SeriesInstanceUID),
                                                           str(uploaded.others["MR_small_bigendian.dcm"]
                                                               .SeriesInstanceUID)])
    assert qido(dicom_client, f"/dicomweb/studies/{uploaded.first}/series", Modality="RTDOSE") == []
    # the URL's study and the query's disagree: nothing matches both
    assert qido(dicom_client, f"/dicomweb/studies/{uploaded.first}/series", StudyInstanceUID=uploaded.second) == []
    assert qido(dicom_client, f"/dicomweb/studies/{uploaded.first}/series", limit=1, offset=1) == series[1:]


def test_qido_instances(dicom_server, dicom_client, uploaded):
    found = qido(dicom_client, f"/dicomweb/studies/{uploaded.first}/series/{uploaded.ct_series}/instances")
    assert uids(found, "00080018") == [sop(uploaded.ct1), sop(uploaded.ct2)]
    first = found[0]
    assert values(first, "00280010") == [128] and values(first, "00280011") == [128]
    assert values(first, "00280100") == [16] and values(first, "00200013") == [1]
    assert values(first, "00080016") == [str(uploaded.ct1.SOPClassUID)]
    assert values(first, "00081190") == [dicom_server.base_url + instance_path(uploaded.ct1)]
    assert "00180050" not in first  # Slice Thickness only with includefield

    rtdose = uploaded.others["rtdose.dcm"]
    [dose] = qido(dicom_client, "/dicomweb/instances", SOPInstanceUID=sop(rtdose))
    assert values(dose, "00280008") == [15]

    everything = qido(dicom_client, f"/dicomweb/studies/{uploaded.first}/instances", includefield="all",
                      SOPInstanceUID=sop(uploaded.ct1))
    assert values(everything[0], "00180050") == [uploaded.ct1.SliceThickness]
    assert everything[0]["7FE00010"]["BulkDataURI"] == (dicom_server.base_url + instance_path(uploaded.ct1)
                                                        + "/bulkdata/7FE00010")
    named = qido(dicom_client, "/dicomweb/instances", SOPInstanceUID=sop(uploaded.ct1), includefield="00180050")
    assert values(named[0], "00180050") == [uploaded.ct1.SliceThickness]

    listed = qido(dicom_client, "/dicomweb/instances", SOPInstanceUID=f"{sop(uploaded.ct2)}\\{sop(uploaded.mr)}")
    assert sorted(uids(listed, "00080018")) == sorted([sop(uploaded.ct2), sop(uploaded.mr)])
    whole = qido(dicom_client, f"/dicomweb/studies/{uploaded.first}/instances")
    assert len(whole) == 3
    assert qido(dicom_client, f"/dicomweb/studies/{uploaded.first}/instances", limit=2, offset=1) == whole[1:]


@pytest.mark.parametrize("params, message", [
    ({"Foo": "1"}, "neither a DICOM attribute keyword nor a tag"),
    ({"99990010": "1"}, "not a known DICOM attribute tag"),
    ({"Rows": "128"}, "not a supported matching key"),
    ({"00081032.00080100": "X"}, "inside sequences"),
    ({"limit": "-1"}, "limit must be a non-negative integer"),
    ({"offset": "many"}, "offset must be a non-negative integer"),
    ({"StudyDate": "-"}, "has no bounds"),
    ({"SeriesNumber": "first"}, "must be an integer"),
    ({"includefield": "NoSuchKeyword"}, "neither a DICOM attribute keyword nor a tag"),
    ({"fuzzymatching": "maybe"}, "fuzzymatching must be true or false"),
])
def test_qido_refuses_what_it_cannot_match(dicom_client, params, message):
    answer = dicom_client.get("/dicomweb/studies", params=params)
    assert answer.status_code == 400
    assert message in answer.json()["issue"][0]["diagnostics"]


def test_qido_refuses_a_key_given_twice_and_other_media_types(dicom_client):
    answer = dicom_client.get("/dicomweb/studies?PatientID=A&00100020=B")
    assert answer.status_code == 400 and "more than once" in answer.text
    answer = dicom_client.get("/dicomweb/studies", headers={"Accept": "application/dicom+xml"})
    assert answer.status_code == 406 and "application/dicom+json" in answer.json()["issue"][0]["diagnostics"]


# ---- WADO-RS: instances ----

def test_wado_retrieves_the_files_as_sent(dicom_client, uploaded):
    answer = dicom_client.get(f"/dicomweb/studies/{uploaded.first}")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    got = parts(answer)
    sent = [uploaded.files[sop(ds)].read_bytes() for ds in (uploaded.ct1, uploaded.ct2, uploaded.mr)]
    assert [body for _, body in got] == sent  # series then instance number order
    assert got[0][0] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"

    series = parts(dicom_client.get(f"/dicomweb/studies/{uploaded.first}/series/{uploaded.ct_series}"))
    assert [body for _, body in series] == sent[:2]
    [(_, single)] = parts(dicom_client.get(instance_path(uploaded.mr)))
    assert single == sent[2]

    second = parts(dicom_client.get(f"/dicomweb/studies/{uploaded.second}"))
    assert sorted(body for _, body in second) == sorted(uploaded.files[sop(ds)].read_bytes()
                                                        for ds in uploaded.others.values())


@pytest.mark.parametrize("accept", ['multipart/related; type="application/dicom"; transfer-syntax=*',
                                    "multipart/related; type=application/dicom",
                                    "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
                                    "multipart/related", "multipart/*", "*/*",
                                    "multipart/related; type=application/dicom+xml; q=often, */*",
                                    "application/dicom+json;q=0.5, multipart/related; type=application/dicom"])
def test_wado_accepts(dicom_client, uploaded, accept):
    answer = dicom_client.get(instance_path(uploaded.ct1), headers={"Accept": accept})
    assert answer.status_code == 200
    assert parts(answer)[0][1] == uploaded.files[sop(uploaded.ct1)].read_bytes()


@pytest.mark.parametrize("accept", ["multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50",
                                    "application/dicom+json", "multipart/related; type=application/dicom+xml"])
def test_wado_refuses_what_it_cannot_produce(dicom_client, uploaded, accept):
    answer = dicom_client.get(instance_path(uploaded.ct1), headers={"Accept": accept})
    assert answer.status_code == 406
    assert "1.2.840.10008.1.2.1" in answer.json()["issue"][0]["diagnostics"]


def test_wado_a_transfer_syntax_not_every_instance_has_is_refused(dicom_client, uploaded):
    answer = dicom_client.get(f"/dicomweb/studies/{uploaded.second}", headers={
        "Accept": "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.1"})
    assert answer.status_code == 406


def test_wado_metadata(dicom_server, dicom_client, uploaded):
    study = dicom_client.get(f"/dicomweb/studies/{uploaded.first}/metadata")
    assert study.status_code == 200 and study.headers["content-type"] == DICOM_JSON
    documents = study.json()
    assert uids(documents, "00080018") == [sop(uploaded.ct1), sop(uploaded.ct2), sop(uploaded.mr)]
    ct = documents[0]
    assert values(ct, "00100010") == [{"Alphabetic": "Chen^Jing"}]
    assert values(ct, "00280010") == [128] and values(ct, "00083002") == ["1.2.840.10008.1.2.1"]
    uri = ct["7FE00010"]["BulkDataURI"]
    assert uri == dicom_server.base_url + instance_path(uploaded.ct1) + "/bulkdata/7FE00010"
    [(part_type, pixels)] = parts(dicom_client.get(uri))
    assert part_type == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert pixels == uploaded.ct1.PixelData

    series = dicom_client.get(f"/dicomweb/studies/{uploaded.first}/series/{uploaded.ct_series}/metadata").json()
    assert series == documents[:2]
    assert dicom_client.get(instance_path(uploaded.mr) + "/metadata").json() == documents[2:]
    refused = dicom_client.get(instance_path(uploaded.mr) + "/metadata",
                               headers={"Accept": "multipart/related; type=application/dicom"})
    assert refused.status_code == 406


def test_wado_bulk_data_inside_a_sequence(dicom_client, uploaded):
    """An ECG's waveform samples sit in an item of the Waveform Sequence: their URI names that path."""
    ecg = uploaded.others["waveform_ecg.dcm"]
    [document] = dicom_client.get(instance_path(ecg) + "/metadata").json()
    uri = document["54000100"]["Value"][0]["54001010"]["BulkDataURI"]
    assert uri.endswith(instance_path(ecg) + "/bulkdata/54000100/0/54001010")
    [(_, samples)] = parts(dicom_client.get(uri))
    assert samples == ecg.WaveformSequence[0].WaveformData
    single = dicom_client.get(uri, headers={"Accept": "application/octet-stream"})
    assert single.headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert single.content == samples


# ---- WADO-RS: frames ----

def test_frames_of_a_single_frame_image(dicom_client, uploaded):
    answer = dicom_client.get(instance_path(uploaded.ct1) + "/frames/1")
    assert answer.headers["content-type"].startswith('multipart/related; type="application/octet-stream"')
    [(part_type, frame)] = parts(answer)
    assert part_type == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert frame == uploaded.ct1.PixelData
    assert parts(dicom_client.get(instance_path(uploaded.ct1) + "/frames/1", headers={"Accept": ANY_SYNTAX})) == [
        (part_type, frame)]


def test_frames_of_a_native_multi_frame_image(dicom_client, uploaded):
    dose = uploaded.others["rtdose.dcm"]
    size = dose.Rows * dose.Columns * dose.BitsAllocated // 8
    answer = dicom_client.get(instance_path(dose) + "/frames/15,1,2")
    assert [body for _, body in parts(answer)] == [dose.PixelData[14 * size:], dose.PixelData[:size],
                                                   dose.PixelData[size:2 * size]]
    assert dicom_client.get(instance_path(dose) + "/frames/16").status_code == 404


def test_frames_of_big_endian_pixels_are_little_endian(dicom_client, uploaded):
    big = uploaded.others["MR_small_bigendian.dcm"]
    [(_, frame)] = parts(dicom_client.get(instance_path(big) + "/frames/1"))
    assert frame == pydicom.dcmread(pydicom_file("MR_small.dcm")).PixelData


def test_frames_of_compressed_images_are_sent_as_stored(dicom_client, uploaded):
    rle = uploaded.others["SC_rgb_rle_2frame.dcm"]
    stored = list(generate_frames(rle.PixelData, number_of_frames=2))
    answer = dicom_client.get(instance_path(rle) + "/frames/2")
    assert answer.headers["content-type"].startswith('multipart/related; type="image/dicom-rle"')
    assert parts(answer) == [("image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5", stored[1])]
    as_octets = parts(dicom_client.get(instance_path(rle) + "/frames/1,2", headers={"Accept": ANY_SYNTAX}))
    assert as_octets == [("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.5", f) for f in stored]
    # octet-stream without a transfer syntax means uncompressed, which is not kept
    refused = dicom_client.get(instance_path(rle) + "/frames/1",
                               headers={"Accept": "multipart/related; type=application/octet-stream"})
    assert refused.status_code == 406

    jpeg = uploaded.others["examples_ybr_color.dcm"]
    frames = parts(dicom_client.get(instance_path(jpeg) + "/frames/1,30",
                                    headers={"Accept": 'multipart/related; type="image/jpeg"'}))
    assert [t for t, _ in frames] == ["image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"] * 2
    assert parts(dicom_client.get(instance_path(jpeg) + "/frames/1,30",
                                  headers={"Accept": 'multipart/related; type="image/*"'})) == frames
    assert all(f.startswith(b"\xff\xd8") and f.rstrip(b"\x00").endswith(b"\xff\xd9") for _, f in frames)
    assert frames[1][1] == list(generate_frames(jpeg.PixelData, number_of_frames=30))[29]
    assert dicom_client.get(instance_path(jpeg) + "/frames/31").status_code == 404

    j2k = uploaded.others["JPEG2000.dcm"]
    single = dicom_client.get(instance_path(j2k) + "/frames/1", headers={"Accept": "image/jp2"})
    assert single.headers["content-type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.91"
    assert single.content.startswith(b"\xff\x4f\xff\x51")  # a JPEG 2000 codestream as the device made it
    # compressed pixel data as bulk data is its frames
    [(_, whole)] = parts(dicom_client.get(instance_path(j2k) + "/bulkdata/7FE00010"))
    assert whole == single.content


def test_frames_of_one_bit_pixels_that_do_not_start_on_a_byte(dicom_client, tmp_path):
    """Three 3x3 one-bit frames: 9 bits each, so frame 2 starts at bit 9."""
    frame_bits = [0b101010101, 0b111000111, 0b000011110]
    packed = (frame_bits[0] | frame_bits[1] << 9 | frame_bits[2] << 18).to_bytes(4, "little")
    path, ds = variant("CT_small.dcm", tmp_path, Rows=3, Columns=3, BitsAllocated=1, BitsStored=1, HighBit=0,
                       PixelRepresentation=0, NumberOfFrames=3, PixelData=packed)
    assert stow(dicom_client, [path.read_bytes()]).status_code == 200
    frames = parts(dicom_client.get(instance_path(ds) + "/frames/2,3,1"))
    assert [body for _, body in frames] == [bits.to_bytes(2, "little") for bits in
                                            (frame_bits[1], frame_bits[2], frame_bits[0])]


def test_frames_the_stored_pixel_data_does_not_hold(dicom_client, tmp_path):
    """Headers that promise more frames than the pixel data carries: what is there is served, the rest 404."""
    cases = [("SC_rgb_rle_2frame.dcm", {"NumberOfFrames": 3}, "Frame 3 is not in the stored pixel data"),
             ("CT_small.dcm", {"NumberOfFrames": 3}, "Frame 3 lies beyond the stored pixel data"),
             ("CT_small.dcm", {"Rows": None}, "does not say how large its frames are")]
    for source, attributes, message in cases:
        path, ds = variant(source, tmp_path, **attributes)
        assert stow(dicom_client, [path.read_bytes()]).status_code == 200
        answer = dicom_client.get(instance_path(ds) + f"/frames/{ds.get('NumberOfFrames', 1)}")
        assert answer.status_code == 404 and message in answer.json()["issue"][0]["diagnostics"], answer.text
    assert dicom_client.get(instance_path(ds) + "/bulkdata/7FE00010").status_code == 200  # the value as stored


# ---- refusals ----

@pytest.mark.parametrize("content_type", [None, "application/dicom", "application/json",
                                          f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
                                          f'multipart/mixed; boundary={BOUNDARY}'])
def test_stow_refuses_other_media_types(dicom_client, tmp_path, content_type):
    path, ds = variant("CT_small.dcm", tmp_path)
    headers = {"Content-Type": content_type} if content_type else {}
    answer = httpx.post(f"{dicom_client.base_url}/dicomweb/studies", content=multipart_body([path.read_bytes()]),
                        headers=headers)
    assert answer.status_code == 415
    assert 'multipart/related; type="application/dicom"' in answer.json()["issue"][0]["diagnostics"]
    assert dicom_client.get(instance_path(ds)).status_code == 404


def _malformed(raw: bytes) -> list[tuple[str, bytes, str]]:
    body = multipart_body([raw])
    return [
        ('multipart/related; type="application/dicom"', body, "no boundary parameter"),
        (f'multipart/related; type="application/dicom"; boundary={"x" * 71}', body, "1 to 70 characters"),
        (STOW_TYPE, body.replace(b"\r\n", b" junk\r\n", 1), "A boundary line is malformed"),
        (STOW_TYPE, body.replace(BOUNDARY.encode(), b"other-boundary"), "does not contain the boundary"),
        (STOW_TYPE, body[:-len(BOUNDARY) - 10], "without its closing boundary"),
        (STOW_TYPE, body.replace(b"\r\n\r\n", b"\r\n", 1), "no blank line"),
        (STOW_TYPE, body.replace(b"Content-Type: ", b"Content-Type ", 1), "Malformed part header"),
        (STOW_TYPE, f"--{BOUNDARY}--\r\n".encode(), "has no parts"),
        (STOW_TYPE, b"", "does not contain the boundary"),
    ]


def test_stow_refuses_malformed_multipart(dicom_client, tmp_path):
    path, ds = variant("CT_small.dcm", tmp_path)
    for content_type, body, message in _malformed(path.read_bytes()):
        answer = dicom_client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
        assert answer.status_code == 400, (message, answer.text)
        assert message in answer.json()["issue"][0]["diagnostics"]
    assert dicom_client.get(instance_path(ds)).status_code == 404


def stored_files(server) -> list[Path]:
    return sorted((server.data_dir / "dicom").rglob("*.dcm"))


def failures(answer: httpx.Response) -> list[tuple[str | None, int]]:
    return [((values(item, "00081155") or [None])[0], values(item, "00081197")[0])
            for item in answer.json()["00081198"]["Value"]]


def test_stow_stores_the_good_instances_of_a_batch_and_reports_the_truncated_one(dicom_server, dicom_client,
                                                                                tmp_path):
    study = generate_uid()
    good1, ds1 = variant("CT_small.dcm", tmp_path, study_uid=study)
    bad, bad_ds = variant("CT_small.dcm", tmp_path, study_uid=study)
    good2, ds2 = variant("MR_small.dcm", tmp_path, study_uid=study)
    answer = stow(dicom_client, [good1.read_bytes(), bad.read_bytes()[:-1000], good2.read_bytes()])
    assert answer.status_code == 202
    assert failures(answer) == [(sop(bad_ds), TRUNCATED)]
    assert "truncated" in answer.headers["warning"] and sop(bad_ds) in answer.headers["warning"]
    assert [values(i, "00081155")[0] for i in answer.json()["00081199"]["Value"]] == [sop(ds1), sop(ds2)]
    assert dicom_client.get(instance_path(bad_ds)).status_code == 404
    assert not [f for f in stored_files(dicom_server) if f.name == f"{sop(bad_ds)}.dcm"]
    assert parts(dicom_client.get(instance_path(ds1)))[0][1] == good1.read_bytes()
    assert wait_for_study(dicom_client, study, timeout=0)["numberOfInstances"] == 2


def test_stow_with_nothing_stored_is_a_conflict(dicom_client, tmp_path):
    path, ds = variant("CT_small.dcm", tmp_path)
    answer = stow(dicom_client, [path.read_bytes()[:-1000], b"not a DICOM file at all"])
    assert answer.status_code == 409
    assert failures(answer) == [(sop(ds), TRUNCATED), (None, TRUNCATED)]
    assert "00081199" not in answer.json()
    assert answer.json()["00081190"] == {"vr": "UR"}  # no study was stored to point at
    assert dicom_client.get("/ImagingStudy", params={
        "identifier": f"urn:dicom:uid|urn:oid:{ds.StudyInstanceUID}"}).json()["total"] == 0


def test_stow_to_a_study_refuses_instances_of_another(dicom_client, tmp_path):
    study = generate_uid()
    ours, ours_ds = variant("CT_small.dcm", tmp_path, study_uid=study)
    theirs, theirs_ds = variant("CT_small.dcm", tmp_path)
    answer = stow(dicom_client, [ours.read_bytes(), theirs.read_bytes()], study=study)
    assert answer.status_code == 202
    assert failures(answer) == [(sop(theirs_ds), MISMATCH)]
    assert "differs from the requested study" in answer.headers["warning"]
    assert dicom_client.get(instance_path(theirs_ds)).status_code == 404
    assert dicom_client.get(instance_path(ours_ds)).status_code == 200


def test_stow_refuses_a_part_that_is_not_dicom(dicom_client, tmp_path):
    path, ds = variant("CT_small.dcm", tmp_path)
    body = multipart_body([path.read_bytes()]).removesuffix(f"--{BOUNDARY}--\r\n".encode())
    body += multipart_body([b"{}"], part_type="application/json")
    answer = dicom_client.post("/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE})
    assert answer.status_code == 202
    assert failures(answer) == [(None, TRUNCATED)]
    assert "Part 2 is application/json" in answer.headers["warning"]


def test_unknown_uids_are_not_found(dicom_client, uploaded):
    nobody = "1.2.3.4.5.6.7.8.9"
    ct = instance_path(uploaded.ct1)
    for path, message in [
        (f"/dicomweb/studies/{nobody}", f"Study {nobody} is not stored here"),
        (f"/dicomweb/studies/{nobody}/metadata", f"Study {nobody} is not stored here"),
        (f"/dicomweb/studies/{uploaded.first}/series/{nobody}", f"Series {nobody} of study"),
        (f"/dicomweb/studies/{uploaded.first}/series/{nobody}/metadata", f"Series {nobody} of study"),
        (f"/dicomweb/studies/{uploaded.first}/series/{uploaded.ct_series}/instances/{nobody}",
         f"Instance {nobody} of series"),
        (f"/dicomweb/studies/{uploaded.second}/series/{uploaded.ct_series}/instances/{sop(uploaded.ct1)}",
         f"Instance {sop(uploaded.ct1)} of series"),
        (f"/dicomweb/studies/{uploaded.first}/series/{uploaded.ct_series}/instances/{nobody}/metadata",
         f"Instance {nobody} of series"),
        (f"/dicomweb/studies/{uploaded.first}/series/{uploaded.ct_series}/instances/{nobody}/frames/1",
         f"Instance {nobody} of series"),
        (f"/dicomweb/studies/{uploaded.first}/series/{uploaded.ct_series}/instances/{nobody}/bulkdata/7FE00010",
         f"Instance {nobody} of series"),
        (ct + "/frames/2", "Frame 2 does not exist: the instance has 1 frame(s)"),
        (ct + "/bulkdata/7FE00011", "no bulk data at 7FE00011"),
        (ct + "/bulkdata/00100010", "no bulk data at 00100010"),
        (ct + "/bulkdata/zz", "no bulk data at zz"),
        (instance_path(uploaded.others["waveform_ecg.dcm"]) + "/bulkdata/54000100", "no bulk data at 54000100"),
        (instance_path(uploaded.others["waveform_ecg.dcm"]) + "/bulkdata/54000100/9/54001010", "no bulk data at"),
        (instance_path(uploaded.others["waveform_ecg.dcm"]) + "/frames/1", "has no pixel data"),
        ("/dicomweb/workitems", "No such DICOMweb resource"),
    ]:
        answer = dicom_client.get(path)
        assert answer.status_code == 404, path
        assert message in answer.json()["issue"][0]["diagnostics"], (path, answer.text)


@pytest.mark.parametrize("frames", ["0", "one", "1,,2", "-1", "1.5"])
def test_frame_numbers_must_be_positive_integers(dicom_client, uploaded, frames):
    answer = dicom_client.get(instance_path(uploaded.ct1) + f"/frames/{frames}")
    assert answer.status_code == 400
    assert "positive integers" in answer.json()["issue"][0]["diagnostics"]


def test_an_instance_whose_file_is_gone_is_a_server_error(dicom_server, dicom_client, tmp_path):
    path, ds = variant("CT_small.dcm", tmp_path)
    assert stow(dicom_client, [path.read_bytes()]).status_code == 200
    [kept] = [f for f in stored_files(dicom_server) if f.name == f"{sop(ds)}.dcm"]
    kept.unlink()
    for suffix in ("", "/frames/1", "/bulkdata/7FE00010"):
        answer = dicom_client.get(instance_path(ds) + suffix)
        assert answer.status_code == 500
        assert f"The stored file of instance {sop(ds)} is missing" in answer.json()["issue"][0]["diagnostics"]
    assert dicom_client.get(instance_path(ds) + "/metadata").status_code == 200  # the index still knows it


# ---- browsers ----

def test_cors_for_a_browser_viewer_on_dicomweb_only(dicom_client, uploaded):
    origin = {"Origin": "http://viewer.example:3000"}
    preflight = dicom_client.options("/dicomweb/studies", headers={
        **origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "accept"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "GET" in preflight.headers["access-control-allow-methods"]
    answer = dicom_client.get(f"/dicomweb/studies/{uploaded.first}/metadata", headers=origin)
    assert answer.headers["access-control-allow-origin"] == "*"
    missing = dicom_client.get("/dicomweb/studies/1.2.3/metadata", headers=origin)
    assert missing.status_code == 404 and missing.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-origin" not in dicom_client.get("/metadata", headers=origin).headers


# ---- the end-to-end path: a modality sends, the EMR searches FHIR, a viewer retrieves ----

@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed")
def test_storescu_then_fhir_search_then_wado(dicom_server, dicom_client, tmp_path):
    patient_id = f"E2E-{uuid.uuid4().hex[:8]}"
    path, ds = variant("CT_small.dcm", tmp_path, PatientID=patient_id, PatientName="Zhou^Lan")
    run = storescu(dicom_server.dicom_port, path)
    assert run.returncode == 0, run.stderr
    wait_for_study(dicom_client, ds.StudyInstanceUID)

    patient = dicom_client.get("/Patient", params={"identifier": patient_id}).json()["entry"][0]["resource"]
    found = dicom_client.get("/ImagingStudy", params={"patient": f"Patient/{patient['id']}", "modality": "CT"})
    [study] = [e["resource"] for e in found.json()["entry"]]
    address = dicom_client.get(f"/{study['endpoint'][0]['reference']}").json()["address"]
    assert address == f"{dicom_server.base_url}/dicomweb"
    study_uid = study["identifier"][0]["value"].removeprefix("urn:oid:")

    answer = dicom_client.get(f"{address}/studies/{study_uid}")
    assert answer.status_code == 200
    [(_, received)] = parts(answer)
    sent, got = pydicom.dcmread(path), pydicom.dcmread(io.BytesIO(received))
    del sent[0xFFFCFFFC]  # storescu leaves out the trailing padding element
    assert got == sent
    assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID


# ---- settings: origins, limits, result caps ----

@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    running = start_server({"FHIR_DATABASE_URL": "", "FHIR_DICOMWEB_CORS_ORIGINS": "https://viewer.example",
                            "FHIR_DICOMWEB_MAX_RESULTS": "2", "FHIR_MAX_BODY_BYTES": "40000",
                            "FHIR_DICOMWEB_MAX_BODY_BYTES": "100000"})
    with httpx.Client(base_url=running.base_url, timeout=30) as http:
        yield http
    stop_server(running)


def test_configured_origin_only(configured):
    allowed = configured.options("/dicomweb/studies", headers={
        "Origin": "https://viewer.example", "Access-Control-Request-Method": "POST"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://viewer.example"
    other = configured.options("/dicomweb/studies", headers={
        "Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


def test_upload_limit_is_its_own(configured, tmp_path):
    """A STOW-RS body may pass the FHIR limit (40,000 bytes here) up to the DICOMweb limit (100,000)."""
    study = generate_uid()
    files = [variant("CT_small.dcm", tmp_path, study_uid=study)[0].read_bytes(),
             variant("MR_small.dcm", tmp_path, study_uid=study)[0].read_bytes()]
    assert 40000 < len(multipart_body(files)) < 100000
    assert stow(configured, files).status_code == 200
    three = files + [variant("CT_small.dcm", tmp_path)[0].read_bytes(), files[0]]
    too_large = stow(configured, three)
    assert too_large.status_code == 413 and "100000 bytes" in too_large.text

    def chunks():  # no Content-Length: the limit is enforced while reading
        body = multipart_body(three)
        for start in range(0, len(body), 16384):
            yield body[start:start + 16384]

    chunked = configured.post("/dicomweb/studies", content=chunks(), headers={"Content-Type": STOW_TYPE})
    assert chunked.status_code == 413 and "100000 bytes" in chunked.text
    assert configured.post("/Patient", content=b"x" * 45000,
                           headers={"Content-Type": "application/fhir+json"}).status_code == 413


def test_more_matches_than_the_server_returns_are_announced(configured, tmp_path):
    patient = f"CAP-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        assert stow(configured, [variant("MR_small.dcm", tmp_path, PatientID=patient)[0].read_bytes()]
                    ).status_code == 200
    capped = configured.get("/dicomweb/studies", params={"PatientID": patient})
    assert len(capped.json()) == 2
    assert "additional results" in capped.headers["warning"]
    asked = configured.get("/dicomweb/studies", params={"PatientID": patient, "limit": 2})
    assert len(asked.json()) == 2 and "warning" not in asked.headers
    rest = configured.get("/dicomweb/studies", params={"PatientID": patient, "offset": 2})
    assert len(rest.json()) == 1 and "warning" not in rest.headers
