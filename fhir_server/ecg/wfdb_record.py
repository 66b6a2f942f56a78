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
    try:
        record = wfdb.rdrecord(str(base))
    except OSError:
        raise
    except Exception as exc:  # wfdb's parser fails on malformed headers with whatever error it meets
        raise ValueError(f"malformed WFDB record {base}: {type(exc).__name__}: {exc}") from exc
    return waveform_from_record(record)


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


def _digital(waveform: Waveform) -> tuple[np.ndarray, list[float]]:
    """16-bit samples at each lead's resolution, and the gains (steps per millivolt)."""
    gains = [1.0 / waveform.lead_resolution(i) for i in range(len(waveform.names))]
    digital = np.round(np.nan_to_num(waveform.signal) * np.array(gains))
    if np.abs(digital).max(initial=0) > 32767:
        raise ValueError("the waveform does not fit 16-bit samples at its resolution")
    d_signal = digital.astype(np.int16)
    d_signal[np.isnan(waveform.signal)] = -32768  # WFDB's "no sample" value for format 16
    return d_signal, gains


def write_record(waveform: Waveform, name: str, directory: str | Path) -> Path:
    """Write the waveform as a WFDB record (format 16, millivolts); returns the record path."""
    d_signal, gains = _digital(waveform)
    leads_count = len(waveform.names)
    options = {}
    if waveform.start is not None:
        options = {"base_date": waveform.start.date(), "base_time": waveform.start.time().replace(tzinfo=None)}
    wfdb.wrsamp(name, fs=waveform.fs, units=["mV"] * leads_count, sig_name=list(waveform.names), d_signal=d_signal,
                fmt=["16"] * leads_count, adc_gain=gains, baseline=[0] * leads_count, write_dir=str(directory),
                **options)
    return Path(directory) / name
