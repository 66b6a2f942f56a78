"""The lead and unit vocabularies of mappings/ecg/: lead names <-> MDC codes, DICOM channel sources,
WFDB signal names; potential units <-> millivolts."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from ..mapping_tables import load_table


@dataclass(frozen=True, slots=True)
class LeadCode:
    lead: str  # canonical name: I, II, III, aVR, aVL, aVF, V1..V6
    mdc: str
    mdc_display: str
    scpecg: str
    dicom_meaning: str


@dataclass(frozen=True, slots=True)
class Unit:
    ucum: str
    to_millivolt: float
    dicom: str
    dicom_meaning: str


@cache
def _leads() -> tuple[str, tuple[str, ...], dict[str, LeadCode], dict[str, str]]:
    table = load_table("ecg/leads.json")
    by_lead = {}
    aliases = {}
    for row in table["leads"]:
        code = LeadCode(row["lead"], row["mdc"], row["mdcDisplay"], row["scpecg"], row["dicomMeaning"])
        by_lead[code.lead] = code
        for name in (code.lead, *row["wfdb"]):
            aliases[name.upper()] = code.lead
    return table["mdcSystem"], tuple(table["mdcSystemAliases"]), by_lead, aliases


def mdc_system() -> str:
    return _leads()[0]


def is_mdc_system(system: str | None) -> bool:
    return system == mdc_system() or system in _leads()[1]


def lead_code(name: str) -> LeadCode | None:
    """The codes of a lead by its name as a WFDB header or a person writes it (MLII -> lead II)."""
    canonical = _leads()[3].get(name.strip().upper())
    return _leads()[2][canonical] if canonical else None


def lead_by_mdc(code: str) -> LeadCode | None:
    return next((c for c in _leads()[2].values() if c.mdc == code), None)


def lead_by_scpecg(code: str) -> LeadCode | None:
    return next((c for c in _leads()[2].values() if c.scpecg == code), None)


def standard_leads() -> tuple[str, ...]:
    return tuple(_leads()[2])


@cache
def _units() -> tuple[str, dict[str, Unit], dict[str, str]]:
    table = load_table("ecg/units.json")
    by_ucum = {}
    aliases = {}
    for row in table["units"]:
        unit = Unit(row["ucum"], float(row["toMillivolt"]), row["dicom"], row["dicomMeaning"])
        by_ucum[unit.ucum] = unit
        for name in (unit.ucum, unit.dicom, *row["wfdb"]):
            aliases[name] = unit.ucum
    return table["ucumSystem"], by_ucum, aliases


def ucum_system() -> str:
    return _units()[0]


def unit(name: str | None) -> Unit | None:
    """A potential unit by UCUM code, WFDB or DICOM name; None when unknown."""
    if not name:
        return None
    canonical = _units()[2].get(name.strip())
    return _units()[1][canonical] if canonical else None


@cache
def study_table() -> dict:
    return load_table("ecg/study.json")
