"""Token search modifiers backed by the terminology service: `:in` / `:not-in` (a ValueSet by id or
canonical URL) and `:below` / `:above` (is-a subsumption), alone, chained and in `_has`; strict and
lenient handling of values that cannot be resolved."""

from __future__ import annotations

import uuid

import pytest
from search_data import LOINC, concept, entries, ids, link, observation, put_all, search

A = "http://alliance.example.org/fhir"
SCT = "http://snomed.info/sct"
STRICT = {"Prefer": "handling=strict"}
RUN = uuid.uuid4().hex[:8]  # the shared server keeps other modules' data: every id here is this run's
PATIENT = f"term-{RUN}"


def condition(cid: str, code: dict | None) -> dict:
    resource = {"resourceType": "Condition", "id": f"{cid}-{RUN}", "subject": {"reference": f"Patient/{PATIENT}"}}
    if code is not None:
        resource["code"] = code
    return resource


CONDITIONS = [
    condition("t2", concept(SCT, "44054006")),
    condition("t1", concept(SCT, "46635009")),
    condition("dm", concept(SCT, "73211009")),
    condition("htn", concept(SCT, "59621000")),
    condition("af", concept(SCT, "49436004")),
    condition("local", concept(f"{A}/CodeSystem/local-diagnosis-codes", "GXY")),
    condition("nocode", None),
]
OBSERVATIONS = [
    observation(f"hr-{RUN}", concept(LOINC, "8867-4"), f"Patient/{PATIENT}"),
    observation(f"glu-{RUN}", concept(LOINC, "2339-0"), f"Patient/{PATIENT}"),
    observation(f"sbp-local-{RUN}", concept(f"{A}/CodeSystem/local-observation-codes", "SBP"), f"Patient/{PATIENT}"),
]


@pytest.fixture
def api(client):
    if client.get(f"/Patient/{PATIENT}").status_code != 200:
        put_all(client, [{"resourceType": "Patient", "id": PATIENT, "gender": "female"}, *CONDITIONS, *OBSERVATIONS])
    return client


def conditions(api, **params) -> set[str]:
    found = ids(api, "/Condition", {"subject": f"Patient/{PATIENT}", **params})
    return {i.removesuffix(f"-{RUN}") for i in found}


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"code:in": "ValueSet/diabetes"}, {"t2", "t1", "dm"}),
        ({"code:in": f"{A}/ValueSet/diabetes"}, {"t2", "t1", "dm"}),
        ({"code:in": f"{A}/ValueSet/diabetes|2026.1"}, {"t2", "t1", "dm"}),
        ({"code:in": f"{A}/ValueSet/chronic-disease-register"}, {"t2", "dm", "htn", "af"}),  # type 1 is excluded
        ({"code:in": "ValueSet/hypertension,ValueSet/cardiac-arrhythmias"}, {"htn", "af"}),
        ({"code:in": "ValueSet/local-diagnosis-codes"}, {"local"}),
        ({"code:not-in": "ValueSet/diabetes"}, {"htn", "af", "local", "nocode"}),
        ({"code:below": f"{SCT}|73211009"}, {"t2", "t1", "dm"}),
        ({"code:below": f"{SCT}|49601007"}, {"htn", "af"}),
        ({"code:below": f"{SCT}|44054006"}, {"t2"}),
        ({"code:above": f"{SCT}|44054006"}, {"t2", "dm"}),
        ({"code:above": f"{SCT}|59621000"}, {"htn"}),
    ],
)
def test_condition_modifiers(api, params, expected):
    assert conditions(api, **params) == expected


def test_in_and_not_in_combine_with_other_parameters(api):
    assert conditions(api, **{"code:in": "ValueSet/chronic-disease-register", "code:not-in": "ValueSet/diabetes"}) == {
        "htn",
        "af",
    }


def test_in_a_whole_code_system_needs_no_expansion(api):
    """loinc-all names all of LOINC, which the server holds only in part: :in still finds any LOINC code."""
    found = ids(api, "/Observation", {"subject": f"Patient/{PATIENT}", "code:in": "ValueSet/loinc-all"})
    assert found == {f"hr-{RUN}", f"glu-{RUN}"}
    vital = ids(api, "/Observation", {"subject": f"Patient/{PATIENT}", "code:in": "ValueSet/vital-signs"})
    assert vital == {f"hr-{RUN}"}


def test_count_of_not_in(api):
    bundle = search(
        api,
        "/Condition",
        {"subject": f"Patient/{PATIENT}", "code:not-in": "ValueSet/diabetes", "_summary": "count"},
        count=None,
    )
    assert bundle["total"] == 4


def test_has_and_chain_with_in(api):
    has = ids(api, "/Patient", {"_id": PATIENT, "_has:Condition:subject:code:in": "ValueSet/cardiac-arrhythmias"})
    assert has == {PATIENT}
    assert ids(api, "/Patient", {"_id": PATIENT, "_has:Condition:subject:code:in": "ValueSet/blood-glucose"}) == set()
    chained = ids(
        api,
        "/Condition",
        {
            "subject:Patient.gender:in": "ValueSet/administrative-gender",
            "code:below": f"{SCT}|73211009",
            "subject": f"Patient/{PATIENT}",
        },
    )
    assert {i.removesuffix(f"-{RUN}") for i in chained} == {"t2", "t1", "dm"}


def test_fragment_hierarchy_is_reported(api):
    bundle = search(api, "/Condition", {"subject": f"Patient/{PATIENT}", "code:below": f"{SCT}|73211009"})
    issues = [i for e in entries(bundle, "outcome") for i in e["resource"]["issue"]]
    assert issues and issues[0]["severity"] == "warning" and "fragment" in issues[0]["diagnostics"]
    assert issues[0]["expression"] == ["code:below"]


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("code:in", "ValueSet/no-such-value-set", ["ValueSet/no-such-value-set"]),
        ("code:in", "http://example.org/ValueSet/none", ["http://example.org/ValueSet/none", "not known"]),
        ("code:not-in", "http://example.org/ValueSet/none", ["not known"]),
        ("code:below", "73211009", ["system|code"]),
        ("code:below", "http://example.org/unknown|1", ["http://example.org/unknown", "not known"]),
        ("code:above", f"{SCT}|12345", ["12345"]),
        ("code:in", "ValueSet/loinc-all-broken", ["ValueSet/loinc-all-broken"]),
    ],
)
def test_unresolvable_values_strict_and_lenient(api, unchanged, name, value, words):
    r = api.get("/Condition", params={"subject": f"Patient/{PATIENT}", name: value}, headers=STRICT)
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert issue["severity"] == "error" and issue["expression"] == [name]
    for word in words:
        assert word in issue["diagnostics"]
    lenient = search(api, "/Condition", {"subject": f"Patient/{PATIENT}", name: value})
    assert {
        i.removesuffix(f"-{RUN}") for i in ids(api, "/Condition", {"subject": f"Patient/{PATIENT}", name: value})
    } == {"t2", "t1", "dm", "htn", "af", "local", "nocode"}  # the parameter is left out
    warning = entries(lenient, "outcome")[0]["resource"]["issue"][0]
    assert warning["severity"] == "warning" and warning["expression"] == [name]
    assert name not in (link(lenient, "self") or "")


def test_value_set_that_cannot_be_evaluated(api):
    url = f"http://clinic.example/{uuid.uuid4().hex}"
    broken = {
        "resourceType": "ValueSet",
        "url": url,
        "status": "active",
        "compose": {
            "include": [
                {
                    "system": "http://example.org/unknown",
                    "filter": [{"property": "concept", "op": "is-a", "value": "x"}],
                }
            ]
        },
    }
    assert api.post("/ValueSet", json=broken).status_code == 201
    r = api.get("/Condition", params={"subject": f"Patient/{PATIENT}", "code:in": url}, headers=STRICT)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["code:in"]
    assert "http://example.org/unknown" in r.json()["issue"][0]["diagnostics"]


def test_conditional_create_criteria_use_the_modifiers(api, unchanged):
    criteria = f"subject=Patient/{PATIENT}&code:in=ValueSet/no-such-value-set"
    r = api.post("/Condition", json=condition("cond", concept(SCT, "44054006")), headers={"If-None-Exist": criteria})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["code:in"]
