"""Beat-by-beat comparison of detected QRS complexes with reference annotations, as ANSI/AAMI EC57
scores it: a detection within 150 ms of a reference beat matches it (each used once); only beat
annotations count; beats before `start_s` (EC57's 5-minute learning period) are left out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# MIT-BIH / WFDB annotation codes that mark a beat; rhythm, noise and comment annotations do not.
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")
MATCH_WINDOW_S = 0.150


@dataclass(frozen=True)
class BeatScore:
    true_positives: int
    false_negatives: int
    false_positives: int

    @property
    def sensitivity(self) -> float:
        found = self.true_positives + self.false_negatives
        return self.true_positives / found if found else 1.0

    @property
    def positive_predictivity(self) -> float:
        detected = self.true_positives + self.false_positives
        return self.true_positives / detected if detected else 1.0


def reference_beats(samples: np.ndarray, symbols: list[str]) -> np.ndarray:
    return np.asarray([s for s, symbol in zip(samples, symbols, strict=True) if symbol in BEAT_SYMBOLS],
                      dtype=np.int64)


def score_beats(reference: np.ndarray, detected: np.ndarray, fs: float, start_s: float = 0.0) -> BeatScore:
    """Match each reference beat to the nearest unused detection within the window, in time order."""
    window = MATCH_WINDOW_S * fs
    start = start_s * fs
    reference = np.sort(reference[reference >= start])
    # a detection just before the start may match the first scored beat; none earlier counts
    detected = np.sort(detected[detected >= start - window])
    matched = 0
    j = 0
    used = np.zeros(len(detected), dtype=bool)
    for beat in reference:
        while j < len(detected) and detected[j] < beat - window:
            j += 1
        best = -1
        for k in range(j, len(detected)):
            if detected[k] > beat + window:
                break
            if not used[k] and (best < 0 or abs(detected[k] - beat) < abs(detected[best] - beat)):
                best = k
        if best >= 0:
            used[best] = True
            matched += 1
    unmatched_detections = int((~used & (detected >= start)).sum())
    return BeatScore(matched, len(reference) - matched, unmatched_detections)
