"""Parameters for all resources: _id, _lastUpdated, _tag, _profile, _security, _text (narrative) and
_content (the whole resource)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import on_every_layout
from search_data import ids, narrative, patient, put_all

pytestmark = on_every_layout("fresh_server")

TAGS = "http://alliance.example/tags"
OTHER_TAGS = "http://other.example/tags"
PROFILE = "http://alliance.example/fhir/StructureDefinition/alliance-patient"
CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"

EARLY = [
    patient("sp-a", "Quinn", meta={"tag": [{"system": TAGS, "code": "vip"}], "profile": [PROFILE],
                                   "security": [{"system": CONF, "code": "R"}]},
            text=narrative("Patient prefers morning appointments")),
    patient("sp-b", "Rhodes", meta={"tag": [{"system": TAGS, "code": "research"}],
                                    "security": [{"system": CONF, "code": "N"}]},
            text=narrative("Allergic to penicillin")),
    patient("sp-c", "Stone", address=[{"city": "Harbourview"}]),
]
LATE = [patient("sp-d", "Tate", meta={"tag": [{"system": OTHER_TAGS, "code": "vip"}]})]


def _instant() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture(scope="module")
def cut(fresh_client) -> str:
    """An instant between the creation of EARLY and of LATE."""
    put_all(fresh_client, EARLY)
    time.sleep(0.1)
    instant = _instant()
    time.sleep(0.1)
    put_all(fresh_client, LATE)
    return instant


@pytest.fixture(scope="module")
def api(fresh_client, cut):
    return fresh_client


@pytest.mark.parametrize("value, expected", [
    ("sp-a", {"sp-a"}),
    ("sp-a,sp-c", {"sp-a", "sp-c"}),
    ("sp-a,nobody", {"sp-a"}),
    ("nobody", set()),
    ("SP-A", set()),  # ids are case-sensitive
])
def test_id(api, value, expected):
    assert ids(api, "/Patient", {"_id": value}) == expected


def test_id_repeated_is_and(api):
    assert ids(api, "/Patient", [("_id", "sp-a,sp-b"), ("_id", "sp-b,sp-c")]) == {"sp-b"}


def test_last_updated(api, cut):
    assert ids(api, "/Patient", {"_lastUpdated": f"gt{cut}"}) == {"sp-d"}
    assert ids(api, "/Patient", {"_lastUpdated": f"ge{cut}"}) == {"sp-d"}
    assert ids(api, "/Patient", {"_lastUpdated": f"lt{cut}"}) == {"sp-a", "sp-b", "sp-c"}
    assert ids(api, "/Patient", {"_lastUpdated": f"le{cut}"}) == {"sp-a", "sp-b", "sp-c"}


def test_last_updated_day_precision(api):
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)  # a day early, whatever zone the server reads a bare date in
    assert ids(api, "/Patient", {"_lastUpdated": f"ge{yesterday.isoformat()}"}) == {"sp-a", "sp-b", "sp-c", "sp-d"}
    assert ids(api, "/Patient", {"_lastUpdated": f"lt{(today - timedelta(days=365)).isoformat()}"}) == set()


@pytest.mark.parametrize("value, expected", [
    (f"{TAGS}|vip", {"sp-a"}),
    ("vip", {"sp-a", "sp-d"}),
    (f"{OTHER_TAGS}|vip", {"sp-d"}),
    (f"{TAGS}|", {"sp-a", "sp-b"}),
    (f"{TAGS}|vip,{TAGS}|research", {"sp-a", "sp-b"}),
    (f"{TAGS}|none", set()),
])
def test_tag(api, value, expected):
    assert ids(api, "/Patient", {"_tag": value}) == expected


def test_tag_not(api):
    assert ids(api, "/Patient", {"_tag:not": f"{TAGS}|vip"}) == {"sp-b", "sp-c", "sp-d"}


def test_profile(api):
    assert ids(api, "/Patient", {"_profile": PROFILE}) == {"sp-a"}
    assert ids(api, "/Patient", {"_profile": "http://alliance.example/fhir/StructureDefinition/other"}) == set()


def test_security(api):
    assert ids(api, "/Patient", {"_security": f"{CONF}|R"}) == {"sp-a"}
    assert ids(api, "/Patient", {"_security": f"{CONF}|N"}) == {"sp-b"}
    assert ids(api, "/Patient", {"_security": f"{CONF}|N,{CONF}|R"}) == {"sp-a", "sp-b"}


def test_text_searches_the_narrative(api):
    assert ids(api, "/Patient", {"_text": "morning"}) == {"sp-a"}
    assert ids(api, "/Patient", {"_text": "penicillin"}) == {"sp-b"}
    assert ids(api, "/Patient", {"_text": "harbourview"}) == set()  # in the resource, not in its narrative


def test_content_searches_the_whole_resource(api):
    assert ids(api, "/Patient", {"_content": "harbourview"}) == {"sp-c"}
    assert ids(api, "/Patient", {"_content": "quinn"}) == {"sp-a"}
    assert ids(api, "/Patient", {"_content": "zanzibar"}) == set()
