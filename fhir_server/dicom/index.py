"""The DICOM instance index (table `dicom_instances`): what was received, where its file lies, and the
attribute matching that C-FIND and QIDO-RS share (PS3.4 C.2.2.2: single value, UID list, wildcard,
range and universal matching)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, distinct, func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ..store.schema import dicom_instances as T

# DICOM keyword -> index column, per query level; each level also answers the levels above it.
PATIENT_KEYS = {"PatientID": T.c.patient_id, "IssuerOfPatientID": T.c.issuer, "PatientName": T.c.patient_name,
                "PatientBirthDate": T.c.birth_date, "PatientSex": T.c.sex}
STUDY_KEYS = {**PATIENT_KEYS, "StudyInstanceUID": T.c.study_uid, "StudyDate": T.c.study_date,
              "StudyTime": T.c.study_time, "AccessionNumber": T.c.accession, "StudyID": T.c.study_id,
              "StudyDescription": T.c.study_description, "ReferringPhysicianName": T.c.referring_physician}
SERIES_KEYS = {"StudyInstanceUID": T.c.study_uid, "SeriesInstanceUID": T.c.series_uid, "Modality": T.c.modality,
               "SeriesNumber": T.c.series_number, "SeriesDescription": T.c.series_description,
               "BodyPartExamined": T.c.body_part}
INSTANCE_KEYS = {**SERIES_KEYS, "SOPInstanceUID": T.c.sop_uid, "SOPClassUID": T.c.sop_class_uid,
                 "InstanceNumber": T.c.instance_number}
# Attributes a query may match on at any level (a series query may name the patient, say).
MATCHABLE = {**STUDY_KEYS, **INSTANCE_KEYS, "ModalitiesInStudy": T.c.modality}
UID_KEYS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}
RANGE_KEYS = {"StudyDate", "StudyTime", "PatientBirthDate"}
MULTI_VALUED_KEYS = {"ModalitiesInStudy"}  # a value list matches any one of its values
# Range bounds: DA is YYYYMMDD; TM is HH[MM[SS[.F{1,6}]]] (colons of the old ACR-NEMA form removed first).
_BOUND = {"StudyDate": re.compile(r"^\d{8}$"), "PatientBirthDate": re.compile(r"^\d{8}$"),
          "StudyTime": re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")}
LEVELS = {"PATIENT": ("patient_id", PATIENT_KEYS), "STUDY": ("study_uid", STUDY_KEYS),
          "SERIES": ("series_uid", SERIES_KEYS), "IMAGE": ("sop_uid", INSTANCE_KEYS)}


class QueryError(ValueError):
    """A query key or value that cannot be matched (unknown attribute, bad range)."""


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _condition(keyword: str, value: Any):
    column = MATCHABLE.get(keyword)
    if column is None:
        raise QueryError(f"{keyword} is not a supported matching key")
    if value is None or value == "" or value == "*":
        return None  # universal matching: the key is only asked to be returned
    if isinstance(value, int) or column.type.python_type is int:
        try:
            return column == int(value)
        except (TypeError, ValueError) as exc:
            raise QueryError(f"{keyword} must be an integer, not {value!r}") from exc
    value = str(value).strip()
    if keyword in UID_KEYS:
        uids = [u.strip() for u in value.replace(",", "\\").split("\\") if u.strip()]
        return column.in_(uids)
    if keyword in MULTI_VALUED_KEYS and ("\\" in value or "," in value):  # QIDO-RS lists use commas
        return column.in_([v.strip() for v in value.replace(",", "\\").split("\\") if v.strip()])
    if keyword in RANGE_KEYS and "-" in value:
        low, _, high = (part.replace(":", "").strip() for part in value.partition("-"))
        if not low and not high:
            raise QueryError(f"{keyword} range {value!r} has no bounds")
        if any(bound and not _BOUND[keyword].match(bound) for bound in (low, high)):
            raise QueryError(f"{keyword} range {value!r} has a malformed bound")
        parts = []
        if low:
            parts.append(column >= low)
        if high:
            # a time bound "1200" covers 1200xx.xxx: compare on the bound's own length
            parts.append(func.substr(column, 1, len(high)) <= high)
        return and_(*parts)
    if keyword in RANGE_KEYS:
        value = value.replace(":", "")
    if "*" in value or "?" in value:
        target = func.lower(column) if keyword in ("PatientName", "ReferringPhysicianName") else column
        pattern = _like(value.lower() if keyword in ("PatientName", "ReferringPhysicianName") else value)
        return target.like(pattern, escape="\\")
    if keyword in ("PatientName", "ReferringPhysicianName"):
        return func.lower(column) == value.lower()
    return column == value


def _where(filters: dict[str, Any]):
    conditions = [c for c in (_condition(k, v) for k, v in filters.items()) if c is not None]
    return and_(*conditions) if conditions else literal(True)


# PostgreSQL: the two statements of every C-STORE go straight through asyncpg, without SQLAlchemy's layers
# (a tenth of the SCP's GIL time under load went to them).
_COLUMNS = [c.name for c in T.columns if c.name != "pk"]
_PG_EXISTS = "SELECT 1 FROM dicom_instances WHERE sop_uid = $1"
_PG_INSERT = (f"INSERT INTO dicom_instances ({', '.join(_COLUMNS)})"
              f" VALUES ({', '.join(f'${n}' for n in range(1, len(_COLUMNS) + 1))})"
              " ON CONFLICT DO NOTHING RETURNING pk")


# Elsewhere (SQLite) built once: constructing them per instance cost more than running them.
_EXISTS = select(T.c.pk).where(T.c.sop_uid == bindparam("sop_uid")).limit(1)


class DicomIndex:
    def __init__(self, store):
        self.store = store  # a SqlResourceStore: the index lives in the same database
        self._insert = store.insert_ignoring_conflict(T)

    async def exists(self, sop_uid: str) -> bool:
        if self.store.backend == "postgresql":
            return await self.store.fetchval(_PG_EXISTS, sop_uid) is not None
        async with self.store.write_engine.connect() as conn:  # the primary: a replica may lag behind
            return (await conn.execute(_EXISTS, {"sop_uid": sop_uid})).first() is not None

    async def add(self, instance, blob_key: str, fragments: str) -> bool:
        """Record a stored instance (fragments: its ImagingStudy fragments as JSON text); False when the SOP
        Instance UID was already there."""
        values = {"sop_uid": instance.sop_uid, "series_uid": instance.series_uid, "study_uid": instance.study_uid,
                  "sop_class_uid": instance.sop_class_uid, "transfer_syntax": instance.transfer_syntax,
                  **{k: (v[:200] if isinstance(v, str) else v) for k, v in instance.attributes.items()},
                  "blob_key": blob_key, "size": len(instance.raw), "received_at": datetime.now(UTC),
                  "fhir": fragments, "dicom_json": instance.json}
        for key, limit in (("birth_date", 8), ("study_date", 8), ("study_time", 16), ("sex", 16), ("study_id", 16),
                           ("modality", 16), ("patient_id", 64), ("issuer", 64), ("accession", 64),
                           ("body_part", 64)):
            if isinstance(values.get(key), str):
                values[key] = values[key][:limit]
        if self.store.backend == "postgresql":
            return await self.store.fetchval(_PG_INSERT, *(values[c] for c in _COLUMNS)) is not None
        async with self.store.write_engine.begin() as conn:
            result = await conn.execute(self._insert, values)
        return result.rowcount == 1

    async def study_instances(self, conn: AsyncConnection, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of a study with its ImagingStudy fragments, read inside the caller's transaction."""
        rows = await conn.execute(
            select(T.c.sop_uid, T.c.series_uid, T.c.patient_id, T.c.issuer, T.c.accession, T.c.sop_class_uid,
                   T.c.blob_key, T.c.fhir)
            .where(T.c.study_uid == study_uid).order_by(T.c.series_number, T.c.series_uid, T.c.instance_number,
                                                        T.c.pk))
        return [{**row._mapping, "fhir": orjson.loads(row.fhir)} for row in rows]

    async def instances(self, study_uid: str, series_uid: str | None = None,
                        sop_uid: str | None = None) -> list[dict[str, Any]]:
        """Stored instances of a study (or series, or one instance) in series and instance order."""
        query = select(T).where(T.c.study_uid == study_uid)
        if series_uid is not None:
            query = query.where(T.c.series_uid == series_uid)
        if sop_uid is not None:
            query = query.where(T.c.sop_uid == sop_uid)
        query = query.order_by(T.c.series_number, T.c.series_uid, T.c.instance_number, T.c.pk)
        async with self.store.read_engine.connect() as conn:
            return [dict(row._mapping) for row in await conn.execute(query)]

    async def documents(self, level: str, uids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored DICOM JSON of one instance of each study, series or instance (by level), for the
        attributes the index has no column for."""
        column = T.c[LEVELS[level][0]]
        first = select(func.min(T.c.pk)).where(column.in_(uids)).group_by(column)
        async with self.store.read_engine.connect() as conn:
            rows = await conn.execute(select(column, T.c.dicom_json).where(T.c.pk.in_(first)))
            return {uid: orjson.loads(document) for uid, document in rows}

    async def find(self, level: str, filters: dict[str, Any], *, limit: int | None = None,
                   offset: int = 0) -> list[dict[str, Any]]:
        """Matches at PATIENT, STUDY, SERIES or IMAGE level: one dict of keyword -> value per match,
        with the level's counts (NumberOf...RelatedInstances, ModalitiesInStudy)."""
        if level not in LEVELS:
            raise QueryError(f"Query/Retrieve level {level!r} is not PATIENT, STUDY, SERIES or IMAGE")
        group, keys = LEVELS[level]
        group_col = T.c[group]
        matched = select(group_col).where(_where(filters))
        if level == "IMAGE":
            query = select(*(col.label(kw) for kw, col in {**STUDY_KEYS, **INSTANCE_KEYS}.items())).where(
                T.c.sop_uid.in_(matched)).order_by(T.c.study_uid, T.c.series_number, T.c.series_uid,
                                                   T.c.instance_number, T.c.sop_uid)
        else:
            shown = {**keys, **(STUDY_KEYS if level == "SERIES" else {})}
            columns = [func.min(col).label(kw) for kw, col in shown.items() if kw != group_keyword(level)]
            query = (select(group_col.label(group_keyword(level)), *columns,
                            func.count(distinct(T.c.study_uid)).label("studies"),
                            func.count(distinct(T.c.series_uid)).label("series"),
                            func.count().label("instances"))
                     .where(group_col.in_(matched)).group_by(group_col).order_by(group_col))
        if limit is not None:
            query = query.limit(limit).offset(offset)
        async with self.store.read_engine.connect() as conn:
            rows = list(await conn.execute(query))
            results = [dict(row._mapping) for row in rows]
            if level == "STUDY" and results:
                pairs = await conn.execute(
                    select(T.c.study_uid, T.c.modality).distinct()
                    .where(T.c.study_uid.in_([r["StudyInstanceUID"] for r in results])))
                modalities: dict[str, list[str]] = {}
                for study_uid, modality in pairs:
                    if modality:
                        modalities.setdefault(study_uid, []).append(modality)
        for result in results:
            if level == "PATIENT":
                result["NumberOfPatientRelatedStudies"] = result.pop("studies")
                result["NumberOfPatientRelatedSeries"] = result.pop("series")
                result["NumberOfPatientRelatedInstances"] = result.pop("instances")
            elif level == "STUDY":
                result.pop("studies")
                result["NumberOfStudyRelatedSeries"] = result.pop("series")
                result["NumberOfStudyRelatedInstances"] = result.pop("instances")
                result["ModalitiesInStudy"] = sorted(modalities.get(result["StudyInstanceUID"], []))
            elif level == "SERIES":
                result.pop("studies")
                result.pop("series")
                result["NumberOfSeriesRelatedInstances"] = result.pop("instances")
        return results


def group_keyword(level: str) -> str:
    return {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
            "IMAGE": "SOPInstanceUID"}[level]
