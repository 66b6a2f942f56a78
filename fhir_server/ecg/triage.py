"""Triage of one ECG: usable leads, beats, findings, and the level of the worst finding."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import thresholds as th
from .filters import fill_missing
from .qrs import detect_qrs
from .quality import usable_leads
from .rhythm import (
    LEVELS,
    RHYTHM_PRIORITY,
    Finding,
    RRStatistics,
    beat_findings,
    qrs_widths,
    rr_statistics,
    window_findings,
)
from .waveform import Waveform


@dataclass
class TriageResult:
    level: str  # routine | urgent | critical
    rhythm: str  # a category of rhythm.RHYTHM_PRIORITY, or "unreadable"
    findings: list[Finding]  # worst first
    duration: float  # s
    fs: float
    beats: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # sample indices
    rr: RRStatistics | None = None
    qrs_width: float | None = None  # s, median over beats
    leads_used: list[str] = field(default_factory=list)
    leads_rejected: dict[str, str] = field(default_factory=dict)

    @property
    def worst(self) -> Finding:
        return self.findings[0]


def _unreadable(waveform: Waveform, why: str, rejected: dict[str, str] | None = None) -> TriageResult:
    finding = Finding("unreadable", "urgent", f"Signal unreadable: {why}; repeat the recording", 0.0,
                      waveform.duration)
    return TriageResult("urgent", "unreadable", [finding], waveform.duration, waveform.fs,
                        leads_rejected=rejected or {})


def analyse(waveform: Waveform) -> TriageResult:
    if waveform.duration < th.MIN_DURATION_S:
        return _unreadable(waveform, f"the recording lasts {waveform.duration:.1f} s, less than "
                                     f"{th.MIN_DURATION_S:.0f} s")
    filled = fill_missing(waveform.signal)
    usable, rejected = usable_leads(waveform, filled)
    if not usable:
        problems = "; ".join(f"lead {name} {why}" for name, why in rejected.items())
        return _unreadable(waveform, problems, rejected)
    signal = filled[:, usable]
    beats = detect_qrs(signal, waveform.fs)
    times = beats / waveform.fs
    widths = qrs_widths(signal, waveform.fs, beats)
    findings = beat_findings(times, widths, waveform.duration)
    covered = [(f.start, f.end) for f in findings if f.category == "vt"]
    findings += window_findings(times, waveform.duration, covered)
    findings += [Finding("lead", "routine", f"Lead {name} not used: {why}") for name, why in rejected.items()]
    findings.sort(key=lambda f: (-f.severity, f.category == "lead", f.start or 0.0))
    categories = {f.category for f in findings}
    rhythm = next((c for c in RHYTHM_PRIORITY if c in categories), "unreadable")
    level = findings[0].level
    if rhythm == "unreadable":  # beats but no window with two RR intervals and no pause: cannot say
        findings.insert(0, Finding("unreadable", "urgent", "Signal unreadable: too few beats to judge the rhythm; "
                                   "repeat the recording", 0.0, waveform.duration))
        level = max(level, "urgent", key=LEVELS.index)
    return TriageResult(level, rhythm, findings, waveform.duration, waveform.fs, beats, rr_statistics(times),
                        float(np.median(widths)) if widths.size else None,
                        [waveform.names[i] for i in usable], rejected)


def summary(result: TriageResult) -> dict:
    """The result as plain JSON data (the `fhir-server ecg --json` output)."""
    rr = result.rr
    return {
        "triage": result.level, "rhythm": result.rhythm, "duration_s": round(result.duration, 3), "fs": result.fs,
        "beats": int(result.beats.size),
        "heart_rate": None if rr is None or rr.rate_mean is None else {
            "mean": round(rr.rate_mean, 1), "min": round(rr.rate_min, 1), "max": round(rr.rate_max, 1)},
        "rr_irregularity": None if rr is None or rr.irregularity is None else round(rr.irregularity, 3),
        "qrs_width_ms": None if result.qrs_width is None else round(1000 * result.qrs_width),
        "worst": {"category": result.worst.category, "level": result.worst.level, "reason": result.worst.reason,
                  "start_s": result.worst.start, "end_s": result.worst.end},
        "findings": [{"category": f.category, "level": f.level, "reason": f.reason, "start_s": f.start,
                      "end_s": f.end} for f in result.findings],
        "leads_used": result.leads_used, "leads_rejected": result.leads_rejected,
    }
