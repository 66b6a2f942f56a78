"""DICOM ECG waveforms (12-lead and General ECG Waveform Storage) <-> ECG Observations.

Reading takes the rhythm multiplex group (the longest one that is not a median beat), names each
channel by its SCPECG source code (mappings/ecg/leads.json) and scales it by Channel Sensitivity
(its unit from mappings/ecg/units.json), Correction Factor and Baseline. A date and time without a
time zone (no Timezone Offset From UTC) is taken as the server's local time."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DT

from . import leads
from .sampled_data import observation_from_waveform, waveform_from_observation
from .waveform import Waveform, WaveformError

_PADDING = -32768  # written in place of samples that have no value
_MAX_12_LEAD_SAMPLES = 16384  # the 12-lead ECG IOD: at most 16384 samples per channel at 200-1000 Hz


def _timezone(ds: Dataset) -> timezone | None:
    offset = ds.get("TimezoneOffsetFromUTC")
    if not offset or len(str(offset)) != 5:
        return None
    text = str(offset)
    sign = -1 if text[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(text[1:3]), minutes=int(text[3:5])))


def acquisition_time(ds: Dataset) -> datetime | None:
    """AcquisitionDateTime, else ContentDate + ContentTime; None when absent or unreadable."""
    try:
        if ds.get("AcquisitionDateTime"):
            when = DT(ds.AcquisitionDateTime)
        elif ds.get("ContentDate") and ds.get("ContentTime"):
            when = DT(f"{ds.ContentDate}{ds.ContentTime}")
        else:
            return None
    except ValueError:
        return None
    when = datetime(when.year, when.month, when.day, when.hour, when.minute, when.second, when.microsecond,
                    tzinfo=when.tzinfo)
    if when.tzinfo is None and _timezone(ds) is not None:
        when = when.replace(tzinfo=_timezone(ds))
    return when


def _rhythm_group(ds: Dataset) -> int:
    groups = ds.get("WaveformSequence")
    if not groups:
        raise WaveformError("The DICOM dataset has no Waveform Sequence", "WaveformSequence")
    candidates = [(str(g.get("MultiplexGroupLabel", "")).upper() != "MEDIAN BEAT",
                   int(g.get("NumberOfWaveformSamples", 0) or 0), -i) for i, g in enumerate(groups)]
    return -max(candidates)[2]


def waveform_from_dataset(ds: Dataset) -> Waveform:
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class and sop_class not in leads.study_table()["dicomSopClasses"]:
        raise WaveformError(f"SOP Class {sop_class} is not an ECG waveform", "SOPClassUID")
    index = _rhythm_group(ds)
    group = ds.WaveformSequence[index]
    where = f"WaveformSequence[{index}]"
    try:
        raw = pydicom.waveforms.numpy_handler.multiplex_array(ds, index, as_raw=True)
        fs = float(group.SamplingFrequency)
        channels = list(group.ChannelDefinitionSequence)
    except (AttributeError, KeyError, ValueError, TypeError) as exc:
        raise WaveformError(f"The waveform multiplex group cannot be read: {exc}", where) from exc
    if fs <= 0:
        raise WaveformError(f"Sampling Frequency must be positive, not {fs}", f"{where}.SamplingFrequency")
    if len(channels) != raw.shape[1]:
        raise WaveformError(f"{raw.shape[1]} channels but {len(channels)} channel definitions",
                            f"{where}.ChannelDefinitionSequence")
    padding = group.get("WaveformPaddingValue")
    signal = raw.astype(np.float64)
    names, resolution = [], []
    for number, channel in enumerate(channels):
        sensitivity = float(channel.get("ChannelSensitivity", 1.0)) * float(
            channel.get("ChannelSensitivityCorrectionFactor", 1.0))
        units = channel.get("ChannelSensitivityUnitsSequence")
        unit = leads.unit(str(units[0].CodeValue) if units else "uV")  # 12-lead ECG IOD default: microvolts
        if unit is None:
            raise WaveformError(f"channel {number + 1} is in {units[0].CodeValue!r}, not an electric potential",
                                f"{where}.ChannelDefinitionSequence[{number}].ChannelSensitivityUnitsSequence")
        signal[:, number] = (signal[:, number] * sensitivity + float(channel.get("ChannelBaseline", 0.0))) \
            * unit.to_millivolt
        resolution.append(abs(sensitivity) * unit.to_millivolt)
        names.append(_channel_name(channel, number))
    if padding is not None:
        pad = int.from_bytes(padding, "little", signed=True) if isinstance(padding, bytes) else int(padding)
        signal[raw == pad] = np.nan
    return Waveform(signal, fs, names, acquisition_time(ds), resolution)


def _channel_name(channel: Dataset, number: int) -> str:
    source = channel.get("ChannelSourceSequence")
    if source:
        code = source[0]
        if str(code.get("CodingSchemeDesignator", "")).upper() == "SCPECG":
            known = leads.lead_by_scpecg(str(code.get("CodeValue", "")))
            if known:
                return known.lead
        if code.get("CodeMeaning"):
            return str(code.CodeMeaning)
    return str(channel.get("ChannelLabel") or f"channel {number + 1}")


def observation_from_dataset(ds: Dataset, subject: dict[str, Any] | None = None) -> dict[str, Any]:
    """An ECG Observation (final, LOINC 11524-6, one component per lead) from a DICOM ECG waveform."""
    identifier = None
    if ds.get("SOPInstanceUID"):
        identifier = [{"system": "urn:dicom:uid", "value": f"urn:oid:{ds.SOPInstanceUID}"}]
    return observation_from_waveform(waveform_from_dataset(ds), subject, identifier)


def _twelve_lead(waveform: Waveform) -> bool:
    standard = set(leads.standard_leads())
    return (len(waveform.names) <= 13 and 200 <= waveform.fs <= 1000
            and waveform.signal.shape[0] <= _MAX_12_LEAD_SAMPLES and all(n in standard for n in waveform.names))


def dataset_from_waveform(waveform: Waveform) -> Dataset:
    """A DICOM ECG waveform dataset (16-bit signed samples in microvolt steps), with file meta."""
    sop = leads.study_table()["dicomWriteSopClass"]
    sop_class = sop["twelveLead"] if _twelve_lead(waveform) else sop["general"]
    channels, columns = Sequence(), []
    microvolt = leads.unit("uV")
    for index, name in enumerate(waveform.names):
        column = waveform.signal[:, index]
        step = waveform.lead_resolution(index)
        peak = np.nanmax(np.abs(column), initial=0.0)
        step = max(step, peak / 32767)  # keep every sample inside 16 bits
        digital = np.round(np.nan_to_num(column) / step)
        digital[np.isnan(column)] = _PADDING
        columns.append(digital.astype(np.int16))
        channel = Dataset()
        known = leads.lead_code(name)
        source = Dataset()
        if known:
            source.CodeValue, source.CodingSchemeDesignator, source.CodeMeaning = known.scpecg, "SCPECG", \
                known.dicom_meaning
        else:
            source.CodeValue, source.CodingSchemeDesignator, source.CodeMeaning = "5.6.3-9-0", "SCPECG", name
        channel.ChannelSourceSequence = Sequence([source])
        channel.ChannelLabel = name[:16]
        units = Dataset()
        units.CodeValue, units.CodingSchemeDesignator, units.CodeMeaning = microvolt.dicom, "UCUM", \
            microvolt.dicom_meaning
        channel.ChannelSensitivity = f"{step / microvolt.to_millivolt:.10g}"[:16]
        channel.ChannelSensitivityUnitsSequence = Sequence([units])
        channel.ChannelSensitivityCorrectionFactor = "1"
        channel.ChannelBaseline = "0"
        channel.ChannelSampleSkew = "0"
        channel.WaveformBitsStored = 16
        channels.append(channel)
    group = Dataset()
    group.MultiplexGroupLabel = "RHYTHM"
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(columns)
    group.NumberOfWaveformSamples = waveform.signal.shape[0]
    group.SamplingFrequency = f"{waveform.fs:.10g}"[:16]
    group.ChannelDefinitionSequence = channels
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    group.WaveformPaddingValue = int(_PADDING).to_bytes(2, "little", signed=True)
    group.WaveformData = np.column_stack(columns).astype("<i2").tobytes()

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "ECG"
    if waveform.start is not None:
        start = waveform.start
        ds.AcquisitionDateTime = start.strftime("%Y%m%d%H%M%S.%f") + (start.strftime("%z") if start.tzinfo else "")
        ds.ContentDate, ds.ContentTime = start.strftime("%Y%m%d"), start.strftime("%H%M%S.%f")
        if start.tzinfo:
            ds.TimezoneOffsetFromUTC = start.strftime("%z")
    ds.WaveformSequence = Sequence([group])
    return ds


def dataset_from_observation(observation: dict[str, Any]) -> Dataset:
    return dataset_from_waveform(waveform_from_observation(observation))
