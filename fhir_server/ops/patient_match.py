"""Patient/$match (FHIR R4, IHE PDQm): the input Patient's identifiers are looked up exactly first;
then candidates found by family name, birth date and phone are scored on name, birth date, gender
and phone. Answers a searchset Bundle with search.score and the match-grade extension."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from ..identifiers import RESIDENT_ID
from ..model.outcome import BadRequest
from ..model.validate import validate_resource
from ..search.text import normalize
from ..workflow.patients import is_replaced, token_escape
from .parameters import parameter_items, single, value

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
DEFAULT_COUNT = 10
CANDIDATES_PER_QUERY = 100
# how much each agreeing element adds to the score (sums to 1)
WEIGHTS = {"family": 0.3, "given": 0.2, "birthDate": 0.25, "gender": 0.1, "phone": 0.15}
PROBABLE, POSSIBLE = 0.75, 0.5  # name and birth date agree: probable; a certain match needs an identifier


@dataclass
class MatchRequest:
    patient: dict[str, Any]
    only_certain: bool
    count: int


def read_request(body: dict[str, Any]) -> MatchRequest:
    items = parameter_items(body, "Patient/$match")
    found = single(items, "resource")
    if found is None:
        raise BadRequest("Patient/$match needs a 'resource' parameter holding a Patient",
                         expression=["Parameters.parameter"])
    where, item = found
    patient = item.get("resource")
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise BadRequest("The 'resource' parameter must hold a Patient", expression=[f"{where}.resource"])
    validate_resource(patient, "Patient")
    only = single(items, "onlyCertainMatches")
    count = single(items, "count")
    request = MatchRequest(patient, bool(value(*only, "Boolean")) if only else False,
                           value(*count, "Integer") if count else DEFAULT_COUNT)
    if request.count < 1:
        raise BadRequest("count must be at least 1", expression=[f"{count[0]}.valueInteger"])
    return request


def _names(patient: dict[str, Any]) -> list[tuple[str, str]]:
    """(family, given) of each name, normalised; a name given only as text counts as a whole."""
    out = []
    for name in patient.get("name") or []:
        family = normalize(name.get("family") or "")
        given = normalize(" ".join(name.get("given") or []))
        if not family and not given and name.get("text"):
            family = normalize(name["text"]).replace(" ", "")
        out.append((family, given))
    return out


def _phones(patient: dict[str, Any]) -> set[str]:
    return {re.sub(r"\D", "", t.get("value", ""))[-11:] for t in patient.get("telecom") or []
            if t.get("system") == "phone" and re.sub(r"\D", "", t.get("value", ""))}


def _identifiers(patient: dict[str, Any]) -> set[tuple[str, str]]:
    return {(i["system"], i["value"]) for i in patient.get("identifier") or [] if i.get("system") and i.get("value")}


def score(wanted: dict[str, Any], candidate: dict[str, Any]) -> float:
    total = 0.0
    names = [(f, g) for f, g in _names(wanted) if f or g]
    theirs = _names(candidate)
    best = 0.0
    for family, given in names:
        for their_family, their_given in theirs:
            whole = family + given.replace(" ", "") == their_family + their_given.replace(" ", "")
            points = (WEIGHTS["family"] if family and family == their_family else 0.0) + (
                WEIGHTS["given"] if given and given == their_given else 0.0)
            if whole and family + given:
                points = WEIGHTS["family"] + WEIGHTS["given"]  # the same name split differently
            best = max(best, points)
    total += best
    if wanted.get("birthDate") and wanted.get("birthDate") == candidate.get("birthDate"):
        total += WEIGHTS["birthDate"]
    if wanted.get("gender") and wanted.get("gender") == candidate.get("gender"):
        total += WEIGHTS["gender"]
    if _phones(wanted) & _phones(candidate):
        total += WEIGHTS["phone"]
    return round(total, 4)


def _conflicting_resident_id(wanted: dict[str, Any], candidate: dict[str, Any]) -> bool:
    mine = {v for s, v in _identifiers(wanted) if s == RESIDENT_ID}
    theirs = {v for s, v in _identifiers(candidate) if s == RESIDENT_ID}
    return bool(mine and theirs and not mine & theirs)


async def _search(service, params: list[tuple[str, str]]) -> list[Any]:
    _, page = await service.search(("Patient",), [*params, ("_count", str(CANDIDATES_PER_QUERY))],
                                   base_url="", strict=True)
    return page.matches


async def match(service, base_url: str, request: MatchRequest) -> dict[str, Any]:
    wanted = request.patient
    found: dict[str, tuple[float, str, Any]] = {}
    for system, identifier in sorted(_identifiers(wanted)):
        for version in await _search(service, [("identifier", f"{system}|{token_escape(identifier)}")]):
            found[version.id] = (1.0, "certain", version)
    # blocking: each query narrows by two elements, so a common family name does not crowd out the rest
    birth_date, gender = wanted.get("birthDate"), wanted.get("gender")
    candidate_queries = []
    for family, given in _names(wanted):
        if family and given:
            candidate_queries.append([("family", family), ("given", given.split(" ")[0])])
        if family and birth_date:
            candidate_queries.append([("family", family), ("birthdate", birth_date)])
    if birth_date and gender:
        candidate_queries.append([("birthdate", birth_date), ("gender", gender)])
    candidate_queries += [[("phone", phone)] for phone in sorted(_phones(wanted))]
    for params in candidate_queries:
        for version in await _search(service, params):
            if version.id in found:
                continue
            candidate = orjson.loads(version.content)
            if _conflicting_resident_id(wanted, candidate):
                continue  # two resident ID numbers: two residents
            points = score(wanted, candidate)
            if points >= POSSIBLE:
                found[version.id] = (points, "probable" if points >= PROBABLE else "possible", version)
    ranked = [item for item in found.values() if not is_replaced(orjson.loads(item[2].content))]
    ranked.sort(key=lambda item: (-item[0], item[2].id))
    if request.only_certain:
        ranked = [item for item in ranked if item[1] == "certain"]
    ranked = ranked[:request.count]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(ranked)}
    if ranked:
        bundle["entry"] = [{"fullUrl": f"{base_url}/Patient/{version.id}", "resource": orjson.Fragment(version.content),
                            "search": {"extension": [{"url": MATCH_GRADE, "valueCode": grade}],
                                       "mode": "match", "score": points}}
                           for points, grade, version in ranked]
    return bundle
