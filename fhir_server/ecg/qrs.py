"""QRS detection: a Pan-Tompkins-style energy detector over one or more leads.

Each lead is band-passed (5-15 Hz), differentiated, squared and integrated over 150 ms; the leads'
energies are scaled to their own 99th percentile and summed, so every usable lead votes. Peaks at
least 200 ms apart are candidates; an adaptive threshold between running signal and noise peak
levels accepts them, a candidate within 360 ms of the last beat with less than half its slope is a
T wave, and when no beat comes for 1.66 mean RR intervals the largest candidate above half the
threshold in that gap is taken (search-back). Beats smaller than MIN_QRS_MV are not beats. Each
beat is then placed on the largest band-passed deflection within 80 ms (the R peak)."""

from __future__ import annotations

import numpy as np

from . import thresholds as th
from .filters import qrs_band

_REFRACTORY_S = 0.200
_T_WAVE_S = 0.360
_SEARCH_BACK_RR = 1.66
_INTEGRATION_S = 0.150
_LOCATE_S = 0.080


def sample_windows(centres: np.ndarray, half: int, length: int) -> np.ndarray:
    """Index matrix (beats × 2·half+1) of samples around each centre, clipped to the signal."""
    return np.clip(centres[:, None] + np.arange(-half, half + 1)[None, :], 0, length - 1)


def detect_qrs(signal: np.ndarray, fs: float) -> np.ndarray:
    """Sample indices of the QRS complexes in `signal` (samples × leads, millivolts, no NaN)."""
    from scipy.ndimage import uniform_filter1d  # imported on first use (see filters.py)
    from scipy.signal import find_peaks

    if signal.ndim == 1:
        signal = signal[:, None]
    n = signal.shape[0]
    if n < int(2 * fs):
        return np.empty(0, dtype=np.int64)
    band = qrs_band(signal, fs)
    slope = np.gradient(band, axis=0) * fs
    energy = uniform_filter1d(slope * slope, size=max(int(_INTEGRATION_S * fs), 1), axis=0, mode="nearest")
    scale = np.percentile(energy, 99, axis=0)
    scale[scale <= 0] = 1.0
    combined = (energy / scale).sum(axis=1)
    weights = 1.0 / np.sqrt(scale)  # the same per-lead scaling for amplitudes as for energies
    band_sum = np.abs(band * weights).sum(axis=1)
    slope_sum = np.abs(slope * weights).sum(axis=1)

    peaks, _ = find_peaks(combined, distance=max(int(_REFRACTORY_S * fs), 1))
    if peaks.size == 0:
        return peaks.astype(np.int64)
    heights = combined[peaks]
    half = max(int(0.075 * fs), 1)
    peak_slopes = slope_sum[sample_windows(peaks, half, n)].max(axis=1)
    beats = _adaptive_threshold(peaks, heights, peak_slopes, fs, combined[: int(2 * fs)])
    if beats.size == 0:
        return beats
    # R peak: the largest band-passed deflection near the energy peak
    locate = max(int(_LOCATE_S * fs), 1)
    index = sample_windows(beats, locate, n)
    r_peaks = index[np.arange(len(beats)), np.argmax(band_sum[index], axis=1)]
    # too small to be a QRS complex (flat line, asystole): judged on the strongest lead, in millivolts
    amplitude = np.ptp(band[sample_windows(r_peaks, max(int(0.06 * fs), 1), n)], axis=1).max(axis=1)
    r_peaks = r_peaks[amplitude >= th.MIN_QRS_MV]
    if r_peaks.size > 1:  # two energy peaks may settle on one R peak
        r_peaks = r_peaks[np.concatenate(([True], np.diff(r_peaks) >= int(_REFRACTORY_S * fs)))]
    return r_peaks.astype(np.int64)


def _adaptive_threshold(peaks: np.ndarray, heights: np.ndarray, slopes: np.ndarray, fs: float,
                        learning: np.ndarray) -> np.ndarray:
    signal_level = 0.25 * float(learning.max()) if learning.size else float(heights.max())
    noise_level = 0.5 * float(learning.mean()) if learning.size else 0.0
    refractory, t_wave = int(_REFRACTORY_S * fs), int(_T_WAVE_S * fs)
    accepted: list[int] = []
    accepted_slopes: list[float] = []
    rr_mean = 0.0
    skipped: list[int] = []  # candidate positions since the last beat, for search-back

    def accept(i: int, search_back: bool) -> None:
        nonlocal signal_level, rr_mean
        if accepted:
            rr = peaks[i] - accepted[-1]
            rr_mean = rr if rr_mean == 0 else 0.125 * rr + 0.875 * rr_mean
        accepted.append(int(peaks[i]))
        accepted_slopes.append(float(slopes[i]))
        weight = 0.25 if search_back else 0.125
        signal_level = weight * heights[i] + (1 - weight) * signal_level
        skipped.clear()

    for i in range(len(peaks)):
        threshold = noise_level + 0.25 * (signal_level - noise_level)
        if rr_mean and accepted and peaks[i] - accepted[-1] > _SEARCH_BACK_RR * rr_mean and skipped:
            best = max(skipped, key=lambda j: heights[j])
            if heights[best] > 0.5 * threshold:
                accept(best, True)
                skipped[:] = [j for j in range(best + 1, i)]
                threshold = noise_level + 0.25 * (signal_level - noise_level)
        since = peaks[i] - accepted[-1] if accepted else refractory + 1
        if heights[i] > threshold and since > refractory:
            if accepted and since < t_wave and slopes[i] < 0.5 * accepted_slopes[-1]:
                noise_level = 0.125 * heights[i] + 0.875 * noise_level  # a T wave
                skipped.append(i)
                continue
            accept(i, False)
        else:
            noise_level = 0.125 * heights[i] + 0.875 * noise_level
            skipped.append(i)
    return np.asarray(accepted, dtype=np.int64)
