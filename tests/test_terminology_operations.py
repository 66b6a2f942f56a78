"""Terminology operations over HTTP, on the definitions shipped in terminology/ and on ones a user
POSTs: CodeSystem $lookup / $validate-code / $subsumes, ValueSet $expand / $validate-code, ConceptMap
$translate; type and instance level, GET and POST with Parameters; every failure's status and place."""

from __future__ import annotations

import uuid

import pytest

A = "http://alliance.example.org/fhir"
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
LOCAL_OBS = f"{A}/CodeSystem/local-observation-codes"


def out(parameters: dict, name: str):
    """The value of the first output parameter `name` (value[x] or its parts)."""
    assert parameters["resourceType"] == "Parameters", parameters
    for p in parameters["parameter"]:
        if p["name"] == name:
            return p.get("part") or next(v for k, v in p.items() if k.startswith("value"))
    return None


def all_out(parameters: dict, name: str) -> list:
    return [
        p.get("part") or next(v for k, v in p.items() if k.startswith("value"))
        for p in parameters["parameter"]
        if p["name"] == name
    ]


def body(*params: dict) -> dict:
    return {"resourceType": "Parameters", "parameter": list(params)}


def error(response, status: int, expression: list[str] | None, *words: str) -> dict:
    assert response.status_code == status, response.text
    issue = response.json()["issue"][0]
    assert response.json()["resourceType"] == "OperationOutcome"
    assert issue["severity"] == "error"
    if expression is not None:
        assert issue.get("expression") == expression, issue
    for word in words:
        assert word in issue["diagnostics"], issue
    return issue


def codes(expansion: dict) -> list[str]:
    return [c["code"] for c in expansion["expansion"].get("contains", [])]


# ---------------------------------------------------------------- shipped definitions are served


def test_shipped_definitions_are_searchable_by_url(client):
    bundle = client.get("/CodeSystem", params={"url": SCT}).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["snomed-alliance"]
    assert bundle["entry"][0]["resource"]["content"] == "fragment"
    names = client.get("/NamingSystem", params={"value:exact": "urn:oid:2.16.156.10011.1.1"}).json()
    assert [e["resource"]["name"] for e in names["entry"]] == ["ResidentIdNumber"]
    assert client.get("/NamingSystem", params={"value:exact": "urn:oid:2.16.156.10011.1.19"}).json()["total"] == 1
    for rt, url in (
        ("ValueSet", f"{A}/ValueSet/vital-signs"),
        ("ConceptMap", f"{A}/ConceptMap/local-observation-to-loinc"),
        ("StructureDefinition", f"{A}/StructureDefinition/alliance-patient"),
    ):
        assert client.get(f"/{rt}", params={"url": url}).json()["total"] == 1, (rt, url)


def test_metadata_lists_the_operations_and_token_modifiers(client):
    resources = {r["type"]: r for r in client.get("/metadata").json()["rest"][0]["resource"]}
    names = {rt: [o["name"] for o in resources[rt]["operation"]] for rt in ("CodeSystem", "ValueSet", "ConceptMap")}
    assert names == {
        "CodeSystem": ["lookup", "validate-code", "subsumes", "validate"],
        "ValueSet": ["expand", "validate-code", "validate"],
        "ConceptMap": ["translate", "validate"],
    }
    assert "validate" in [o["name"] for o in resources["Patient"]["operation"]]
    code = next(p for p in resources["Observation"]["searchParam"] if p["name"] == "code")
    assert ":in" in code["documentation"] and ":below" in code["documentation"]


# ---------------------------------------------------------------- $lookup


def test_lookup_get(client):
    r = client.get("/CodeSystem/$lookup", params={"system": SCT, "code": "44054006"})
    assert r.status_code == 200, r.text
    p = r.json()
    assert out(p, "display") == "Diabetes mellitus type 2" and out(p, "name") == "SNOMED CT (alliance subset)"
    properties = {(part[0]["valueCode"], part[1]["valueCode"]) for part in all_out(p, "property")}
    assert ("parent", "73211009") in properties
    assert {"name": "value", "valueString": "2型糖尿病"} in out(p, "designation")


def test_lookup_post_coding_and_property_filter(client):
    r = client.post(
        "/CodeSystem/$lookup",
        json=body(
            {"name": "coding", "valueCoding": {"system": LOCAL_OBS, "code": "SBP"}},
            {"name": "property", "valueCode": "category"},
        ),
    )
    p = r.json()
    assert out(p, "display") == "收缩压"
    assert all_out(p, "property") == [
        [{"name": "code", "valueCode": "category"}, {"name": "value", "valueCode": "vital-signs"}]
    ]


def test_lookup_instance_level(client):
    p = client.get("/CodeSystem/snomed-alliance/$lookup", params={"code": "73211009"}).json()
    children = {part[1]["valueCode"] for part in all_out(p, "property") if part[0]["valueCode"] == "child"}
    assert children == {"44054006", "46635009", "11687002"}


@pytest.mark.parametrize(
    "params, status, expression, words",
    [
        ({"system": SCT}, 400, ["code"], ["code"]),
        ({"code": "123"}, 400, ["system"], ["system"]),
        ({"system": "http://example.org/unknown", "code": "1"}, 404, ["system"], ["http://example.org/unknown"]),
        ({"system": SCT, "code": "999999"}, 404, ["code"], ["999999", "fragment"]),
        ({"system": f"{A}/CodeSystem/organization-level", "code": "city"}, 404, ["code"], ["city"]),
    ],
)
def test_lookup_failures(client, unchanged, params, status, expression, words):
    error(client.get("/CodeSystem/$lookup", params=params), status, expression, *words)


def test_lookup_unknown_instance_and_bad_body(client, unchanged):
    assert client.get("/CodeSystem/no-such-system/$lookup", params={"code": "x"}).status_code == 404
    error(client.post("/CodeSystem/$lookup", json={"resourceType": "Patient"}), 400, ["resourceType"], "Parameters")
    error(client.post("/CodeSystem/$lookup", json=body({"name": "code", "valueBoolean": True})), 400, ["code"])


# ---------------------------------------------------------------- CodeSystem $validate-code


def test_codesystem_validate_code(client):
    ok = client.get("/CodeSystem/$validate-code", params={"url": LOINC, "code": "8480-6"}).json()
    assert out(ok, "result") is True and out(ok, "display") == "Systolic blood pressure"
    wrong_display = client.get(
        "/CodeSystem/$validate-code", params={"url": LOINC, "code": "8480-6", "display": "Blood pressure"}
    ).json()
    assert out(wrong_display, "result") is False and "Blood pressure" in out(wrong_display, "message")
    designation = client.get("/CodeSystem/$validate-code", params={"url": LOINC, "code": "8480-6", "display": "收缩压"})
    assert out(designation.json(), "result") is True
    instance = client.post(
        "/CodeSystem/organization-level/$validate-code",
        json=body(
            {
                "name": "codeableConcept",
                "valueCodeableConcept": {
                    "coding": [
                        {"system": "http://other.example", "code": "county"},
                        {"system": f"{A}/CodeSystem/organization-level", "code": "village"},
                    ]
                },
            }
        ),
    ).json()
    assert out(instance, "result") is True and out(instance, "display") == "村卫生室"


@pytest.mark.parametrize(
    "params, words",
    [
        ({"url": f"{A}/CodeSystem/organization-level", "code": "city"}, ["city", "organization-level"]),
        ({"url": LOINC, "code": "1234-5"}, ["1234-5", "fragment"]),
        ({"url": "http://example.org/unknown", "code": "x"}, ["not known"]),
    ],
)
def test_codesystem_validate_code_false_with_a_message(client, unchanged, params, words):
    r = client.get("/CodeSystem/$validate-code", params=params)
    assert r.status_code == 200
    assert out(r.json(), "result") is False
    for word in words:
        assert word in out(r.json(), "message")


def test_codesystem_validate_code_needs_a_code(client, unchanged):
    error(client.get("/CodeSystem/$validate-code", params={"url": LOINC}), 400, ["code"], "code")
    error(client.get("/CodeSystem/$validate-code", params={"code": "x"}), 400, ["url"], "url")


# ---------------------------------------------------------------- $subsumes


@pytest.mark.parametrize(
    "a, b, outcome",
    [
        ("73211009", "44054006", "subsumes"),
        ("44054006", "73211009", "subsumed-by"),
        ("44054006", "44054006", "equivalent"),
        ("44054006", "38341003", "not-subsumed"),
        ("49601007", "25569003", "subsumes"),
    ],
)
def test_subsumes(client, a, b, outcome):
    r = client.get("/CodeSystem/$subsumes", params={"system": SCT, "codeA": a, "codeB": b})
    assert out(r.json(), "outcome") == outcome


def test_subsumes_post_codings_and_instance(client):
    r = client.post(
        "/CodeSystem/$subsumes",
        json=body(
            {"name": "codingA", "valueCoding": {"system": SCT, "code": "698247007"}},
            {"name": "codingB", "valueCoding": {"system": SCT, "code": "427084000"}},
        ),
    )
    assert out(r.json(), "outcome") == "subsumes"
    r = client.get("/CodeSystem/snomed-alliance/$subsumes", params={"codeA": "426177001", "codeB": "48867003"})
    assert out(r.json(), "outcome") == "subsumed-by"


@pytest.mark.parametrize(
    "params, status, expression",
    [
        ({"system": SCT, "codeB": "1"}, 400, ["codeA"]),
        ({"codeA": "73211009", "codeB": "44054006"}, 400, ["system"]),
        ({"system": "http://example.org/unknown", "codeA": "1", "codeB": "2"}, 404, ["system"]),
        ({"system": SCT, "codeA": "73211009", "codeB": "99999"}, 404, ["codeB"]),
    ],
)
def test_subsumes_failures(client, unchanged, params, status, expression):
    error(client.get("/CodeSystem/$subsumes", params=params), status, expression)


def test_subsumes_codings_from_two_systems(client, unchanged):
    r = client.post(
        "/CodeSystem/$subsumes",
        json=body(
            {"name": "codingA", "valueCoding": {"system": SCT, "code": "1"}},
            {"name": "codingB", "valueCoding": {"system": LOINC, "code": "2"}},
        ),
    )
    error(r, 400, ["codingB"], "different systems")


# ---------------------------------------------------------------- $expand


def test_expand_enumerated_with_displays_from_the_code_system(client):
    r = client.get("/ValueSet/$expand", params={"url": f"{A}/ValueSet/blood-pressure-components"})
    assert r.status_code == 200, r.text
    vs = r.json()
    assert vs["expansion"]["total"] == 2
    assert vs["expansion"]["contains"] == [
        {"system": LOINC, "version": "2.77", "code": "8480-6", "display": "Systolic blood pressure"},
        {"system": LOINC, "version": "2.77", "code": "8462-4", "display": "Diastolic blood pressure"},
    ]
    assert "extension" not in vs["expansion"]


def test_expand_is_a_filter_imports_and_excludes(client):
    vs = client.get("/ValueSet/chronic-disease-register/$expand").json()
    assert sorted(codes(vs)) == sorted(["38341003", "59621000", "73211009", "44054006", "49436004", "13645005"])
    # SNOMED CT is a fragment here: the expansion says it may be incomplete
    assert vs["expansion"]["extension"] == [
        {"url": "http://hl7.org/fhir/StructureDefinition/valueset-unclosed", "valueBoolean": True}
    ]
    assert any(p["name"] == "warning" and "fragment" in p["valueString"] for p in vs["expansion"]["parameter"])


def test_expand_descendent_of_and_equals_filters(client):
    arrhythmias = codes(client.get("/ValueSet/cardiac-arrhythmias/$expand").json())
    assert "698247007" not in arrhythmias and {"49436004", "25569003", "426177001", "397829001"} <= set(arrhythmias)
    local = client.get("/ValueSet/local-vital-sign-codes/$expand").json()
    assert codes(local) == ["SBP", "DBP", "HR", "TEMP", "WT"]
    assert "extension" not in local["expansion"]  # a complete code system: the expansion is closed


def test_expand_text_filter_count_offset_and_total(client):
    page = client.get("/ValueSet/acquisition-modality/$expand", params={"count": 5, "offset": 10}).json()["expansion"]
    assert page["total"] == 37 and page["offset"] == 10 and len(page["contains"]) == 5
    assert page["contains"][0]["code"] == "GM"
    filtered = client.get("/ValueSet/acquisition-modality/$expand", params={"filter": "tomography"}).json()
    assert codes(filtered) == ["CT", "IVOCT", "OCT", "OPT", "PT"] and filtered["expansion"]["total"] == 5
    chinese = client.get(
        "/ValueSet/local-vital-sign-codes/$expand", params={"filter": "压", "includeDesignations": "true"}
    )
    contains = chinese.json()["expansion"]["contains"]
    assert [c["code"] for c in contains] == ["SBP", "DBP"] and contains[0]["designation"][0][
        "value"
    ] == "Systolic blood pressure"


def test_expand_post_inline_value_set_with_regex_filter(client):
    inline = {
        "resourceType": "ValueSet",
        "status": "active",
        "compose": {
            "include": [
                {
                    "system": f"{A}/CodeSystem/local-observation-codes",
                    "filter": [{"property": "code", "op": "regex", "value": "[A-Z]BP"}],
                },
                {"system": SCT, "filter": [{"property": "concept", "op": "is-a", "value": "3424008"}]},
            ],
            "exclude": [{"system": SCT, "concept": [{"code": "25569003"}]}],
        },
    }
    r = client.post(
        "/ValueSet/$expand", json=body({"name": "valueSet", "resource": inline}, {"name": "count", "valueInteger": 3})
    )
    assert r.status_code == 200, r.text
    assert codes(r.json()) == ["SBP", "DBP", "3424008"] and r.json()["expansion"]["total"] == 4


def test_expand_of_a_user_value_set_and_code_system(client):
    system = f"http://clinic.example/{uuid.uuid4().hex}"
    cs = {
        "resourceType": "CodeSystem",
        "url": system,
        "version": "1",
        "status": "active",
        "content": "complete",
        "concept": [
            {"code": "a", "display": "A", "concept": [{"code": "a1", "display": "A one"}]},
            {"code": "b", "display": "B"},
        ],
    }
    assert client.post("/CodeSystem", json=cs).status_code == 201
    vs = {
        "resourceType": "ValueSet",
        "url": f"{system}/vs",
        "status": "active",
        "compose": {"include": [{"system": system, "filter": [{"property": "concept", "op": "is-a", "value": "a"}]}]},
    }
    vs_id = client.post("/ValueSet", json=vs).json()["id"]
    expanded = client.get(f"/ValueSet/{vs_id}/$expand").json()
    assert codes(expanded) == ["a", "a1"] and "extension" not in expanded["expansion"]
    assert (
        out(
            client.get("/CodeSystem/$subsumes", params={"system": system, "codeA": "a", "codeB": "a1"}).json(),
            "outcome",
        )
        == "subsumes"
    )


def test_expand_whole_fragment_is_too_costly(client, unchanged):
    r = client.get("/ValueSet/loinc-all/$expand")
    issue = error(r, 422, ["ValueSet.compose.include[0].system"], "fragment", LOINC)
    assert issue["code"] == "too-costly"


@pytest.mark.parametrize(
    "compose, status, expression, words",
    [
        (
            {"include": [{"system": "http://example.org/unknown"}]},
            422,
            ["ValueSet.compose.include[0].system"],
            ["not known"],
        ),
        (
            {
                "include": [
                    {"system": SCT, "filter": [{"property": "concept", "op": "is-a", "value": "404684003"}]},
                    {"system": SCT, "filter": [{"property": "colour", "op": "=", "value": "red"}]},
                ]
            },
            422,
            ["ValueSet.compose.include[1].filter[0]"],
            ["colour"],
        ),
        (
            {"include": [{"system": SCT, "filter": [{"property": "concept", "op": "is-a", "value": "12345"}]}]},
            422,
            ["ValueSet.compose.include[0].filter[0]"],
            ["12345"],
        ),
        (
            {
                "include": [
                    {
                        "system": f"{A}/CodeSystem/local-observation-codes",
                        "filter": [{"property": "code", "op": "regex", "value": "(("}],
                    }
                ]
            },
            422,
            ["ValueSet.compose.include[0].filter[0]"],
            ["regular"],
        ),
        (
            {"include": [{"system": f"{A}/CodeSystem/organization-level", "concept": [{"code": "city"}]}]},
            422,
            ["ValueSet.compose.include[0].concept[0]"],
            ["city"],
        ),
        (
            {"include": [{"valueSet": ["http://example.org/ValueSet/none"]}]},
            422,
            ["ValueSet.compose.include[0].valueSet[0]"],
            ["not known"],
        ),
    ],
)
def test_expand_failures_say_where(client, unchanged, compose, status, expression, words):
    inline = {"resourceType": "ValueSet", "status": "active", "compose": compose}
    error(
        client.post("/ValueSet/$expand", json=body({"name": "valueSet", "resource": inline})),
        status,
        expression,
        *words,
    )


def test_expand_unknown_value_set(client, unchanged):
    assert client.get("/ValueSet/no-such-value-set/$expand").status_code == 404
    error(
        client.get("/ValueSet/$expand", params={"url": "http://example.org/ValueSet/none"}), 404, ["url"], "not known"
    )
    error(client.get("/ValueSet/$expand"), 400, ["url"], "url")
    error(client.get("/ValueSet/vital-signs/$expand", params={"count": "-1"}), 400, ["count"], "count")


def test_expand_import_cycle(client):
    first, second = (f"http://clinic.example/{uuid.uuid4().hex}" for _ in range(2))
    for url, other in ((first, second), (second, first)):
        vs = {
            "resourceType": "ValueSet",
            "url": url,
            "status": "active",
            "compose": {"include": [{"valueSet": [other]}]},
        }
        assert client.post("/ValueSet", json=vs).status_code == 201
    error(
        client.get("/ValueSet/$expand", params={"url": first}),
        422,
        ["ValueSet.compose.include[0].valueSet[0].compose.include[0].valueSet[0]"],
        "imports itself",
    )


# ---------------------------------------------------------------- ValueSet $validate-code


@pytest.mark.parametrize(
    "vs, system, code, result",
    [
        ("diabetes", SCT, "44054006", True),
        ("diabetes", SCT, "38341003", False),
        ("chronic-disease-register", SCT, "46635009", False),  # excluded
        ("chronic-disease-register", SCT, "59621000", True),  # through the imported hypertension set
        ("vital-signs", LOINC, "8867-4", True),
        ("vital-signs", LOINC, "2339-0", False),
        ("organization-level", f"{A}/CodeSystem/organization-level", "township", True),
    ],
)
def test_valueset_validate_code(client, vs, system, code, result):
    r = client.get(f"/ValueSet/{vs}/$validate-code", params={"system": system, "code": code})
    assert r.status_code == 200 and out(r.json(), "result") is result, r.text
    if not result:
        assert code in out(r.json(), "message")


def test_valueset_validate_code_by_url_coding_and_concept(client):
    r = client.post(
        "/ValueSet/$validate-code",
        json=body(
            {"name": "url", "valueUri": f"{A}/ValueSet/referral-category"},
            {"name": "coding", "valueCoding": {"system": f"{A}/CodeSystem/referral-category", "code": "imaging-read"}},
        ),
    )
    assert out(r.json(), "result") is True and out(r.json(), "display") == "影像诊断"
    r = client.post(
        "/ValueSet/$validate-code",
        json=body(
            {"name": "url", "valueUri": f"{A}/ValueSet/diabetes"},
            {
                "name": "codeableConcept",
                "valueCodeableConcept": {
                    "coding": [{"system": SCT, "code": "38341003"}, {"system": SCT, "code": "46635009"}]
                },
            },
        ),
    )
    assert out(r.json(), "result") is True
    wrong = client.get(
        "/ValueSet/diabetes/$validate-code", params={"system": SCT, "code": "44054006", "display": "Diabetes"}
    )
    assert out(wrong.json(), "result") is False and "'Diabetes'" in out(wrong.json(), "message")


def test_valueset_validate_code_on_a_system_held_in_part(client):
    held = client.get("/ValueSet/loinc-all/$validate-code", params={"system": LOINC, "code": "8867-4"}).json()
    assert out(held, "result") is True
    unknown = client.get("/ValueSet/loinc-all/$validate-code", params={"system": LOINC, "code": "1234-5"}).json()
    assert out(unknown, "result") is False and "cannot be" in out(unknown, "message")


def test_valueset_validate_code_failures(client, unchanged):
    assert client.get("/ValueSet/no-such-value-set/$validate-code", params={"code": "x"}).status_code == 404
    error(client.get("/ValueSet/$validate-code", params={"url": "http://example.org/none", "code": "x"}), 404, ["url"])
    error(client.get("/ValueSet/diabetes/$validate-code"), 400, ["code"])


# ---------------------------------------------------------------- $translate


def test_translate_by_source_system(client):
    r = client.get("/ConceptMap/$translate", params={"system": LOCAL_OBS, "code": "FBG"})
    p = r.json()
    assert out(p, "result") is True
    match = out(p, "match")
    assert {"name": "equivalence", "valueCode": "equivalent"} in match
    assert {
        "name": "concept",
        "valueCoding": {"system": LOINC, "code": "15074-8", "display": "Glucose [Moles/volume] in Blood"},
    } in match


def test_translate_instance_reverse_and_unmatched(client):
    r = client.post(
        "/ConceptMap/local-diagnosis-to-snomed/$translate",
        json=body(
            {"name": "coding", "valueCoding": {"system": SCT, "code": "44054006"}},
            {"name": "reverse", "valueBoolean": True},
        ),
    )
    assert out(r.json(), "result") is True
    assert {
        "name": "concept",
        "valueCoding": {"system": f"{A}/CodeSystem/local-diagnosis-codes", "code": "TNB2", "display": "2型糖尿病"},
    } in out(r.json(), "match")
    unmatched = client.get("/ConceptMap/$translate", params={"system": LOCAL_OBS, "code": "URINE-RT"}).json()
    assert out(unmatched, "result") is False and "URINE-RT" in out(unmatched, "message")
    assert {"name": "equivalence", "valueCode": "unmatched"} in out(unmatched, "match")
    none = client.get(
        "/ConceptMap/$translate",
        params={
            "url": f"{A}/ConceptMap/local-diagnosis-to-snomed",
            "system": f"{A}/CodeSystem/local-diagnosis-codes",
            "code": "QT",
        },
    )
    assert out(none.json(), "result") is False and out(none.json(), "match") is None


def test_translate_to_a_target_system(client):
    r = client.get(
        "/ConceptMap/$translate",
        params={
            "system": f"{A}/CodeSystem/ecg-triage-level",
            "code": "critical",
            "targetsystem": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
        },
    )
    assert out(r.json(), "match")[1]["valueCoding"]["code"] == "AA"
    other = client.get(
        "/ConceptMap/$translate",
        params={"system": f"{A}/CodeSystem/ecg-triage-level", "code": "critical", "targetsystem": LOINC},
    )
    assert out(other.json(), "result") is False


def test_translate_failures(client, unchanged):
    assert (
        client.get("/ConceptMap/no-such-map/$translate", params={"system": LOCAL_OBS, "code": "HR"}).status_code == 404
    )
    error(
        client.get(
            "/ConceptMap/$translate", params={"url": "http://example.org/none", "system": LOCAL_OBS, "code": "HR"}
        ),
        404,
        ["url"],
    )
    error(client.get("/ConceptMap/$translate", params={"system": LOCAL_OBS}), 400, ["code"])
    error(client.get("/ConceptMap/$translate", params={"code": "HR"}), 400, ["system"])
    error(
        client.get("/ConceptMap/$translate", params={"system": LOCAL_OBS, "code": "HR", "reverse": "maybe"}),
        400,
        ["reverse"],
    )
