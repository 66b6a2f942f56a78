"""Applies `mappings/dicom-imagingstudy.json` to a dataset: the ImagingStudy fragments (study, series,
instance level) and Patient elements that one instance contributes. The table says which attribute
goes where; this module only knows how to read, transform and place a value."""

from __future__ import annotations

import re
from typing import Any

from pydicom.dataset import Dataset

from ..mapping_tables import load_table

TABLE = "dicom-imagingstudy.json"
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


def _datetime(date: str | None, time: str | None, timezone: str) -> str | None:
    """DICOM DA + TM -> FHIR dateTime. FHIR wants a zone with a time; DICOM times are local."""
    date = (date or "").strip()
    if not re.fullmatch(r"\d{8}", date):
        return None
    day = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    time = (time or "").strip().replace(":", "")
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?", time)
    if not match:
        return day
    hh, mm, ss, frac = match.group(1), match.group(2) or "00", match.group(3) or "00", match.group(4) or ""
    if int(hh) > 23 or int(mm) > 59 or int(ss) > 59:
        return day
    return f"{day}T{hh}:{mm}:{ss}{frac[:4]}{timezone}"


def _person_name(value: Any) -> str | None:
    """'Family^Given^Middle^Prefix^Suffix' as it reads: 'Prefix Given Middle Family Suffix'."""
    parts = str(value).split("=")[0].split("^")
    parts += [""] * (5 - len(parts))
    family, given, middle, prefix, suffix = (p.strip() for p in parts[:5])
    text = " ".join(p for p in (prefix, given, middle, family, suffix) if p)
    return text or None


def _human_name(value: Any) -> dict[str, Any] | None:
    parts = str(value).split("=")[0].split("^")
    parts += [""] * (5 - len(parts))
    family, given, middle, prefix, suffix = (p.strip() for p in parts[:5])
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    if given or middle:
        name["given"] = [g for g in (given, middle) if g]
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    if name:
        name["text"] = _person_name(value)
    return name or None


def _date(value: Any) -> str | None:
    value = str(value).strip()
    return f"{value[:4]}-{value[4:6]}-{value[6:]}" if re.fullmatch(r"\d{8}", value) else None


def _code_sequence(items: Any, schemes: dict[str, str]) -> list[dict[str, Any]]:
    concepts = []
    for item in items or []:
        code, designator = item.get("CodeValue"), item.get("CodingSchemeDesignator")
        meaning = item.get("CodeMeaning")
        if not code:
            continue
        coding = {"system": schemes.get(str(designator), f"urn:dicom:csd:{designator}"), "code": str(code)}
        if meaning:
            coding["display"] = str(meaning)
        concept: dict[str, Any] = {"coding": [coding]}
        if meaning:
            concept["text"] = str(meaning)
        concepts.append(concept)
    return concepts


def _fill(template: Any, value: Any) -> Any:
    if isinstance(template, str):
        return value if template == "{value}" else template.replace("{value}", str(value))
    if isinstance(template, dict):
        return {k: _fill(v, value) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, value) for v in template]
    return template


def _place(target: dict[str, Any], element: str, value: Any) -> None:
    if element.endswith("[]"):
        items = value if isinstance(value, list) else [value]
        target.setdefault(element[:-2], []).extend(items)
    elif element not in target:
        target[element] = value


class DicomMapping:
    def __init__(self, timezone: str = "+08:00", table: dict[str, Any] | None = None):
        self.table = table or load_table(TABLE)
        self.timezone = timezone
        self.lookups = self.table["lookups"]

    def _value(self, ds: Dataset, rule: dict[str, Any]) -> Any:
        transform = rule.get("transform", "text")
        if transform == "datetime":
            date_kw, time_kw = rule["keywords"]
            return _datetime(ds.get(date_kw), ds.get(time_kw), self.timezone)
        if rule.get("when_absent") and ds.get(rule["when_absent"]):
            return None
        raw = ds.get(rule["keyword"])
        if raw is None or raw == "":
            return None
        if transform == "code-sequence":
            return _code_sequence(raw, self.lookups["codingSchemes"]) or None
        if transform == "integer":
            try:
                return int(raw)
            except (TypeError, ValueError):
                return None
        if transform == "person-name":
            return _person_name(raw)
        if transform == "human-name":
            return _human_name(raw)
        if transform == "date":
            return _date(raw)
        if transform.startswith("lookup:"):
            key = str(raw).strip().upper()
            found = self.lookups[transform.split(":", 1)[1]].get(key)
            if found is None and transform == "lookup:bodyParts":
                return {"display": key}  # an unlisted body part keeps its DICOM term
            return found
        text = str(raw).strip()
        return text or None

    def _level(self, ds: Dataset, level: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for rule in self.table[level]:
            value = self._value(ds, rule)
            if value is None:
                continue
            if "template" in rule:
                value = _fill(rule["template"], value)
            _place(out, rule["element"], value)
        return out

    def fragments(self, ds: Dataset) -> dict[str, Any]:
        """What this instance says about its study, series, itself and its patient."""
        return {level: self._level(ds, level) for level in ("study", "series", "instance", "patient")}

    def patient_system(self, issuer: str | None) -> str:
        rules = self.table["patientIdentifier"]
        if not issuer:
            return rules["noIssuer"]
        if issuer in rules["issuers"]:
            return rules["issuers"][issuer]
        if _OID.match(issuer):
            return f"urn:oid:{issuer}"
        if re.match(r"^[a-z][a-z0-9+.-]*:", issuer, re.I):
            return issuer
        return rules["issuerTemplate"].replace("{issuer}", re.sub(r"[^A-Za-z0-9._-]", "_", issuer))

    @property
    def reconciliation_tag(self) -> dict[str, str]:
        return self.table["patientIdentifier"]["reconciliationTag"]
