"""Synthetic county-alliance data for benchmarks: Patients and vital-signs / ECG Observations.

Deterministic: the same seed gives the same resources. Observations are generated in numbered
batches, each from its own seeded RNG, so any process can build any batch and the data do not
depend on how the batches were spread over worker processes.

    patients(1000, seed=1)                            # list of Patient dicts, identifiers RID000000..
    observation_batch(ids, seed=1, batch=3, size=1000, total=100_000)   # Observations 3000..3999

Observation i refers to patient i % len(ids) (an even spread). The mix is ~40% blood-pressure
panels (LOINC 85354-9 with systolic/diastolic components in mm[Hg]), ~40% heart rates (8867-4, /min)
and ~20% short ECG strips (11524-6 with a valueSampledData of ~50 samples in mV, 2 ms period).
effectiveDateTime is uniform over 2024-01-01 .. 2026-10-31 in China Standard Time (+08:00).
"""

from __future__ import annotations

import math
import random
from datetime import date, datetime, timedelta, timezone
from typing import Any

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
RESIDENT_ID_SYSTEM = "urn:oid:2.16.156.10011.1.1"  # resident health-record id
CST = timezone(timedelta(hours=8))

BLOOD_PRESSURE = "85354-9"
SYSTOLIC = "8480-6"
DIASTOLIC = "8462-4"
HEART_RATE = "8867-4"
ECG = "11524-6"

# Observation dates: [FIRST_DAY, LAST_DAY] inclusive.
FIRST_DAY = datetime(2024, 1, 1, tzinfo=CST)
LAST_DAY = datetime(2026, 10, 31, 23, 59, 59, tzinfo=CST)
SPAN_SECONDS = int((LAST_DAY - FIRST_DAY).total_seconds())

SURNAMES = ["Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou",
            "Xu", "Sun", "Ma", "Zhu", "Hu", "Guo", "He", "Lin", "Gao", "Luo"]
GIVEN_FEMALE = ["Fang", "Min", "Jing", "Li", "Xiuying", "Juan", "Yan", "Xia", "Guiying", "Hui", "Lan", "Ping"]
GIVEN_MALE = ["Wei", "Qiang", "Lei", "Jun", "Yong", "Jie", "Tao", "Ming", "Chao", "Gang", "Hua", "Jian"]
TOWNS = ["Chengguan", "Dongguan", "Xiaba", "Longquan", "Baisha", "Qingshui", "Hongqiao", "Shuikou"]


def rid(n: int) -> str:
    """The resident identifier value of patient number n."""
    return f"RID{n:06d}"


def patient(n: int, rng: random.Random) -> dict[str, Any]:
    gender = rng.choice(("female", "male"))
    family = rng.choice(SURNAMES)
    given = rng.choice(GIVEN_FEMALE if gender == "female" else GIVEN_MALE)
    born = date(1935, 1, 1) + timedelta(days=rng.randrange(365 * 85))
    return {
        "resourceType": "Patient",
        "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": rid(n)}],
        "active": True,
        "name": [{"use": "official", "family": family, "given": [given], "text": f"{family} {given}"}],
        "gender": gender,
        "birthDate": born.isoformat(),
        "address": [{"use": "home", "city": rng.choice(TOWNS), "country": "CN"}],
    }


def patients(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """Patients 0..count-1 with identifiers RID000000 ..."""
    rng = random.Random(f"{seed}-patients")
    return [patient(n, rng) for n in range(count)]


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"system": system, "code": code, "display": display}


def _category(code: str, display: str) -> list[dict[str, Any]]:
    return [{"coding": [_coding(CATEGORY, code, display)], "text": display}]


def _quantity(value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


def _when(rng: random.Random) -> str:
    return (FIRST_DAY + timedelta(seconds=rng.randrange(SPAN_SECONDS + 1))).isoformat(timespec="seconds")


def blood_pressure(rng: random.Random, subject: str) -> dict[str, Any]:
    systolic = rng.randint(95, 185)
    diastolic = rng.randint(55, min(systolic - 20, 115))
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": _category("vital-signs", "Vital Signs"),
        "code": {"coding": [_coding(LOINC, BLOOD_PRESSURE, "Blood pressure panel with all children optional")],
                 "text": "Blood pressure"},
        "subject": {"reference": subject},
        "effectiveDateTime": _when(rng),
        "component": [
            {"code": {"coding": [_coding(LOINC, SYSTOLIC, "Systolic blood pressure")]},
             "valueQuantity": _quantity(systolic, "mmHg", "mm[Hg]")},
            {"code": {"coding": [_coding(LOINC, DIASTOLIC, "Diastolic blood pressure")]},
             "valueQuantity": _quantity(diastolic, "mmHg", "mm[Hg]")},
        ],
    }


def heart_rate(rng: random.Random, subject: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": _category("vital-signs", "Vital Signs"),
        "code": {"coding": [_coding(LOINC, HEART_RATE, "Heart rate")], "text": "Heart rate"},
        "subject": {"reference": subject},
        "effectiveDateTime": _when(rng),
        "valueQuantity": _quantity(rng.randint(48, 135), "beats/minute", "/min"),
    }


def _ecg_samples(rng: random.Random, count: int = 50) -> str:
    """~100 ms of one lead around a QRS complex (mV), with a little noise."""
    centre = rng.randint(18, 32)
    amplitude = rng.uniform(0.8, 1.6)
    values = []
    for i in range(count):
        qrs = amplitude * math.exp(-((i - centre) / 2.2) ** 2) - 0.15 * math.exp(-((i - centre - 4) / 2.0) ** 2)
        values.append(f"{qrs + rng.gauss(0, 0.015):.3f}")
    return " ".join(values)


def ecg(rng: random.Random, subject: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": _category("procedure", "Procedure"),
        "code": {"coding": [_coding(LOINC, ECG, "EKG study")], "text": "ECG"},
        "subject": {"reference": subject},
        "effectiveDateTime": _when(rng),
        "valueSampledData": {"origin": _quantity(0, "mV", "mV"), "period": 2, "dimensions": 1,
                             "data": _ecg_samples(rng)},
    }


def observation(rng: random.Random, subject: str) -> dict[str, Any]:
    """One Observation of the mix: 40% blood pressure, 40% heart rate, 20% ECG."""
    roll = rng.random()
    maker = blood_pressure if roll < 0.4 else heart_rate if roll < 0.8 else ecg
    return maker(rng, subject)


def observation_batch(patient_ids: list[str], *, seed: int, batch: int, size: int,
                      total: int) -> list[dict[str, Any]]:
    """Observations batch*size .. min(total, (batch+1)*size)-1; observation i is about patient i % n."""
    rng = random.Random(f"{seed}-observations-{batch}")
    first, last = batch * size, min(total, (batch + 1) * size)
    n = len(patient_ids)
    return [observation(rng, f"Patient/{patient_ids[i % n]}") for i in range(first, last)]


def month_ranges() -> list[tuple[str, str]]:
    """(first day, first day of next month) of every month the generated dates cover."""
    out = []
    year, month = FIRST_DAY.year, FIRST_DAY.month
    while (year, month) <= (LAST_DAY.year, LAST_DAY.month):
        nxt = (year + month // 12, month % 12 + 1)
        out.append((f"{year:04d}-{month:02d}-01", f"{nxt[0]:04d}-{nxt[1]:02d}-01"))
        year, month = nxt
    return out


__all__ = ["BLOOD_PRESSURE", "DIASTOLIC", "ECG", "HEART_RATE", "LOINC", "RESIDENT_ID_SYSTEM", "SYSTOLIC", "UCUM",
           "month_ranges", "observation", "observation_batch", "patient", "patients", "rid"]
