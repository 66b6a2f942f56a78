"""The search interaction itself: GET and POST [type]/_search, system-level search, errors (strict and
lenient handling, malformed values, unknown types), and deleted / updated resources in results."""

from __future__ import annotations

import json

import pytest
from conftest import on_every_layout
from search_data import (
    LOINC,
    concept,
    delete,
    entries,
    ids,
    include_refs,
    link,
    match_ids,
    observation,
    organization,
    patient,
    post_search,
    put,
    put_all,
    search,
)

pytestmark = on_every_layout("fresh_server")

STRICT = {"Prefer": "handling=strict"}
HR = concept(LOINC, "8867-4", "Heart rate")
HB = concept(LOINC, "718-7", "Hemoglobin [Mass/volume] in Blood")

RESOURCES = [
    patient("p-wang", "Wang", ["Wei"], gender="male", birthDate="1980-01-01"),
    patient("p-wang2", "Wang", ["Fang"], gender="female"),
    patient("p-li", "Li", ["Na"], gender="female"),
    patient("shared-1", "Shared"),
    organization("shared-1", "Shared Org"),
    observation("shared-1", HR),
    patient("p-del", "Wang", ["Deleted"], gender="male"),
    patient("p-upd", "Oldname", gender="male"),
    observation("obs-wang", concept(LOINC, "8480-6", "Systolic blood pressure"), "Patient/p-wang"),
    observation("obs-del", HB, "Patient/p-wang"),
    observation("obs-moved", HR, "Patient/p-wang"),
    observation("obs-orphan", HR, "Patient/p-del"),
]


@pytest.fixture(scope="module")
def api(fresh_client):
    put_all(fresh_client, RESOURCES)
    delete(fresh_client, "Patient", "p-del")
    delete(fresh_client, "Observation", "obs-del")
    put(fresh_client, patient("p-upd", "Newname", gender="male"))
    put(fresh_client, observation("obs-moved", HR, "Patient/p-upd"))
    return fresh_client


# ---------------------------------------------------------------- GET and POST _search


def test_searchset_bundle_shape(api):
    bundle = search(api, "/Patient", {"family": "li"})
    assert bundle["type"] == "searchset"
    [entry] = bundle["entry"]
    assert entry["search"]["mode"] == "match"
    assert entry["fullUrl"].endswith("/Patient/p-li")
    assert entry["resource"]["name"] == [{"family": "Li", "given": ["Na"]}]
    assert link(bundle, "self")


@pytest.mark.parametrize("params, expected", [
    ([("family", "wang")], {"p-wang", "p-wang2"}),
    ([("family", "wang"), ("gender", "female")], {"p-wang2"}),
    ([("_id", "p-wang,p-li")], {"p-wang", "p-li"}),
    ([("given", "wei"), ("given", "w")], {"p-wang"}),
], ids=lambda v: str(v))
def test_post_search_matches_get(api, params, expected):
    assert ids(api, "/Patient", params) == expected
    assert match_ids(post_search(api, "/Patient/_search", params)) == expected


def test_system_search_with_type(api):
    bundle = search(api, "/", {"_type": "Patient,Organization", "_id": "shared-1"})
    found = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in entries(bundle)}
    assert found == {("Patient", "shared-1"), ("Organization", "shared-1")}


def test_system_search_without_type(api):
    bundle = search(api, "/", {"_id": "shared-1"})
    found = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in entries(bundle)}
    assert found == {("Patient", "shared-1"), ("Organization", "shared-1"), ("Observation", "shared-1")}


def test_post_system_search(api):
    bundle = post_search(api, "/_search", {"_type": "Organization", "_id": "shared-1"})
    assert {(e["resource"]["resourceType"], e["resource"]["id"]) for e in entries(bundle)} == {
        ("Organization", "shared-1")}


# ---------------------------------------------------------------- errors


def _expect_error(response, status: int, *names: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] in ("error", "fatal")
    issues = json.dumps(outcome["issue"])
    for name in names:
        assert name in issues, f"{name!r} not named in {issues}"
    return outcome


def test_unknown_parameter_strict_is_400(api):
    r = api.get("/Patient", params={"family": "wang", "frobnicate": "1"}, headers=STRICT)
    _expect_error(r, 400, "frobnicate")


def test_unknown_parameter_lenient_is_ignored_with_an_outcome(api):
    for headers in ({}, {"Prefer": "handling=lenient"}):
        bundle = search(api, "/Patient", {"family": "wang", "frobnicate": "1"}, headers=headers)
        assert match_ids(bundle) == {"p-wang", "p-wang2"}
        outcomes = entries(bundle, "outcome")
        assert len(outcomes) == 1
        assert outcomes[0]["resource"]["resourceType"] == "OperationOutcome"
        assert "frobnicate" in json.dumps(outcomes[0]["resource"]["issue"])
        assert "frobnicate" not in link(bundle, "self")  # self shows only the parameters actually used
        assert "family" in link(bundle, "self")


def test_unknown_parameter_on_post_search_strict_is_400(api):
    r = api.post("/Patient/_search", content=b"frobnicate=1",
                 headers={"Content-Type": "application/x-www-form-urlencoded", **STRICT})
    _expect_error(r, 400, "frobnicate")


@pytest.mark.parametrize("path, params, named", [
    ("/Patient", {"birthdate": "notadate"}, "birthdate"),
    ("/Patient", {"birthdate": "xx1990"}, "birthdate"),
    ("/Patient", {"birthdate": "1990-13-45"}, "birthdate"),
    ("/Patient", {"_count": "abc"}, "_count"),
    ("/Patient", {"_count": "-1"}, "_count"),
    ("/Observation", {"value-quantity": "abc"}, "value-quantity"),
    ("/RiskAssessment", {"probability": "abc"}, "probability"),
    ("/Patient", {"active": "maybe"}, "active"),
    ("/Patient", {"family:frobnicate": "x"}, "frobnicate"),  # unknown modifier
    ("/Patient", {"gender:exact": "male"}, "gender"),  # :exact is a string modifier, not a token one
    ("/Patient", {"name:missing": "perhaps"}, "name"),
    ("/Patient", {"_sort": "frobnicate"}, "frobnicate"),
    ("/Patient", {"_summary": "maybe"}, "_summary"),
    ("/Patient", {"_total": "maybe"}, "_total"),
    ("/Patient", {"_include": "Patient:frobnicate"}, "frobnicate"),
    ("/Observation", {"subject:Banana": "p-wang"}, "Banana"),
    ("/Observation", {"subject.frobnicate": "x"}, "frobnicate"),
    ("/Observation", {"code-value-quantity": f"{LOINC}|8480-6"}, "code-value-quantity"),  # no $ part
], ids=lambda v: str(v))
def test_malformed_values_strict_are_400(api, path, params, named):
    _expect_error(api.get(path, params=params, headers=STRICT), 400, named)


def test_unknown_resource_type_is_404(api):
    _expect_error(api.get("/Banana", params={"name": "x"}), 404, "Banana")
    _expect_error(api.get("/Banana"), 404, "Banana")
    _expect_error(api.post("/Banana/_search", content=b"name=x",
                           headers={"Content-Type": "application/x-www-form-urlencoded"}), 404, "Banana")


def test_compartment_of_unknown_type_is_404(api):
    _expect_error(api.get("/Patient/p-wang/Banana"), 404, "Banana")


# ---------------------------------------------------------------- deleted and updated resources


def test_deleted_resources_are_never_found(api):
    assert ids(api, "/Patient", {"family": "wang"}) == {"p-wang", "p-wang2"}
    assert ids(api, "/Patient", {"_id": "p-del"}) == set()
    assert ids(api, "/Patient", {"given": "deleted"}) == set()
    assert ids(api, "/Observation", {"code": f"{LOINC}|718-7"}) == set()
    assert ids(api, "/Patient", {"_has:Observation:subject:code": f"{LOINC}|718-7"}) == set()
    assert ids(api, "/Patient/p-wang/Observation") == {"obs-wang"}


def test_deleted_resource_is_not_included(api):
    bundle = search(api, "/Observation", {"_id": "obs-orphan", "_include": "Observation:subject"})
    assert match_ids(bundle) == {"obs-orphan"}
    assert include_refs(bundle) == []


def test_updated_resource_is_found_by_new_values_only(api):
    assert ids(api, "/Patient", {"family": "oldname"}) == set()
    bundle = search(api, "/Patient", {"family": "newname"})
    assert match_ids(bundle) == {"p-upd"}
    assert entries(bundle)[0]["resource"]["meta"]["versionId"] == "2"


def test_updated_reference_moves_between_results(api):
    assert ids(api, "/Observation", {"subject": "Patient/p-wang"}) == {"obs-wang"}
    assert ids(api, "/Observation", {"subject": "Patient/p-upd"}) == {"obs-moved"}
    assert ids(api, "/Patient/p-upd/Observation") == {"obs-moved"}


def test_search_finds_a_resource_created_just_now(api):
    put(api, patient("p-new", "Brandnew"))
    try:
        assert ids(api, "/Patient", {"family": "brandnew"}) == {"p-new"}
    finally:
        delete(api, "Patient", "p-new")
    assert ids(api, "/Patient", {"family": "brandnew"}) == set()
