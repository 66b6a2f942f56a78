"""Property-based and fuzz testing over real HTTP, on both backends.

schemathesis generates requests from the server's own OpenAPI description (/openapi.json); hypothesis
generates resources (element by element from the R4 element table, with well-formed and malformed values)
and search strings (the server's own search parameters, with modifiers, prefixes and odd values). Whatever
arrives: never a 5xx, every refusal an OperationOutcome with no traceback or SQL in it, a refused request
leaves the store exactly as it was, and an accepted resource reads back as it was sent."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources
from urllib.parse import urlencode

import httpx
import pytest
import schemathesis
from conftest import newest_history_entry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

LEAKS = ("Traceback", "sqlalchemy", "asyncpg", "aiosqlite", "SELECT ", "INSERT INTO", 'File "/')
TYPES = ["Patient", "Observation", "Encounter", "ServiceRequest", "Task", "MedicationRequest", "Organization",
         "ImagingStudy", "DiagnosticReport", "Practitioner"]
ELEMENTS: dict[str, list] = json.loads(
    resources.files("fhir_server.model").joinpath("data/r4-elements.json").read_text())


@pytest.fixture(scope="module")
def http(fresh_client: httpx.Client) -> httpx.Client:
    """A server of its own (fresh_server): fuzzed conditional deletes and updates touch whatever the store holds."""
    return fresh_client


def check_answer(where: str, status: int, body: str, before: tuple[str, str] | None, http: httpx.Client) -> None:
    """No 5xx; a refusal is an OperationOutcome that leaks nothing, and it changed nothing."""
    assert status < 500, f"{where} -> {status} {body[:500]}"
    for leak in LEAKS:
        assert leak not in body, f"{where} leaks {leak!r}: {body[:500]}"
    if status >= 400:
        if body:  # HEAD has none
            outcome = json.loads(body)
            assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"], f"{where}: {body[:300]}"
        assert newest_history_entry(http) == before, f"{where} was refused ({status}) but wrote"


def check(answer: httpx.Response, before: tuple[str, str] | None, http: httpx.Client) -> None:
    check_answer(f"{answer.request.method} {answer.request.url}", answer.status_code, answer.text, before, http)


# ---------------------------------------------------------------------------------------------
# schemathesis: every operation of the OpenAPI description, with data that fits it and data that does not


def test_openapi_operations_never_fail_and_refusals_change_nothing(fresh_server, http):
    api = schemathesis.openapi.from_url(fresh_server.base_url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 60
    classes: Counter[str] = Counter()
    for operation in operations:
        cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

        @given(case=cases)
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def run(case):
            before = newest_history_entry(http)
            answer = case.call(base_url=fresh_server.base_url, timeout=60)
            check_answer(f"{case.method} {answer.request.url}", answer.status_code, answer.text, before, http)
            classes[f"{answer.status_code // 100}xx"] += 1

        run()
    assert classes["2xx"] >= 50 and classes["4xx"] >= 100, classes


def test_openapi_description_is_in_fhir_terms(http):
    spec = http.get("/openapi.json").json()
    read = spec["paths"]["/{resource_type}/{resource_id}"]["get"]
    kinds = {p["name"]: p["schema"] for p in read["parameters"]}
    assert "Patient" in kinds["resource_type"]["enum"] and len(kinds["resource_type"]["enum"]) == 146
    assert kinds["resource_id"]["pattern"] == r"^[A-Za-z0-9\-.]{1,64}$"
    create = spec["paths"]["/{resource_type}"]["post"]
    assert set(create["responses"]) == {"200", "201", "default"}
    assert create["requestBody"]["content"]["application/fhir+json"]["schema"]["$ref"].endswith("/Resource")
    search = {p["name"] for p in spec["paths"]["/{resource_type}"]["get"]["parameters"]}
    assert {"_count", "_sort", "_include", "_summary"} <= search
    assert "HTTPValidationError" not in json.dumps(spec)  # FastAPI's 422 is never what the server answers
    ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------------------------------------
# hypothesis: resources built element by element


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
word = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30).filter(str.strip)
junk = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                    max_leaves=8)
PRIMITIVES = {
    "boolean": st.booleans(),
    "integer": st.integers(-(2**31), 2**31 - 1), "positiveInt": st.integers(1, 10**6),
    "unsignedInt": st.integers(0, 10**6), "decimal": st.floats(-1e12, 1e12, allow_nan=False),
    "date": st.dates().map(str) | st.sampled_from(["2024", "2024-02", "2024-02-30", "24-1-1"]),
    "dateTime": st.datetimes(timezones=st.just(None)).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S+08:00"))
    | st.sampled_from(["2026-11-31T25:00:00Z", "2026", "2026-10-01T08:00:00"]),
    "instant": st.sampled_from(["2026-10-01T08:00:00Z", "2026-10-01"]),
    "code": st.sampled_from(["final", "active", "female", "unknown", "not a code", ""]),
    "uri": st.sampled_from(["http://loinc.org", "urn:oid:1.2.3", "not a uri with spaces"]) | word,
}
COMPLEX = {
    "CodeableConcept": st.fixed_dictionaries({"coding": st.lists(st.fixed_dictionaries(
        {"system": PRIMITIVES["uri"], "code": word}), min_size=1, max_size=2)}, optional={"text": word}),
    "Reference": st.fixed_dictionaries({"reference": st.sampled_from(
        ["Patient/fuzz-1", "Patient/", "Organization/x/_history/1", "urn:uuid:0", "http://example.org/Patient/1",
         "#contained"]) | word}),
    "Identifier": st.fixed_dictionaries({"value": word}, optional={"system": PRIMITIVES["uri"]}),
    "HumanName": st.fixed_dictionaries({"family": word}, optional={"given": st.lists(word, min_size=1, max_size=2)}),
    "Quantity": st.fixed_dictionaries({"value": PRIMITIVES["decimal"]}, optional={
        "unit": word, "system": st.just("http://unitsofmeasure.org"), "code": st.sampled_from(["mm[Hg]", "/min",
                                                                                           "kg", "g/dL", "%"])}),
    "Period": st.fixed_dictionaries({"start": PRIMITIVES["dateTime"]}, optional={"end": PRIMITIVES["dateTime"]}),
}


def element_value(kind: str, repeating: int):
    if kind in PRIMITIVES or kind in COMPLEX:
        one = PRIMITIVES.get(kind, COMPLEX.get(kind))
    else:
        one = word if kind.startswith("http://hl7.org/fhirpath") else junk
    one = st.one_of(one, one, one, one, one, junk)  # mostly well-formed, sometimes anything at all
    return st.lists(one, min_size=1, max_size=2) | junk if repeating else one


def top_elements(resource_type: str) -> dict[str, tuple[str, int]]:
    prefix = resource_type + "."
    return {path[len(prefix):].removesuffix("[x]"): (kind, repeating) for path, (kind, repeating) in ELEMENTS.items()
            if path.startswith(prefix) and "." not in path[len(prefix):]
            and path[len(prefix):] not in ("id", "meta", "contained", "text")}


SUBJECT = {"reference": "Patient/fuzz-1"}
LOINC_CODE = {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}
# The elements each type must have, so that a good share of what is generated is accepted.
MANDATORY = {
    "Patient": {}, "Organization": {}, "Practitioner": {},
    "Observation": {"status": "final", "code": LOINC_CODE},
    "Encounter": {"status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                                  "code": "AMB"}},
    "ServiceRequest": {"status": "active", "intent": "order", "subject": SUBJECT},
    "Task": {"status": "requested", "intent": "order"},
    "MedicationRequest": {"status": "active", "intent": "order", "subject": SUBJECT,
                          "medicationCodeableConcept": {"text": "amlodipine 5 mg"}},
    "ImagingStudy": {"status": "available", "subject": SUBJECT},
    "DiagnosticReport": {"status": "final", "code": LOINC_CODE},
}


@st.composite
def resources_(draw) -> dict:
    resource_type = draw(st.sampled_from(TYPES))
    elements = top_elements(resource_type)
    names = draw(st.lists(st.sampled_from(sorted(elements)), max_size=4, unique=True))
    resource = {"resourceType": resource_type}
    for name in names:
        kind, repeating = elements[name]
        resource[name] = draw(element_value(kind, repeating))
    if draw(st.integers(0, 3)):
        resource.update(MANDATORY[resource_type])
    if draw(st.integers(0, 9)) == 0:
        resource[draw(text)] = draw(junk)  # an element that does not exist
    return resource


def test_generated_resources_are_stored_as_sent_or_refused_without_a_trace(http):
    statuses: Counter[int] = Counter()
    reasons: Counter[str] = Counter()

    @given(resource=resources_())
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def run(resource):
        before = newest_history_entry(http)
        answer = http.post(f"/{resource['resourceType']}", content=json.dumps(resource))
        check(answer, before, http)
        statuses[answer.status_code] += 1
        if answer.status_code == 400:
            reasons[answer.json()["issue"][0].get("diagnostics", "")[:80]] += 1
        if answer.status_code == 201:
            stored = http.get(answer.headers["Location"].split("/_history/")[0].split("/", 3)[3]).json()
            assert {k: v for k, v in stored.items() if k not in ("id", "meta")} == resource  # as sent, whole

    run()
    assert statuses[201] >= 10 and statuses[400] >= 10, (statuses, reasons.most_common(20))  # reaches both sides


# ---------------------------------------------------------------------------------------------
# hypothesis: search strings


@pytest.fixture(scope="module")
def search_params(http) -> dict[str, list[str]]:
    statement = http.get("/metadata").json()
    return {r["type"]: [p["name"] for p in r.get("searchParam", [])]
            for r in statement["rest"][0]["resource"] if r["type"] in TYPES}


MODIFIERS = ["", "", "", ":exact", ":contains", ":missing", ":not", ":text", ":above", ":below", ":in", ":not-in",
             ":identifier", ":of-type", ":Patient", ":iterate", ":bogus"]
PREFIXES = ["", "", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "xx"]
VALUES = st.one_of(
    text, st.integers().map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.dates().map(str), st.sampled_from([
        "http://loinc.org|8867-4", "|8867-4", "http://loinc.org|", "5.4|http://unitsofmeasure.org|mg",
        "Patient/fuzz-1", "2026-13-45", "2026-10-01T08:00:00+25:00", "a,b,,c", "\\,\\|\\$", "%", "*", "$",
        "x" * 300, "true", "null", "🩺", "Robert'); DROP TABLE resources;--"]))


@st.composite
def searches(draw, params: dict[str, list[str]]) -> tuple[str, list[tuple[str, str]]]:
    resource_type = draw(st.sampled_from(TYPES))
    names = params[resource_type] + ["_id", "_lastUpdated", "_count", "_sort", "_include", "_revinclude",
                                     "_summary", "_elements", "_total", "_has:Observation:subject:code",
                                     "subject:Patient.name", "patient.organization.name"]
    query = []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(names) | text)
        value = draw(st.sampled_from(PREFIXES)) + draw(VALUES)
        query.append((name + draw(st.sampled_from(MODIFIERS)), value))
    return resource_type, query


def test_generated_search_strings_answer_a_bundle_or_a_clear_refusal(http, search_params):
    statuses: Counter[int] = Counter()

    @given(search=searches(search_params), post=st.booleans(), strict=st.booleans())
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def run(search, post, strict):
        resource_type, query = search
        before = newest_history_entry(http)
        prefer = {"Prefer": "handling=strict"} if strict else {}  # lenient (the default) ignores what it can't use
        if post:
            answer = http.post(f"/{resource_type}/_search", content=urlencode(query),
                               headers={"Content-Type": "application/x-www-form-urlencoded", **prefer})
        else:
            answer = http.get(f"/{resource_type}?" + urlencode(query), headers=prefer)
        check(answer, before, http)
        statuses[answer.status_code] += 1
        if answer.status_code == 200:
            bundle = answer.json()
            assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset", answer.text[:300]
        else:
            assert answer.status_code in (400, 404, 422), answer.text[:300]

    run()
    assert statuses[200] >= 20 and statuses[400] >= 20, statuses  # both well-formed and refused searches
