"""QIDO-RS (PS3.18 10.6): query parameters to index filters, and matches to DICOM JSON."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from .index import DicomIndex, QueryError
from .urls import absolute_bulk_data, instance_url, series_url, study_url

# Instance attributes PS3.18 Table 10.6.3-5 returns by default that only the stored DICOM JSON holds.
_IMAGE_DEFAULTS = ("00280010", "00280011", "00280100", "00280008")  # Rows, Columns, Bits Allocated, Frames
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


@dataclass
class Query:
    filters: dict[str, str] = field(default_factory=dict)
    include: list[str] = field(default_factory=list)  # tags, as DICOM JSON keys
    include_all: bool = False
    limit: int = 0
    offset: int = 0
    capped: bool = False  # the server's maximum, not the client's limit, bounds the answer


def tag_key(key: str) -> str:
    """A query key (keyword or tag) as the DICOM JSON key (8 upper-case hex digits)."""
    if "." in key:
        raise QueryError(f"{key}: attributes inside sequences are not supported as query keys")
    if _TAG.match(key):
        if not keyword_for_tag(int(key, 16)):
            raise QueryError(f"{key} is not a known DICOM attribute tag")
        return key.upper()
    tag = tag_for_keyword(key)
    if tag is None:
        raise QueryError(f"{key} is neither a DICOM attribute keyword nor a tag")
    return f"{tag:08X}"


def _count(name: str, value: str) -> int:
    if not value.isdigit():
        raise QueryError(f"{name} must be a non-negative integer, not {value[:40]!r}")
    return int(value)


def parse_query(params: list[tuple[str, str]], max_results: int) -> Query:
    """The query of a QIDO-RS request. `fuzzymatching` is accepted and ignored: names match exactly, or
    by the wildcards * and ?, always ignoring case."""
    query = Query(limit=max_results, capped=True)
    for name, value in params:
        if name == "limit":
            requested = _count(name, value)
            query.limit, query.capped = min(requested, max_results), requested > max_results
        elif name == "offset":
            query.offset = _count(name, value)
        elif name == "includefield":
            for item in (v.strip() for v in value.split(",") if v.strip()):
                if item == "all":
                    query.include_all = True
                else:
                    query.include.append(tag_key(item))
        elif name == "fuzzymatching":
            if value not in ("true", "false"):
                raise QueryError(f"fuzzymatching must be true or false, not {value[:40]!r}")
        else:
            keyword = keyword_for_tag(int(tag_key(name), 16))
            if keyword in query.filters:
                raise QueryError(f"{name} is given more than once")
            query.filters[keyword] = value
    return query


def scope(query: Query, **path_uids: str) -> bool:
    """Restrict the query to the study/series of the URL; False when its own UIDs exclude them."""
    for keyword, uid in path_uids.items():
        asked = query.filters.get(keyword)
        if asked and asked != "*" and uid not in re.split(r"[,\\]", asked):
            return False
        query.filters[keyword] = uid
    return True


def _retrieve_url(level: str, base: str, match: dict[str, Any]) -> str:
    if level == "STUDY":
        return study_url(base, match["StudyInstanceUID"])
    if level == "SERIES":
        return series_url(base, match["StudyInstanceUID"], match["SeriesInstanceUID"])
    return instance_url(base, match["StudyInstanceUID"], match["SeriesInstanceUID"], match["SOPInstanceUID"])


_LEVEL_UID = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}


async def search(index: DicomIndex, level: str, query: Query, base: str) -> tuple[list[dict[str, Any]], bool]:
    """The matches as DICOM JSON objects, and whether more would have matched than the server returns."""
    limit = query.limit + 1 if query.capped else query.limit
    matches = await index.find(level, query.filters, limit=limit, offset=query.offset)
    more = len(matches) > query.limit
    matches = matches[:query.limit]
    wanted = list(query.include) + (list(_IMAGE_DEFAULTS) if level == "IMAGE" else [])
    documents: dict[str, dict[str, Any]] = {}
    uids = [m[_LEVEL_UID[level]] for m in matches]
    if uids and (wanted or query.include_all and level == "IMAGE"):
        documents = await index.documents(level, uids)
    results = []
    for match, uid in zip(matches, uids, strict=True):
        url = _retrieve_url(level, base, match)
        dataset = Dataset()
        for keyword, value in match.items():
            setattr(dataset, keyword, value)
        dataset.InstanceAvailability = "ONLINE"
        dataset.RetrieveURL = url
        result = dataset.to_json_dict()
        document = documents.get(uid, {})
        if level == "IMAGE":
            absolute_bulk_data(document, url)
        else:  # a study or series has no bulk data of its own
            document = {tag: attribute for tag, attribute in document.items() if "BulkDataURI" not in attribute}
        if query.include_all and level == "IMAGE":
            result = {**document, **result}
        else:
            result.update({tag: document[tag] for tag in wanted if tag in document and tag not in result})
        results.append(dict(sorted(result.items())))
    return results, more
