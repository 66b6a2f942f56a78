"""ECG format converters: arrays, FHIR SampledData Observations, WFDB records and DICOM waveforms
round-trip; malformed waveforms are refused with the element at fault."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
import pydicom
import pytest
import wfdb
from ecg_signals import MITDB_100, TWELVE_LEADS, synthesise
from pydicom.data import get_testdata_file

from fhir_server.ecg.dicom_waveform import (
    dataset_from_observation,
    dataset_from_waveform,
    observation_from_dataset,
    waveform_from_dataset,
)
from fhir_server.ecg.sampled_data import is_ecg, observation_from_waveform, waveform_from_observation
from fhir_server.ecg.waveform import Waveform, WaveformError
from fhir_server.ecg.wfdb_record import read_record, record_base, write_record
from fhir_server.model.validate import validate_resource

MDC = "urn:oid:2.16.840.1.113883.6.24"


def test_arrays_to_sampled_data_observation_and_back():
    rng = np.random.default_rng(7)
    signal = rng.normal(0, 1.0, (2000, 3))
    signal[10, 1] = np.nan  # a sample without a value travels as "E"
    start = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
    waveform = Waveform(signal, 500.0, ["I", "V2", "CM5"], start)
    observation = observation_from_waveform(waveform, {"reference": "Patient/p1"})
    validate_resource(observation, "Observation")
    assert is_ecg(observation)
    assert observation["effectiveDateTime"] == "2026-03-01T08:30:00+00:00"
    codes = [c["code"].get("coding", [{}])[0].get("code") for c in observation["component"]]
    assert codes == ["131329", "131332", None]  # CM5 has no MDC lead code: text only
    assert " E " in observation["component"][1]["valueSampledData"]["data"]
    back = waveform_from_observation(observation)
    assert back.fs == 500.0 and back.names == ["I", "V2", "CM5"] and back.start == start
    assert np.isnan(back.signal[10, 1])
    mask = ~np.isnan(signal)
    assert np.abs(back.signal[mask] - signal[mask]).max() <= 0.0005 + 1e-12  # half of the 1 µV step


def test_interleaved_dimensions_units_origin_factor_and_limits():
    observation = {"resourceType": "Observation", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "11524-6"}]},
                   "valueSampledData": {"origin": {"value": 100, "code": "uV"}, "period": 2.0, "factor": 5,
                                        "lowerLimit": -1000, "upperLimit": 1000, "dimensions": 2,
                                        "data": "0 1 2 3 L U E 4"}}
    waveform = waveform_from_observation(observation)
    assert waveform.fs == 500.0 and waveform.names == ["lead 1", "lead 2"]
    expected = np.array([[0.1, 0.105], [0.11, 0.115], [-4.9, 5.1], [np.nan, 0.12]])
    np.testing.assert_allclose(waveform.signal, expected)
    assert waveform.resolution == [0.005, 0.005]


def test_wfdb_record_to_observation_and_back_to_wfdb_arrays(tmp_path):
    original = wfdb.rdrecord(str(MITDB_100), sampto=36000)
    observation = observation_from_waveform(read_record(MITDB_100))
    assert [c["code"]["text"] for c in observation["component"]] == ["MLII", "V5"]
    assert observation["component"][0]["code"]["coding"][0]["code"] == "131330"  # MLII is lead II
    assert observation["component"][0]["valueSampledData"]["factor"] == 0.005  # 1 / adc_gain 200
    waveform = waveform_from_observation(observation)
    assert waveform.fs == 360.0 and waveform.signal.shape == (650000, 2)
    again = wfdb.rdrecord(str(write_record(waveform, "copy", tmp_path)), sampto=36000)
    assert again.sig_name == original.sig_name and again.fs == original.fs
    np.testing.assert_allclose(again.p_signal, original.p_signal, atol=1e-9)


@pytest.mark.parametrize("name", ["100", "100.hea", "100.dat"])
def test_record_path_with_or_without_extension(name):
    assert record_base(MITDB_100.parent / name) == MITDB_100
    assert read_record(MITDB_100.parent / name).names == ["MLII", "V5"]


def test_missing_wfdb_record_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_record(tmp_path / "nothing")


def test_dicom_ecg_to_observation():
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    observation = observation_from_dataset(ds, {"reference": "Patient/p2"})
    validate_resource(observation, "Observation")
    assert observation["status"] == "final" and observation["subject"] == {"reference": "Patient/p2"}
    assert observation["code"]["coding"][0] == {"system": "http://loinc.org", "code": "11524-6",
                                                "display": "EKG study"}
    assert observation["effectiveDateTime"].startswith("2013-01-25T10:59:19")
    assert observation["identifier"][0]["value"] == f"urn:oid:{ds.SOPInstanceUID}"
    assert [c["code"]["text"] for c in observation["component"]] == TWELVE_LEADS
    assert observation["component"][3]["code"]["coding"][0] == {"system": MDC, "code": "131390",
                                                                "display": "MDC_ECG_ELEC_POTL_AVR"}
    waveform = waveform_from_observation(observation)
    np.testing.assert_allclose(waveform.signal, ds.waveform_array(0) / 1000.0, atol=1e-9)  # µV -> mV
    assert waveform.fs == 1000.0


def test_observation_to_dicom_and_back():
    source = observation_from_waveform(synthesise("normal", leads=TWELVE_LEADS, seed=3))
    ds = dataset_from_observation(source)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    read = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    assert read.SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.1.1"  # 12-lead ECG Waveform Storage
    assert read.WaveformSequence[0].ChannelDefinitionSequence[2].ChannelSourceSequence[0].CodeValue == "5.6.3-9-61"
    again = observation_from_dataset(read)
    first, second = waveform_from_observation(source), waveform_from_observation(again)
    assert second.names == TWELVE_LEADS and second.fs == first.fs
    np.testing.assert_allclose(second.signal, first.signal, atol=0.0005 + 1e-12)


def test_dicom_general_ecg_for_other_leads_and_padding_for_missing_samples():
    signal = np.sin(np.linspace(0, 20, 4000))[:, None].repeat(2, axis=1)
    signal[5, 0] = np.nan
    ds = dataset_from_waveform(Waveform(signal, 250.0, ["CM5", "II"]))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.1.2"  # General ECG: CM5 is not a 12-lead lead
    back = waveform_from_dataset(ds)
    assert back.names == ["CM5", "II"] and np.isnan(back.signal[5, 0])
    np.testing.assert_allclose(back.signal[6:], signal[6:], atol=0.0005 + 1e-12)


def test_dicom_without_waveform_or_not_ecg_is_refused():
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    del ds.WaveformSequence
    with pytest.raises(WaveformError) as no_waveform:
        waveform_from_dataset(ds)
    assert no_waveform.value.issues[0].expression == ["WaveformSequence"]
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    with pytest.raises(WaveformError) as not_ecg:
        waveform_from_dataset(ds)
    assert not_ecg.value.issues[0].expression == ["SOPClassUID"]
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    del ds.WaveformSequence[0].ChannelDefinitionSequence[11]
    with pytest.raises(WaveformError) as channels:
        waveform_from_dataset(ds)
    assert channels.value.issues[0].expression == ["WaveformSequence[0].ChannelDefinitionSequence"]


def ecg(sampled: dict | None = None, **more) -> dict:
    base = {"origin": {"value": 0, "code": "mV"}, "period": 2, "dimensions": 1, "data": "1 2 3 4"}
    component = {"code": {"text": "II"}, "valueSampledData": {**base, **(sampled or {})}}
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "11524-6"}]}, "component": [component],
            **more}


WHERE = "Observation.component[0].valueSampledData"


@pytest.mark.parametrize("observation, expression", [
    (ecg({"period": 0}), f"{WHERE}.period"),
    (ecg({"period": -2}), f"{WHERE}.period"),
    (ecg({"period": "2"}), f"{WHERE}.period"),
    (ecg({"period": None}), f"{WHERE}.period"),
    (ecg({"dimensions": 0}), f"{WHERE}.dimensions"),
    (ecg({"data": "   "}), f"{WHERE}.data"),
    (ecg({"data": None}), f"{WHERE}.data"),
    (ecg({"data": "1 2 x 4"}), f"{WHERE}.data"),
    (ecg({"data": "1 2 nan 4"}), f"{WHERE}.data"),
    (ecg({"data": "1 2 3", "dimensions": 2}), f"{WHERE}.data"),
    (ecg({"data": "1 L 3"}), f"{WHERE}.lowerLimit"),
    (ecg({"data": "1 U 3"}), f"{WHERE}.upperLimit"),
    (ecg({"factor": 0}), f"{WHERE}.factor"),
    (ecg({"origin": {"value": 0, "code": "mm[Hg]"}}), f"{WHERE}.origin"),
    (ecg({"origin": {"code": "mV"}}), f"{WHERE}.origin"),
    (ecg(component=[{"code": {"text": "II"}, "valueSampledData": "1 2 3"}]), WHERE),
    (ecg(component=[{"code": {"text": "II"}, "valueQuantity": {"value": 1}}]), "Observation.component"),
    (ecg(component={"code": {"text": "II"}}), "Observation.component"),
])
def test_malformed_waveforms_name_the_element(observation, expression):
    if observation["component"] is not None and isinstance(observation["component"], list) \
            and observation["component"] and "valueSampledData" in observation["component"][0] \
            and isinstance(observation["component"][0]["valueSampledData"], dict):
        observation["component"][0]["valueSampledData"] = {
            k: v for k, v in observation["component"][0]["valueSampledData"].items() if v is not None}
    with pytest.raises(WaveformError) as error:
        waveform_from_observation(observation)
    assert error.value.status == 422
    assert error.value.issues[0].expression == [expression]


def test_leads_must_share_period_and_length():
    observation = ecg()
    observation["component"].append({"code": {"text": "V1"}, "valueSampledData": {
        "origin": {"value": 0}, "period": 4, "dimensions": 1, "data": "1 2 3 4"}})
    with pytest.raises(WaveformError) as period:
        waveform_from_observation(observation)
    assert period.value.issues[0].expression == ["Observation.component[1].valueSampledData.period"]
    observation["component"][1]["valueSampledData"].update(period=2, data="1 2 3")
    with pytest.raises(WaveformError) as length:
        waveform_from_observation(observation)
    assert length.value.issues[0].expression == ["Observation.component[1].valueSampledData.data"]
