"""FHIR ECG Observations with SampledData <-> Waveform.

Reading accepts the waveform as `valueSampledData` (its `dimensions` interleaved channels) and/or
as `component.valueSampledData` (one lead per component, named by an MDC lead code or code.text).
Values are origin + factor * data; "E" (no value) becomes NaN, "L"/"U" the lower/upper limit.
Writing gives one component per lead: MDC lead code, code.text = the lead's recorded name,
origin 0 mV, factor = the lead's resolution, integer data."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np

from . import leads
from .waveform import Waveform, WaveformError

_NUMBER = (int, float)


def is_ecg(observation: dict[str, Any]) -> bool:
    """Does Observation.code carry one of the ECG study codes of mappings/ecg/study.json?"""
    wanted = {(c["system"], c["code"]) for c in leads.study_table()["observationCodes"]}
    codings = (observation.get("code") or {}).get("coding") or []
    return any(isinstance(c, dict) and (c.get("system"), c.get("code")) in wanted for c in codings)


def _number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool) and math.isfinite(value)


def _parse_values(data: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Data tokens as floats, and a code per token: 0 number, 1 E, 2 L, 3 U."""
    tokens = data.split()
    if not tokens:
        raise WaveformError("SampledData.data holds no samples", f"{where}.data")
    try:
        return np.array(tokens, dtype=np.float64), np.zeros(len(tokens), dtype=np.int8)
    except ValueError:
        pass  # letters among the numbers: the slower path below
    text = np.array(tokens)
    kinds = np.select([text == "E", text == "L", text == "U"], [1, 2, 3], 0).astype(np.int8)
    try:
        values = np.where(kinds == 0, text, "0").astype(np.float64)
    except ValueError:
        bad = next(i for i, t in enumerate(tokens) if kinds[i] == 0 and not _is_float(t))
        raise WaveformError(f"SampledData.data value {bad} ({tokens[bad][:20]!r}) is not a number, E, L or U",
                            f"{where}.data") from None
    return values, kinds


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def parse_sampled_data(sampled: Any, where: str) -> tuple[np.ndarray, float, float]:
    """(samples × dimensions in millivolts, period in ms, millivolts per data step) of one SampledData."""
    if not isinstance(sampled, dict):
        raise WaveformError("SampledData must be an object", where)
    period = sampled.get("period")
    if period is None:
        raise WaveformError("SampledData.period (ms between samples) is missing", f"{where}.period")
    if not _number(period) or period <= 0:
        raise WaveformError(f"SampledData.period must be a positive number of milliseconds, not {period!r}",
                            f"{where}.period")
    dimensions = sampled.get("dimensions")
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
        raise WaveformError(f"SampledData.dimensions must be a positive integer, not {dimensions!r}",
                            f"{where}.dimensions")
    origin = sampled.get("origin")
    if not isinstance(origin, dict) or not _number(origin.get("value")):
        raise WaveformError("SampledData.origin.value must be a number", f"{where}.origin")
    unit_name = origin.get("code") or origin.get("unit") or "mV"  # an ECG without a unit is in millivolts
    unit = leads.unit(unit_name)
    if unit is None:
        raise WaveformError(f"SampledData.origin unit {unit_name!r} is not an electric potential (mV, uV)",
                            f"{where}.origin")
    factor = sampled.get("factor", 1)
    if not _number(factor) or factor == 0:
        raise WaveformError(f"SampledData.factor must be a non-zero number, not {factor!r}", f"{where}.factor")
    data = sampled.get("data")
    if not isinstance(data, str):
        raise WaveformError("SampledData.data (the samples) is missing", f"{where}.data")
    values, kinds = _parse_values(data, where)
    if not np.isfinite(values).all():
        raise WaveformError("SampledData.data holds a value that is not a finite number", f"{where}.data")
    if len(values) % dimensions:
        raise WaveformError(f"SampledData.data has {len(values)} values, not a multiple of dimensions "
                            f"({dimensions})", f"{where}.data")
    signal = (origin["value"] + factor * values) * unit.to_millivolt
    for kind, limit_key in ((2, "lowerLimit"), (3, "upperLimit")):
        if (kinds == kind).any():
            limit = sampled.get(limit_key)
            if not _number(limit):
                raise WaveformError(f"SampledData.data uses {'LU'[kind - 2]} but {limit_key} is not given",
                                    f"{where}.{limit_key}")
            signal[kinds == kind] = (origin["value"] + factor * limit) * unit.to_millivolt
    signal[kinds == 1] = np.nan
    return signal.reshape(-1, dimensions), float(period), abs(factor) * unit.to_millivolt


def _lead_name(code: Any, fallback: str) -> str:
    if not isinstance(code, dict):
        return fallback
    if isinstance(code.get("text"), str) and code["text"].strip():
        return code["text"].strip()
    for coding in code.get("coding") or []:
        if isinstance(coding, dict) and leads.is_mdc_system(coding.get("system")):
            found = leads.lead_by_mdc(str(coding.get("code")))
            if found:
                return found.lead
    for coding in code.get("coding") or []:
        if isinstance(coding, dict) and isinstance(coding.get("display"), str):
            return coding["display"]
    return fallback


def parse_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def waveform_from_observation(observation: dict[str, Any]) -> Waveform:
    """The leads of an ECG Observation; WaveformError (422) names the element that is wrong."""
    channels: list[tuple[str, str, Any]] = []  # (element path, lead name, SampledData)
    if "valueSampledData" in observation:
        channels.append(("Observation.valueSampledData", _lead_name(observation.get("code"), "lead"),
                         observation["valueSampledData"]))
    components = observation.get("component") or []
    if not isinstance(components, list):
        raise WaveformError("Observation.component must be an array", "Observation.component")
    for index, component in enumerate(components):
        if isinstance(component, dict) and "valueSampledData" in component:
            channels.append((f"Observation.component[{index}].valueSampledData",
                             _lead_name(component.get("code"), f"lead {index + 1}"), component["valueSampledData"]))
    if not channels:
        raise WaveformError("The Observation carries no waveform (valueSampledData or component.valueSampledData)",
                            "Observation.component")
    columns, names, resolution = [], [], []
    period = length = None
    for where, name, sampled in channels:
        signal, this_period, step = parse_sampled_data(sampled, where)
        if period is None:
            period, length = this_period, signal.shape[0]
        elif not math.isclose(this_period, period, rel_tol=1e-9):
            raise WaveformError(f"Every lead must share one sampling period: {this_period} ms here, {period} ms "
                                "in the first", f"{where}.period")
        elif signal.shape[0] != length:
            raise WaveformError(f"Every lead must have as many samples: {signal.shape[0]} here, {length} in the first",
                                f"{where}.data")
        for dimension in range(signal.shape[1]):
            columns.append(signal[:, dimension])
            names.append(name if signal.shape[1] == 1 else f"{name} {dimension + 1}")
            resolution.append(step)
    start = parse_datetime(observation.get("effectiveDateTime")) or parse_datetime(
        (observation.get("effectivePeriod") or {}).get("start") if isinstance(observation.get("effectivePeriod"),
                                                                                 dict) else None)
    return Waveform(np.column_stack(columns), round(1000.0 / period, 6), names, start, resolution)


def _encode(column: np.ndarray, step: float) -> str:
    digital = np.round(column / step)
    if np.isnan(digital).any():
        return " ".join("E" if math.isnan(v) else str(int(v)) for v in digital.tolist())
    return " ".join(map(str, digital.astype(np.int64).tolist()))


def _format_period(fs: float) -> float:
    return float(f"{1000.0 / fs:.12g}")  # 12 significant digits: exact to far below one sample


def observation_from_waveform(waveform: Waveform, subject: dict[str, Any] | None = None,
                              identifier: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An ECG Observation (status final, LOINC 11524-6) with one SampledData component per lead."""
    study = leads.study_table()
    components = []
    for index, name in enumerate(waveform.names):
        step = waveform.lead_resolution(index)
        code: dict[str, Any] = {"text": name}
        known = leads.lead_code(name)
        if known:
            code = {"coding": [{"system": leads.mdc_system(), "code": known.mdc, "display": known.mdc_display}],
                    "text": name}
        components.append({"code": code, "valueSampledData": {
            "origin": {"value": 0, "unit": "mV", "system": leads.ucum_system(), "code": "mV"},
            "period": _format_period(waveform.fs), "factor": float(f"{step:.12g}"), "dimensions": 1,
            "data": _encode(waveform.signal[:, index], step)}})
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [study["category"]]}],
        "code": {"coding": study["writtenCodes"], "text": "ECG"},
    }
    if identifier:
        observation["identifier"] = identifier
    if subject:
        observation["subject"] = subject
    if waveform.start is not None:
        start = waveform.start if waveform.start.tzinfo else waveform.start.astimezone()
        observation["effectiveDateTime"] = start.isoformat()
    observation["component"] = components
    return observation
