"""Zero-phase Butterworth filters (scipy, second-order sections) over every lead at once."""

from __future__ import annotations

from functools import cache

import numpy as np

# scipy.signal is imported where it is used: it takes most of a second, which every server worker, DICOM SCP
# and CLI start would otherwise pay before its first ECG, if any.


@cache
def _band_sos(fs: float, low: float, high: float, order: int) -> np.ndarray:
    from scipy.signal import butter

    high = min(high, 0.45 * fs)  # stay below Nyquist for low sampling rates
    return butter(order, [low, high], btype="bandpass", fs=fs, output="sos")


def bandpass(signal: np.ndarray, fs: float, low: float, high: float, order: int = 2) -> np.ndarray:
    """Band-pass along time (axis 0); zero phase, so QRS complexes stay where they were."""
    from scipy.signal import sosfiltfilt

    return sosfiltfilt(_band_sos(fs, low, high, order), signal, axis=0)


def qrs_band(signal: np.ndarray, fs: float) -> np.ndarray:
    """5-15 Hz: where QRS energy is and P/T waves, baseline wander and mains hum are not (Pan-Tompkins)."""
    return bandpass(signal, fs, 5.0, 15.0)


def diagnostic_band(signal: np.ndarray, fs: float) -> np.ndarray:
    """0.5-40 Hz: baseline wander and high-frequency noise removed, QRS shape kept (widths, templates)."""
    return bandpass(signal, fs, 0.5, 40.0)


def fill_missing(signal: np.ndarray) -> np.ndarray:
    """NaN samples ("E" in SampledData) replaced by their lead's median, so filters can run."""
    missing = np.isnan(signal)
    if not missing.any():
        return signal
    medians = np.array([np.median(column[~gap]) if (~gap).any() else 0.0
                        for column, gap in zip(signal.T, missing.T, strict=True)])
    return np.where(missing, medians, signal)
