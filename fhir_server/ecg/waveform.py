"""The in-memory ECG every format converts to and from: samples in millivolts, one column per lead."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from ..model.outcome import Unprocessable

DEFAULT_RESOLUTION_MV = 0.001  # 1 µV: finer than any ECG front end, so re-encoding loses nothing clinical


class WaveformError(Unprocessable):
    """The waveform cannot be read (422), with the element at fault in `expression`."""

    def __init__(self, diagnostics: str, expression: str):
        super().__init__(diagnostics, expression=[expression])


@dataclass
class Waveform:
    signal: np.ndarray  # (samples, leads) float64 millivolts; NaN where a sample has no value
    fs: float  # sampling frequency, Hz
    names: list[str]  # lead names as recorded (MLII, V5, I, ...)
    start: datetime | None = None
    resolution: list[float] | None = None  # millivolts per digital step per lead, where the source had one

    @property
    def duration(self) -> float:
        return self.signal.shape[0] / self.fs if self.fs > 0 else 0.0

    def lead_resolution(self, index: int) -> float:
        if self.resolution and self.resolution[index] > 0:
            return self.resolution[index]
        return DEFAULT_RESOLUTION_MV

    def select(self, columns: list[int]) -> Waveform:
        return Waveform(self.signal[:, columns], self.fs, [self.names[c] for c in columns], self.start,
                        [self.lead_resolution(c) for c in columns])
