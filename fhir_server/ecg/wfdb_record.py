"""WFDB records (PhysioNet header + signal files) <-> Waveform, read and written with `wfdb`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import wfdb

from . import leads
from .waveform import Waveform

_RECORD_SUFFIXES = {".hea", ".dat", ".atr", ".qrs", ".ecg"}


def record_base(path: str | Path) -> Path:
    """The record name wfdb wants: `mitdb/100` from `mitdb/100`, `mitdb/100.hea` or `mitdb/100.dat`."""
    path = Path(path)
    return path.with_suffix("") if path.suffix.lower() in _RECORD_SUFFIXES else path


def read_record(path: str | Path) -> Waveform:
    """A WFDB record as a Waveform; OSError / ValueError when the files are missing or malformed."""
    base = record_base(path)
    if not base.with_suffix(".hea").is_file():
        raise FileNotFoundError(f"no WFDB header {base.with_suffix('.hea')}")
    return waveform_from_record(wfdb.rdrecord(str(base)))


def waveform_from_record(record: wfdb.Record) -> Waveform:
    scale = np.ones(record.n_sig)
    for index, unit_name in enumerate(record.units or ["mV"] * record.n_sig):
        unit = leads.unit(unit_name)
        if unit is None:
            raise ValueError(f"signal {record.sig_name[index]!r} is in {unit_name!r}, not an electric potential")
        scale[index] = unit.to_millivolt
    signal = np.asarray(record.p_signal, dtype=np.float64) * scale
    resolution = [float(s / g) if g else 0.0 for s, g in zip(scale, record.adc_gain, strict=True)]
    start = None
    if record.base_date is not None and record.base_time is not None:
        start = datetime.combine(record.base_date, record.base_time)
    return Waveform(signal, float(record.fs), list(record.sig_name), start, resolution)


def record_from_waveform(waveform: Waveform, name: str = "ecg") -> wfdb.Record:
    """A WFDB record (format 16, millivolts) holding the waveform, ready for `wrsamp`."""
    gains = [1.0 / waveform.lead_resolution(i) for i in range(len(waveform.names))]
    digital = np.round(np.nan_to_num(waveform.signal) * np.array(gains))
    if np.abs(digital).max(initial=0) > 32767:
        raise ValueError("the waveform does not fit 16-bit samples at its resolution")
    d_signal = digital.astype(np.int16)
    d_signal[np.isnan(waveform.signal)] = -32768  # WFDB's "no sample" value for format 16
    record = wfdb.Record(record_name=name, n_sig=len(waveform.names), fs=waveform.fs,
                         sig_len=waveform.signal.shape[0], d_signal=d_signal, sig_name=list(waveform.names),
                         units=["mV"] * len(waveform.names), fmt=["16"] * len(waveform.names), adc_gain=gains,
                         baseline=[0] * len(waveform.names), file_name=[f"{name}.dat"] * len(waveform.names),
                         adc_res=[16] * len(waveform.names), adc_zero=[0] * len(waveform.names))
    if waveform.start is not None:
        record.base_date, record.base_time = waveform.start.date(), waveform.start.time().replace(tzinfo=None)
    record.p_signal = record.dac()
    return record
