"""From beats to findings: RR statistics, QRS widths, and the rhythm rules of thresholds.py.

Rate and rhythm (normal, brady, tachy, AF, critical rate) are judged per window of WINDOW_S;
pauses, asystole and VT runs over the whole beat sequence. Findings of one kind in consecutive
windows merge into one episode. "Sinus" names a regular narrow-complex rhythm: P waves are not
analysed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import thresholds as th
from .filters import diagnostic_band
from .qrs import sample_windows

LEVELS = ("routine", "urgent", "critical")
# when a recording shows several rhythms, the one reported is the first of these found
RHYTHM_PRIORITY = ("asystole", "vt", "pause", "af", "tachycardia", "bradycardia", "normal")


@dataclass
class Finding:
    category: str  # a rhythm of RHYTHM_PRIORITY, or "rate", "lead", "unreadable"
    level: str  # routine | urgent | critical
    reason: str
    start: float | None = None  # seconds from the start of the recording
    end: float | None = None

    @property
    def severity(self) -> int:
        return LEVELS.index(self.level)


@dataclass
class RRStatistics:
    beats: int
    mean_rr: float | None  # s
    sdnn: float | None  # s, standard deviation of RR
    rmssd: float | None  # s, root mean square of successive differences
    irregularity: float | None  # fraction of successive RR differences above AF_STEP of the median RR
    rate_mean: float | None  # /min, from the mean RR
    rate_min: float | None  # /min, slowest beat-to-beat rate
    rate_max: float | None  # /min, fastest beat-to-beat rate


def irregular_fraction(rr: np.ndarray) -> float | None:
    """Fraction of successive RR differences larger than AF_STEP of the median RR."""
    if rr.size < 2:
        return None
    return float(np.mean(np.abs(np.diff(rr)) > th.AF_STEP * np.median(rr)))


def dispersed_fraction(rr: np.ndarray) -> float:
    """Fraction of RR intervals further than AF_STEP from the median RR."""
    median = float(np.median(rr))
    return float(np.mean(np.abs(rr - median) > th.AF_STEP * median))


def rr_statistics(beat_times: np.ndarray) -> RRStatistics:
    rr = np.diff(beat_times)
    if rr.size == 0:
        return RRStatistics(int(beat_times.size), None, None, None, None, None, None, None)
    return RRStatistics(
        beats=int(beat_times.size), mean_rr=float(rr.mean()), sdnn=float(rr.std()),
        rmssd=float(np.sqrt(np.mean(np.diff(rr) ** 2))) if rr.size > 1 else None,
        irregularity=irregular_fraction(rr), rate_mean=60.0 / float(rr.mean()),
        rate_min=60.0 / float(rr.max()), rate_max=60.0 / float(rr.min()))


def qrs_widths(signal: np.ndarray, fs: float, beats: np.ndarray) -> np.ndarray:
    """Per beat, seconds during which the summed slope of the usable leads stays above a quarter of its
    rise from the local baseline to its peak: an estimate of QRS duration."""
    if beats.size == 0:
        return np.empty(0)
    clean = diagnostic_band(signal, fs)
    slope = np.abs(np.gradient(clean, axis=0))
    scale = np.percentile(slope, 99, axis=0)
    scale[scale <= 0] = 1.0
    envelope = (slope / scale).sum(axis=1)
    smooth = max(int(0.04 * fs), 1)  # bridges the slope dip at the R peak
    envelope = np.convolve(envelope, np.ones(smooth) / smooth, mode="same")
    half = int(0.2 * fs)
    windows = envelope[sample_windows(beats, half, signal.shape[0])]
    centre = half
    near = slice(centre - int(0.06 * fs), centre + int(0.06 * fs) + 1)
    peak_col = near.start + np.argmax(windows[:, near], axis=1)
    peak = windows[np.arange(len(beats)), peak_col]
    baseline = np.percentile(windows, 20, axis=1)
    above = windows > (baseline + 0.25 * (peak - baseline))[:, None]
    columns = np.arange(windows.shape[1])[None, :]
    left = np.where(~above & (columns < peak_col[:, None]), columns, -1).max(axis=1)
    right = np.where(~above & (columns > peak_col[:, None]), columns, windows.shape[1]).min(axis=1)
    return (right - left - 1) / fs


def clock(seconds: float, long: bool) -> str:
    if not long:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes // 60)}:{int(minutes % 60):02d}:{secs:04.1f}"


def windows(duration: float) -> list[tuple[float, float]]:
    if duration <= th.WINDOW_S + th.MIN_WINDOW_S:
        return [(0.0, duration)]
    bounds = list(np.arange(0.0, duration, th.WINDOW_S)) + [duration]
    if bounds[-1] - bounds[-2] < th.MIN_WINDOW_S:
        del bounds[-2]
    return [(float(a), float(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _vt_runs(beat_times: np.ndarray, widths: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) beat indices of runs of VT_MIN_BEATS or more wide beats faster than VT_RATE_BPM."""
    if beat_times.size < th.VT_MIN_BEATS:
        return []
    rr_before = np.diff(beat_times, prepend=-np.inf)
    qualifies = (widths >= th.WIDE_QRS_S) & (rr_before < 60.0 / th.VT_RATE_BPM)
    edges = np.diff(np.concatenate(([0], qualifies.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True) if e - s + 1 >= th.VT_MIN_BEATS]


def beat_findings(beat_times: np.ndarray, widths: np.ndarray, duration: float) -> list[Finding]:
    """Asystole, pauses and VT runs: findings about the beat sequence as a whole."""
    long = duration > 60
    if beat_times.size == 0:
        return [Finding("asystole", "critical", f"Asystole: no QRS complex in {duration:.1f} s", 0.0, duration)]
    findings = []
    edges = np.concatenate(([0.0], beat_times, [duration]))
    gaps = np.diff(edges)
    for index in np.flatnonzero(gaps >= th.PAUSE_S):
        start, end = float(edges[index]), float(edges[index + 1])
        findings.append(Finding("pause", "critical", f"Pause: no beat for {end - start:.1f} s from "
                                f"{clock(start, long)}", start, end))
    for first, last in _vt_runs(beat_times, widths):
        rate = 60.0 / float(np.mean(np.diff(beat_times[first:last + 1]))) if last > first else 0.0
        findings.append(Finding("vt", "critical", f"Ventricular tachycardia run: {last - first + 1} wide-QRS beats "
                                f"at {rate:.0f}/min from {clock(float(beat_times[first]), long)}",
                                float(beat_times[first]), float(beat_times[last])))
    return findings


def _window_rhythm(rr: np.ndarray) -> tuple[str, str]:
    """(category, level) of one window's RR intervals."""
    rate = 60.0 / float(rr.mean())
    irregular = irregular_fraction(rr)
    if rr.size >= th.AF_MIN_INTERVALS and irregular is not None and irregular >= th.AF_IRREGULAR_FRACTION \
            and dispersed_fraction(rr) >= th.AF_DISPERSED_FRACTION:
        return "af", "urgent"
    if rate < th.BRADYCARDIA_BPM:
        return "bradycardia", "urgent"
    if rate > th.TACHYCARDIA_BPM:
        return "tachycardia", "urgent"
    return "normal", "routine"


_RHYTHM_TEXT = {"normal": "Normal sinus rhythm", "bradycardia": "Sinus bradycardia",
                "tachycardia": "Sinus tachycardia", "af": "Atrial fibrillation (irregularly irregular RR)"}


def _describe(category: str, rr: np.ndarray, start: float, end: float, long: bool) -> str:
    rate = 60.0 / float(rr.mean())
    if category == "rate":
        limit = f"below {th.CRITICAL_LOW_BPM:.0f}" if rate < th.CRITICAL_LOW_BPM else \
            f"above {th.CRITICAL_HIGH_BPM:.0f}"
        text = f"Heart rate {rate:.0f}/min ({limit}/min)"
    else:
        text = f"{_RHYTHM_TEXT[category]}: {rate:.0f}/min"
        if category == "af":
            text += f", {irregular_fraction(rr):.0%} of successive RR intervals differ by more than {th.AF_STEP:.0%}"
    return text + (f" ({clock(start, True)}-{clock(end, True)})" if long else "")


def window_findings(beat_times: np.ndarray, duration: float, covered: list[tuple[float, float]]) -> list[Finding]:
    """Rhythm and critical-rate findings per window; windows overlapping `covered` (VT runs) keep only
    the rate finding. Consecutive windows of the same finding merge into one episode."""
    episodes: list[tuple[str, str, float, float, list[np.ndarray]]] = []
    for start, end in windows(duration):
        inside = beat_times[(beat_times >= start) & (beat_times < end)]
        previous = beat_times[beat_times < start][-1:]
        rr = np.diff(np.concatenate((previous, inside)))
        if rr.size < 2:
            continue
        category, level = _window_rhythm(rr)
        found = []
        if not any(a < end and b >= start for a, b in covered):
            found.append((category, level))
        rate = 60.0 / float(rr.mean())
        if rate < th.CRITICAL_LOW_BPM or rate > th.CRITICAL_HIGH_BPM:
            found.append(("rate", "critical"))
        for category, level in found:
            last = next((i for i in range(len(episodes) - 1, -1, -1) if episodes[i][0] == category), None)
            if last is not None and episodes[last][3] == start:  # the same finding goes on: one episode
                kind, lvl, first, _, parts = episodes[last]
                episodes[last] = (kind, lvl, first, end, parts + [rr])
            else:
                episodes.append((category, level, start, end, [rr]))
    long = duration > 60
    return [Finding(category, level, _describe(category, np.concatenate(parts), start, end, long), start, end)
            for category, level, start, end, parts in episodes]
