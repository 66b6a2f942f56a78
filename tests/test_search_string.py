"""String search (R4 search.html §3.1.1.5.13 / string): by default a case- and accent-insensitive match
at the START of the value (not of any word); `:exact` is the whole string, case and accents included;
`:contains` matches anywhere; `:missing`. Also AND (repeated parameter) and OR (comma) on strings."""

from __future__ import annotations

import pytest
from conftest import on_every_layout
from search_data import ids, organization, patient, put_all

pytestmark = on_every_layout("fresh_server")

PATIENTS = [
    patient("p-wang", "Wang", ["Li", "Na"], address=[{"city": "Beijing"}]),
    patient("p-zhao", "Zhao", ["Li"], address=[{"city": "Shanghai"}]),
    patient("p-wang-upper", "WANG", ["Wei"], address=[{"city": "Beijing"}]),
    patient("p-wangerin", "Wangerin", ["Otto"], address=[{"city": "Berlin"}]),
    patient("p-mueller", "Müller", ["Jürgen"], address=[{"city": "Zürich"}]),
    patient("p-muller", "Muller", ["Anna"], address=[{"city": "Zurich"}]),
    patient("p-wang-zh", "王", ["小明"], address=[{"city": "北京"}]),
    {"resourceType": "Patient", "id": "p-text-only", "name": [{"text": "Zhang San"}]},
    {"resourceType": "Patient", "id": "p-noname", "address": [{"line": ["1 Main Street"]}]},
]
ALL_PATIENTS = {p["id"] for p in PATIENTS}

ORGS = [
    organization("org-alliance", "County Medical Alliance"),
    organization("org-hospital", "Anyang County Hospital"),
    organization("org-township", "Township Health Centre", alias=["THC"]),
    organization("org-accent", "Hôpital Saint-Éloi"),
]


@pytest.fixture(scope="module")
def api(fresh_client):
    put_all(fresh_client, PATIENTS + ORGS)
    return fresh_client


# ---------------------------------------------------------------- default: starts-with, case/accent-insensitive


@pytest.mark.parametrize("params, expected", [
    ({"family": "wang"}, {"p-wang", "p-wang-upper", "p-wangerin"}),
    ({"family": "WANG"}, {"p-wang", "p-wang-upper", "p-wangerin"}),
    ({"family": "Wange"}, {"p-wangerin"}),
    ({"family": "ang"}, set()),  # not starts-with
    ({"family": "müller"}, {"p-mueller", "p-muller"}),
    ({"family": "muller"}, {"p-mueller", "p-muller"}),
    ({"family": "MÜL"}, {"p-mueller", "p-muller"}),
    ({"family": "王"}, {"p-wang-zh"}),
    ({"family": "nobody"}, set()),
], ids=lambda v: str(v))
def test_family_default_is_insensitive_starts_with(api, params, expected):
    assert ids(api, "/Patient", params) == expected


@pytest.mark.parametrize("params, expected", [
    ({"given": "li"}, {"p-wang", "p-zhao"}),
    ({"given": "NA"}, {"p-wang"}),
    ({"given": "jurgen"}, {"p-mueller"}),
    ({"given": "Jürg"}, {"p-mueller"}),
    ({"given": "小"}, {"p-wang-zh"}),
], ids=lambda v: str(v))
def test_given(api, params, expected):
    assert ids(api, "/Patient", params) == expected


@pytest.mark.parametrize("params, expected", [
    ({"name": "wa"}, {"p-wang", "p-wang-upper", "p-wangerin"}),  # family parts
    ({"name": "li"}, {"p-wang", "p-zhao"}),  # given parts
    ({"name": "zhang"}, {"p-text-only"}),  # HumanName.text
    ({"name": "zh"}, {"p-zhao", "p-text-only"}),
    ({"name": "王"}, {"p-wang-zh"}),
    ({"name": "小明"}, {"p-wang-zh"}),
    ({"name": "otto"}, {"p-wangerin"}),
], ids=lambda v: str(v))
def test_name_covers_family_given_and_text(api, params, expected):
    assert ids(api, "/Patient", params) == expected


@pytest.mark.parametrize("params, expected", [
    ({"address-city": "bei"}, {"p-wang", "p-wang-upper"}),
    ({"address-city": "zurich"}, {"p-mueller", "p-muller"}),
    ({"address-city": "ZÜRICH"}, {"p-mueller", "p-muller"}),
    ({"address-city": "北京"}, {"p-wang-zh"}),
    ({"address-city": "京"}, set()),
], ids=lambda v: str(v))
def test_address_city(api, params, expected):
    assert ids(api, "/Patient", params) == expected


# ---------------------------------------------------------------- :exact


@pytest.mark.parametrize("value, expected", [
    ("Wang", {"p-wang"}),
    ("wang", set()),
    ("WANG", {"p-wang-upper"}),
    ("Wan", set()),
    ("Müller", {"p-mueller"}),
    ("Muller", {"p-muller"}),
    ("王", {"p-wang-zh"}),
])
def test_family_exact_is_case_and_accent_sensitive_whole_string(api, value, expected):
    assert ids(api, "/Patient", {"family:exact": value}) == expected


# ---------------------------------------------------------------- :contains


@pytest.mark.parametrize("params, expected", [
    ({"family:contains": "ang"}, {"p-wang", "p-wang-upper", "p-wangerin"}),
    ({"family:contains": "ERIN"}, {"p-wangerin"}),
    ({"family:contains": "ller"}, {"p-mueller", "p-muller"}),
    ({"given:contains": "rge"}, {"p-mueller"}),
    ({"name:contains": "san"}, {"p-text-only"}),
    ({"address-city:contains": "ICH"}, {"p-mueller", "p-muller"}),
], ids=lambda v: str(v))
def test_contains_matches_anywhere(api, params, expected):
    assert ids(api, "/Patient", params) == expected


# ---------------------------------------------------------------- :missing


@pytest.mark.parametrize("params, expected", [
    ({"name:missing": "true"}, {"p-noname"}),
    ({"name:missing": "false"}, ALL_PATIENTS - {"p-noname"}),
    ({"family:missing": "true"}, {"p-noname", "p-text-only"}),
    ({"family:missing": "false"}, ALL_PATIENTS - {"p-noname", "p-text-only"}),
    ({"address-city:missing": "true"}, {"p-noname", "p-text-only"}),
    ({"address-city:missing": "false"}, ALL_PATIENTS - {"p-noname", "p-text-only"}),
], ids=lambda v: str(v))
def test_missing(api, params, expected):
    assert ids(api, "/Patient", params) == expected


# ---------------------------------------------------------------- AND / OR


def test_repeated_parameter_is_and(api):
    assert ids(api, "/Patient", [("given", "li"), ("given", "na")]) == {"p-wang"}
    assert ids(api, "/Patient", [("given", "li"), ("given", "otto")]) == set()


def test_different_parameters_are_and(api):
    assert ids(api, "/Patient", {"family": "wang", "given": "li"}) == {"p-wang"}
    assert ids(api, "/Patient", {"family": "zhao", "address-city": "bei"}) == set()


def test_comma_is_or(api):
    assert ids(api, "/Patient", {"family": "wang,muller"}) == {
        "p-wang", "p-wang-upper", "p-wangerin", "p-mueller", "p-muller"}
    assert ids(api, "/Patient", {"family:exact": "Wang,Muller"}) == {"p-wang", "p-muller"}


def test_or_inside_and(api):
    assert ids(api, "/Patient", [("family", "zhao,王"), ("given", "li")]) == {"p-zhao"}


# ---------------------------------------------------------------- Organization.name (name | alias)


@pytest.mark.parametrize("params, expected", [
    ({"name": "county"}, {"org-alliance"}),  # starts-with the whole string, not any word
    ({"name": "COUNTY MED"}, {"org-alliance"}),
    ({"name:contains": "county"}, {"org-alliance", "org-hospital"}),
    ({"name": "thc"}, {"org-township"}),  # Organization.alias is part of the name parameter
    ({"name": "hopital"}, {"org-accent"}),
    ({"name:contains": "eloi"}, {"org-accent"}),
    ({"name:exact": "County Medical Alliance"}, {"org-alliance"}),
    ({"name:exact": "county medical alliance"}, set()),
    ({"name:exact": "County Medical"}, set()),
], ids=lambda v: str(v))
def test_organization_name(api, params, expected):
    assert ids(api, "/Organization", params) == expected
