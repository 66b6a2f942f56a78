"""Is each lead usable? Flat, saturated, missing too many samples, or noise instead of beats."""

from __future__ import annotations

import numpy as np

from . import thresholds as th
from .filters import diagnostic_band
from .qrs import detect_qrs, sample_windows
from .waveform import Waveform


def lead_problem(column: np.ndarray, fs: float, resolution: float) -> str | None:
    """Why a lead (millivolts, NaN = no value) cannot be used, or None if it can."""
    missing = np.isnan(column)
    if missing.mean() > th.MISSING_FRACTION:
        return f"{missing.mean():.0%} of its samples have no value"
    values = column[~missing]
    if values.size == 0 or float(np.std(values)) < th.FLAT_MV:
        return "flat (no signal: lead off or all samples equal)"
    low, high = float(values.min()), float(values.max())
    tolerance = max(resolution, 1e-3 * (high - low))
    stuck = float(np.mean(values <= low + tolerance) + np.mean(values >= high - tolerance))
    if stuck > th.SATURATED_FRACTION:
        return f"saturated ({stuck:.0%} of samples at the amplifier's limits)"
    return None


def noise_problem(column: np.ndarray, fs: float) -> str | None:
    """Noise rather than ECG: implausibly many detections, or detections that do not look alike."""
    beats = detect_qrs(column, fs)
    duration = column.shape[0] / fs
    if beats.size and 60.0 * beats.size / duration > th.MAX_PLAUSIBLE_BPM:
        return f"noise ({60.0 * beats.size / duration:.0f} detections per minute)"
    if beats.size < 3:
        return None  # too few beats to compare; a pause or asystole is judged from the rhythm
    clean = diagnostic_band(column, fs)
    segments = clean[sample_windows(beats, max(int(0.1 * fs), 1), column.shape[0])]
    segments = segments - segments.mean(axis=1, keepdims=True)
    template = np.median(segments, axis=0)
    norms = np.linalg.norm(segments, axis=1) * np.linalg.norm(template)
    correlation = np.divide(segments @ template, norms, out=np.zeros(len(beats)), where=norms > 0)
    if float(np.median(correlation)) < th.NOISE_MIN_CORRELATION:
        return f"noise (beats do not look alike: median correlation {np.median(correlation):.2f})"
    return None


def usable_leads(waveform: Waveform, filled: np.ndarray) -> tuple[list[int], dict[str, str]]:
    """Columns fit for analysis, and the reason each other lead was left out."""
    usable, rejected = [], {}
    for index, name in enumerate(waveform.names):
        problem = lead_problem(waveform.signal[:, index], waveform.fs, waveform.lead_resolution(index)) \
            or noise_problem(filled[:, index], waveform.fs)
        if problem:
            rejected[name] = problem
        else:
            usable.append(index)
    return usable, rejected
