"""Synthetic ECGs for the tests and the benchmark: beats as sums of Gaussian waves (P, Q, R, S, T)
placed at chosen times, on a wandering baseline with noise, from a seeded random generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fhir_server.ecg.waveform import Waveform

# MIT-BIH record 100 in the alliance's shared material beside the repository
MITDB_100 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ecg" / "mitdb" / "100"
TWELVE_LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
# rough amplitude and polarity of the QRS per lead relative to lead II
_LEAD_GAIN = {"I": 0.7, "II": 1.0, "III": 0.4, "aVR": -0.8, "aVL": 0.3, "aVF": 0.7, "V1": -0.6, "V2": -0.4,
              "V3": 0.6, "V4": 1.2, "V5": 1.1, "V6": 0.9, "MLII": 1.0}

# (amplitude mV, centre s from R, width σ s) of each wave
_NARROW = [(0.15, -0.20, 0.025), (-0.10, -0.035, 0.010), (1.20, 0.0, 0.012), (-0.30, 0.035, 0.012),
           (0.30, 0.28, 0.050)]
_WIDE = [(-0.40, -0.06, 0.025), (1.50, 0.0, 0.035), (-0.90, 0.07, 0.030), (-0.35, 0.30, 0.060)]


def beat_times(rhythm: str, duration: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(R times in s, wide flags) for a rhythm: normal, brady, tachy, af, pause, vt, asystole, slow, fast."""
    rates = {"normal": 72, "brady": 50, "tachy": 118, "slow": 34, "fast": 165, "pause": 70, "vt": 75, "af": 95}
    if rhythm == "asystole":
        return np.empty(0), np.empty(0, dtype=bool)
    times, wide = [], []
    t = 0.4
    while t < duration - 0.4:
        times.append(t)
        wide.append(False)
        mean_rr = 60.0 / rates[rhythm]
        if rhythm == "af":
            t += float(np.clip(rng.normal(mean_rr, 0.22 * mean_rr), 0.33, 1.6))
        else:
            t += mean_rr * float(1 + rng.normal(0, 0.015))  # a little sinus arrhythmia
        if rhythm == "pause" and 3.5 < t < 4.5:
            t += 3.6  # sinus arrest
        if rhythm == "vt" and 4.0 < t < 4.6:
            t = times[-1]
            for _ in range(6):  # a salvo of six wide beats at 180/min
                t += 60.0 / 180
                times.append(t)
                wide.append(True)
            t += 0.9
    return np.asarray(times), np.asarray(wide)


def synthesise(rhythm: str, *, duration: float = 10.0, fs: float = 500.0, leads: list[str] | None = None,
               seed: int = 0, noise_mv: float = 0.02) -> Waveform:
    rng = np.random.default_rng(seed)
    leads = leads or ["II"]
    n = int(duration * fs)
    t = np.arange(n) / fs
    base = np.zeros(n)
    times, wide = beat_times(rhythm, duration, rng)
    for r, is_wide in zip(times, wide, strict=True):
        waves = _WIDE if is_wide else (_NARROW[1:] if rhythm == "af" else _NARROW)
        lo, hi = max(int((r - 0.45) * fs), 0), min(int((r + 0.6) * fs), n)
        for amplitude, centre, sigma in waves:
            base[lo:hi] += amplitude * np.exp(-0.5 * ((t[lo:hi] - r - centre) / sigma) ** 2)
    if rhythm == "af":  # fibrillatory waves instead of P waves
        base += 0.05 * np.sin(2 * np.pi * 6.3 * t + rng.uniform(0, 6)) + 0.03 * np.sin(2 * np.pi * 7.9 * t)
    columns = []
    for lead in leads:
        wander = 0.15 * np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 6))
        columns.append(_LEAD_GAIN.get(lead, 1.0) * base + wander + rng.normal(0, noise_mv, n))
    return Waveform(np.column_stack(columns), fs, list(leads))


def noise(duration: float = 10.0, fs: float = 500.0, seed: int = 0) -> Waveform:
    """Electrode motion and muscle noise with no ECG in it."""
    rng = np.random.default_rng(seed)
    n = int(duration * fs)
    signal = rng.normal(0, 0.4, n) + np.cumsum(rng.normal(0, 0.05, n))
    return Waveform(signal[:, None], fs, ["II"])
