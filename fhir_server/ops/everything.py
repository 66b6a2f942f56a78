"""Patient/$everything and Patient/[id]/$everything: the Patient(s), every resource in their
compartment whichever institution wrote it, and the resources those refer to (organizations,
practitioners, medications...), paged like a search (keyset cursor, `next` links)."""

from __future__ import annotations

from typing import Any

from ..model.outcome import BadRequest
from ..model.types import is_resource_type
from ..search.bundle import build_searchset
from ..search.dates import parse_since
from ..search.query import Include, parse_search, patient_compartment_clause
from ..search.registry import PATIENT_COMPARTMENT

TYPES = tuple(sorted({"Patient", *(t for t, codes in PATIENT_COMPARTMENT.items() if codes)}))
# what the links repeat; the rest of the query string is refused
PARAMETERS = ("_since", "_type", "_count", "_cursor", "_format", "_pretty")


def _types(raw: list[str]) -> tuple[str, ...]:
    wanted = [t.strip() for value in raw for t in value.split(",") if t.strip()]
    for resource_type in wanted:
        if not is_resource_type(resource_type) or resource_type not in TYPES:
            raise BadRequest(f"_type: {resource_type[:60]} is not a type of the Patient compartment",
                             expression=["_type"])
    return tuple(sorted(set(wanted))) or TYPES


async def everything(service, base_url: str, patient_id: str | None, params: list[tuple[str, str]]) -> dict[str, Any]:
    for name, _ in params:
        if name not in PARAMETERS:
            raise BadRequest(f"$everything does not support the parameter '{name[:60]}' (it takes _since, _type "
                             "and _count)", expression=[name[:60]])
    if patient_id is not None:
        await service.read("Patient", patient_id)  # 404 / 410 before anything else
    types = _types([v for k, v in params if k == "_type"])
    search = [(k, v) for k, v in params if k in ("_count", "_cursor")]
    links = [(k, v) for k, v in params if k in ("_since", "_type", "_count")]
    for name, raw in params:
        if name == "_since":
            parse_since(raw)  # 400 unless an instant
            search.append(("_lastUpdated", f"ge{raw}"))
    query = parse_search(service.registry, types, search, base_url=base_url, strict=True,
                         default_count=service.settings.default_page_size, max_count=service.settings.max_page_size)
    query.self_params = links
    query.includes = [Include(t, "*", None, iterate=False, reverse=False) for t in types]
    page = await service.store.search(query, [patient_compartment_clause(service.registry, types, patient_id,
                                                                         include_self=True)])
    path = f"Patient/{patient_id}/$everything" if patient_id else "Patient/$everything"
    return build_searchset(base_url, path, query, page)
