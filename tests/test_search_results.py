"""Controlling results: _sort, _count and paging links (next / previous, stable while data changes), _total,
_summary (true, data, text, count, false) and _elements."""

from __future__ import annotations

import pytest
from conftest import on_every_layout
from search_data import (
    SUBSETTED,
    concept,
    delete,
    entries,
    has_tag,
    ids,
    link,
    match_list,
    narrative,
    observation,
    organization,
    patient,
    put,
    put_all,
    search,
)

pytestmark = on_every_layout("fresh_server")

SORT = [
    patient("s-1", "Alpha", birthDate="1980-01-01"),
    patient("s-2", "Beta", birthDate="1970-01-01"),
    patient("s-3", "Alpha", birthDate="1990-01-01"),
    patient("s-4", "Gamma", birthDate="1985-01-01"),
    patient("s-5", "Beta", birthDate="1995-01-01"),
]
SORT_IDS = ",".join(p["id"] for p in SORT)

PAGE = [organization(f"pg-{c}", f"Page Org {c.upper()}") for c in "abcde"]
PAGE_IDS = [o["id"] for o in PAGE]

SUMMARY_PATIENT = patient(
    "sum-1", "Summers", ["Sam"], text=narrative("Sam Summers"), identifier=[{"system": "urn:oid:1.2.3",
                                                                             "value": "S-1"}],
    active=True, gender="female", birthDate="1980-02-02",
    maritalStatus=concept("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "M"),
    photo=[{"contentType": "image/png", "data": "iVBORw0KGgo="}],
    contact=[{"name": {"family": "Contact"}}],
    communication=[{"language": concept("urn:ietf:bcp:47", "zh")}])
SUMMARY_OBS = observation("sum-obs", text=narrative("Heart rate 72/min"), subject="Patient/sum-1",
                          valueQuantity={"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org",
                                         "code": "/min"})


@pytest.fixture(scope="module")
def api(fresh_client):
    put_all(fresh_client, SORT + PAGE + [SUMMARY_PATIENT, SUMMARY_OBS])
    return fresh_client


# ---------------------------------------------------------------- _sort


@pytest.mark.parametrize("sort, expected", [
    ("birthdate", ["s-2", "s-1", "s-4", "s-3", "s-5"]),
    ("-birthdate", ["s-5", "s-3", "s-4", "s-1", "s-2"]),
    ("family,-birthdate", ["s-3", "s-1", "s-5", "s-2", "s-4"]),
    ("-family,birthdate", ["s-4", "s-2", "s-5", "s-1", "s-3"]),
    ("_id", ["s-1", "s-2", "s-3", "s-4", "s-5"]),
])
def test_sort(api, sort, expected):
    assert match_list(search(api, "/Patient", {"_id": SORT_IDS, "_sort": sort})) == expected


def test_sort_applies_across_pages(api):
    first = search(api, "/Patient", {"_id": SORT_IDS, "_sort": "-birthdate"}, count=2)
    second = search(api, link(first, "next"), count=None)
    assert match_list(first) + match_list(second) == ["s-5", "s-3", "s-4", "s-1"]


# ---------------------------------------------------------------- paging


def _walk(api, bundle: dict) -> list[dict]:
    pages = [bundle]
    while link(pages[-1], "next"):
        assert len(pages) < 20, "next links never end"
        pages.append(search(api, link(pages[-1], "next"), count=None))
    return pages


def test_next_links_visit_every_match_once(api):
    pages = _walk(api, search(api, "/Organization", {"name": "page"}, count=2))
    assert [len(match_list(p)) for p in pages] == [2, 2, 1]
    seen = [rid for p in pages for rid in match_list(p)]
    assert sorted(seen) == PAGE_IDS  # each exactly once
    assert link(pages[-1], "next") is None


def test_next_and_previous_links(api):
    first = search(api, "/Organization", {"name": "page", "_sort": "name"}, count=2)
    assert match_list(first) == ["pg-a", "pg-b"]
    assert link(first, "previous") is None
    second = search(api, link(first, "next"), count=None)
    assert match_list(second) == ["pg-c", "pg-d"]
    back = search(api, link(second, "previous"), count=None)
    assert match_list(back) == ["pg-a", "pg-b"]
    third = search(api, link(second, "next"), count=None)
    assert match_list(third) == ["pg-e"]
    assert link(third, "next") is None
    assert match_list(search(api, link(third, "previous"), count=None)) == ["pg-c", "pg-d"]


def test_paging_is_stable_when_a_match_is_created_between_pages(api):
    first = search(api, "/Organization", {"name": "page", "_sort": "name"}, count=2)
    assert match_list(first) == ["pg-a", "pg-b"]
    put(api, organization("pg-0", "Page Org 0"))  # sorts before every other: offset paging would shift
    try:
        pages = [first] + _walk(api, search(api, link(first, "next"), count=None))
        seen = [rid for p in pages for rid in match_list(p)]
        assert match_list(pages[1]) == ["pg-c", "pg-d"]
        assert seen == ["pg-a", "pg-b", "pg-c", "pg-d", "pg-e"]
    finally:
        delete(api, "Organization", "pg-0")


def test_count_keeps_page_size_in_next_link(api):
    first = search(api, "/Organization", {"name": "page"}, count=3)
    assert len(match_list(first)) == 3
    assert len(match_list(search(api, link(first, "next"), count=None))) == 2


# ---------------------------------------------------------------- _total and _summary=count


def test_total_accurate(api):
    bundle = search(api, "/Organization", {"name": "page", "_total": "accurate"}, count=2)
    assert bundle["total"] == 5
    assert len(match_list(bundle)) == 2


def test_total_none(api):
    bundle = search(api, "/Organization", {"name": "page", "_total": "none"}, count=2)
    assert "total" not in bundle
    assert len(match_list(bundle)) == 2


def test_summary_count(api):
    bundle = search(api, "/Organization", {"name": "page", "_summary": "count"})
    assert bundle["total"] == 5
    assert not bundle.get("entry")


# ---------------------------------------------------------------- _summary and _elements


def _only(api, path: str, params: dict) -> dict:
    bundle = search(api, path, params)
    matches = entries(bundle, "match")
    assert len(matches) == 1, bundle
    return matches[0]["resource"]


def test_summary_true_keeps_only_summary_elements(api):
    resource = _only(api, "/Patient", {"_id": "sum-1", "_summary": "true"})
    assert {"id", "identifier", "active", "name", "gender", "birthDate"} <= resource.keys()
    assert not resource.keys() & {"text", "photo", "contact", "maritalStatus", "communication"}
    assert has_tag(resource, *SUBSETTED)


def test_summary_data_drops_text_only(api):
    resource = _only(api, "/Patient", {"_id": "sum-1", "_summary": "data"})
    assert "text" not in resource
    assert {"name", "photo", "contact", "maritalStatus", "communication"} <= resource.keys()


def test_summary_text_keeps_text_id_meta_and_mandatory_elements(api):
    resource = _only(api, "/Patient", {"_id": "sum-1", "_summary": "text"})
    assert resource.keys() - {"meta"} == {"resourceType", "id", "text"}
    obs = _only(api, "/Observation", {"_id": "sum-obs", "_summary": "text"})
    assert obs.keys() - {"meta"} == {"resourceType", "id", "text", "status", "code"}  # status, code are 1..1


def test_summary_false_is_the_whole_resource(api):
    resource = _only(api, "/Patient", {"_id": "sum-1", "_summary": "false"})
    assert {"text", "name", "photo", "contact", "maritalStatus"} <= resource.keys()
    assert not has_tag(resource, *SUBSETTED)


def test_elements_keeps_only_the_named_elements(api):
    resource = _only(api, "/Patient", {"_id": "sum-1", "_elements": "name,gender"})
    assert resource.keys() - {"meta"} == {"resourceType", "id", "name", "gender"}
    assert resource["name"] == SUMMARY_PATIENT["name"]
    assert has_tag(resource, *SUBSETTED)


def test_elements_keeps_mandatory_elements(api):
    resource = _only(api, "/Observation", {"_id": "sum-obs", "_elements": "valueQuantity"})
    assert {"resourceType", "id", "valueQuantity"} <= resource.keys()
    assert not resource.keys() & {"text", "subject"}


def test_no_summary_means_whole_resource(api):
    resource = _only(api, "/Patient", {"_id": "sum-1"})
    stored = api.get("/Patient/sum-1").json()
    assert resource == stored
    assert ids(api, "/Patient", {"_id": "sum-1"}) == {"sum-1"}
