"""Transaction Bundles (POST [base], Bundle.type = transaction), checked against FHIR R4 http.html
("transaction", "Transaction Processing Rules", "Conditional references", "Batch/Transaction response"):

- entries with `urn:uuid:` fullUrls get ids and every reference to them, wherever it sits, is rewritten;
- the response is a `transaction-response` Bundle with one entry per request entry, in the same order,
  each with response.status, and location/etag for writes;
- entries are processed DELETE -> POST -> PUT/PATCH -> GET whatever their order in the Bundle;
- ifNoneExist, conditional references and conditional PUT resolve against the store;
- any failure fails the whole transaction (one OperationOutcome, not a Bundle) and nothing is written."""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import pytest
from conftest import newest_history_entry, on_every_layout
from write_data import SYS, ident, new_patient, uid

pytestmark = on_every_layout("server", scope="session")

LOINC = "http://loinc.org"


# ---------------------------------------------------------------- helpers


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def bp(subject: str | None = None, **fields) -> dict:
    resource = {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
                "component": [{"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                               "valueQuantity": {"value": 120, "unit": "mmHg",
                                                 "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]}
    if subject is not None:
        resource["subject"] = {"reference": subject}
    resource.update(fields)
    return resource


def entry(method: str, url: str, resource: dict | None = None, full_url: str | None = None, **request) -> dict:
    out: dict = {"request": {"method": method, "url": url, **request}}
    if full_url is not None:
        out["fullUrl"] = full_url
    if resource is not None:
        out["resource"] = resource
    return out


def transaction(client: httpx.Client, entries: list[dict], headers: dict | None = None) -> httpx.Response:
    return client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                       headers=headers)


def ok_transaction(client: httpx.Client, entries: list[dict], headers: dict | None = None) -> list[dict]:
    """POST a transaction that must succeed; the response entries, checked for shape and count."""
    r = transaction(client, entries, headers)
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "transaction-response"
    assert len(bundle.get("entry", [])) == len(entries)
    return bundle.get("entry", [])


def failed(client: httpx.Client, r: httpx.Response, status: int) -> dict:
    """A failed transaction: the status, and a single OperationOutcome instead of a Bundle."""
    assert r.status_code == status, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome", outcome
    assert outcome["issue"][0]["severity"] in ("error", "fatal")
    return outcome


def code(e: dict) -> int:
    """The HTTP code that Bundle.entry.response.status starts with."""
    return int(e["response"]["status"].split()[0])


def relative(client: httpx.Client, url: str) -> str:
    base = str(client.base_url).rstrip("/") + "/"
    return url[len(base):] if url.startswith(base) else url


def created_id(client: httpx.Client, e: dict, resource_type: str) -> str:
    """The id of a 201 entry, from response.location Type/id/_history/1 (absolute or relative)."""
    assert code(e) == 201, e
    parts = relative(client, e["response"]["location"]).split("/")
    assert len(parts) == 4 and parts[0] == resource_type and parts[2] == "_history" and parts[3] == "1", e
    assert e["response"]["etag"] == 'W/"1"'
    return parts[1]


def read(client: httpx.Client, path: str) -> dict:
    r = client.get(f"/{path}")
    assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
    return r.json()


def find(client: httpx.Client, resource_type: str, value: str) -> set[str]:
    r = client.get(f"/{resource_type}", params={"identifier": f"{SYS}|{value}", "_count": "100"})
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"}


def put_patient(client: httpx.Client, value: str, **fields) -> str:
    pid = f"tx-{uid()}"
    r = client.put(f"/Patient/{pid}", json={**new_patient(value, **fields), "id": pid})
    assert r.status_code == 201, r.text
    return pid


def search_ids(bundle: dict) -> list[str]:
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset", bundle
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"]


def fhirpath_replace(path: str, **value) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": path},
        {"name": "value", **value}]}]}


# ---------------------------------------------------------------- urn:uuid references


def test_urn_uuid_references_are_rewritten_everywhere(client):
    p, pr, enc, obs = urn(), urn(), urn(), urn()
    value = uid()
    entries = [
        # Patient refers forward to the Practitioner entry that comes after it
        entry("POST", "Patient", new_patient(value, generalPractitioner=[{"reference": pr}]), p),
        entry("POST", "Practitioner", {"resourceType": "Practitioner", "name": [{"family": "Zhou"}]}, pr),
        entry("POST", "Encounter", {
            "resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": p},
            "participant": [{"individual": {"reference": pr, "display": "Dr Zhou"}}]}, enc),
        entry("POST", "Observation", bp(
            p, encounter={"reference": enc},
            performer=[{"reference": pr}, {"reference": p}],
            extension=[{"url": "http://example.org/fhir/StructureDefinition/seen-with",
                        "valueReference": {"reference": pr}}],
            contained=[{"resourceType": "Specimen", "id": "sp1", "subject": {"reference": p}}],
            specimen={"reference": "#sp1"}), obs),
        # refers back to an earlier entry
        entry("POST", "Observation", bp(p, hasMember=[{"reference": obs}], derivedFrom=[{"reference": obs}])),
    ]
    result = ok_transaction(client, entries)
    assert [code(e) for e in result] == [201] * 5
    pid = created_id(client, result[0], "Patient")
    prid = created_id(client, result[1], "Practitioner")
    eid = created_id(client, result[2], "Encounter")
    oid = created_id(client, result[3], "Observation")
    oid2 = created_id(client, result[4], "Observation")
    assert len({pid, prid, eid, oid, oid2}) == 5
    for e in result:
        assert e["response"]["lastModified"]

    patient = read(client, f"Patient/{pid}")
    assert patient["generalPractitioner"] == [{"reference": f"Practitioner/{prid}"}]
    encounter = read(client, f"Encounter/{eid}")
    assert encounter["subject"] == {"reference": f"Patient/{pid}"}
    assert encounter["participant"] == [{"individual": {"reference": f"Practitioner/{prid}", "display": "Dr Zhou"}}]
    observation = read(client, f"Observation/{oid}")
    assert observation["subject"] == {"reference": f"Patient/{pid}"}
    assert observation["encounter"] == {"reference": f"Encounter/{eid}"}
    assert observation["performer"] == [{"reference": f"Practitioner/{prid}"}, {"reference": f"Patient/{pid}"}]
    assert observation["extension"][0]["valueReference"] == {"reference": f"Practitioner/{prid}"}
    assert observation["contained"][0]["subject"] == {"reference": f"Patient/{pid}"}
    assert observation["specimen"] == {"reference": "#sp1"}  # local references are left alone
    filled = ("interpretation", "referenceRange")  # the server interprets blood pressure (workflow rules)
    assert [{k: v for k, v in c.items() if k not in filled} for c in observation["component"]] == \
        entries[3]["resource"]["component"]
    second = read(client, f"Observation/{oid2}")
    assert second["hasMember"] == [{"reference": f"Observation/{oid}"}]
    assert second["derivedFrom"] == [{"reference": f"Observation/{oid}"}]
    for path in (f"Patient/{pid}", f"Encounter/{eid}", f"Observation/{oid}", f"Observation/{oid2}"):
        assert "urn:uuid:" not in client.get(f"/{path}").text
    # the references are searchable as the real ids
    r = client.get("/Observation", params={"subject": f"Patient/{pid}"})
    assert {e["resource"]["id"] for e in r.json()["entry"]} == {oid, oid2}


def test_response_entries_carry_the_written_resources(client):
    p = urn()
    value = uid()
    result = ok_transaction(client, [entry("POST", "Patient", new_patient(value), p),
                                     entry("POST", "Observation", bp(p))],
                            headers={"Prefer": "return=representation"})
    pid = created_id(client, result[0], "Patient")
    oid = created_id(client, result[1], "Observation")
    assert result[0]["resource"] == read(client, f"Patient/{pid}")
    assert result[1]["resource"] == read(client, f"Observation/{oid}")
    assert result[1]["resource"]["subject"] == {"reference": f"Patient/{pid}"}


def test_client_ids_on_post_are_ignored_and_put_creates_with_its_id(client):
    cid = f"tx-put-{uid()}"
    value = uid()
    result = ok_transaction(client, [
        entry("POST", "Patient", {**new_patient(value), "id": "client-chosen"}),
        entry("PUT", f"Patient/{cid}", {"resourceType": "Patient", "id": cid, "gender": "female"}),
    ])
    pid = created_id(client, result[0], "Patient")
    assert pid != "client-chosen"
    assert created_id(client, result[1], "Patient") == cid
    assert read(client, f"Patient/{cid}")["gender"] == "female"


def test_empty_transaction(client):
    r = client.post("/", json={"resourceType": "Bundle", "type": "transaction"})
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "transaction-response"
    assert r.json().get("entry", []) == []


# ---------------------------------------------------------------- processing order


def test_entries_are_processed_delete_post_put_get_and_answered_in_request_order(client):
    a_value, b_value, new_value = uid(), uid(), uid()
    a = put_patient(client, a_value)
    b = put_patient(client, b_value)
    n = urn()
    entries = [
        entry("GET", f"Patient?identifier={SYS}|{new_value}"),  # sees the POST below
        entry("GET", f"Patient/{a}"),  # sees the PUT below
        entry("PUT", f"Patient/{a}", {**new_patient(a_value), "id": a, "gender": "other",
                                      "link": [{"other": {"reference": n}, "type": "seealso"}]}),
        entry("POST", "Patient", new_patient(new_value), n),
        entry("DELETE", f"Patient/{b}"),
        entry("GET", f"Patient?identifier={SYS}|{b_value}"),  # sees the DELETE
    ]
    result = ok_transaction(client, entries)
    assert [code(e) for e in result[:4]] == [200, 200, 200, 201]
    assert code(result[4]) in (200, 204)
    assert code(result[5]) == 200
    new_id = created_id(client, result[3], "Patient")
    assert search_ids(result[0]["resource"]) == [new_id]
    assert result[1]["resource"]["id"] == a
    assert result[1]["resource"]["meta"]["versionId"] == "2"
    assert result[1]["resource"]["gender"] == "other"
    assert result[2]["response"]["etag"] == 'W/"2"'
    assert search_ids(result[5]["resource"]) == []
    # and the store agrees
    assert read(client, f"Patient/{a}")["link"] == [{"other": {"reference": f"Patient/{new_id}"}, "type": "seealso"}]
    assert client.get(f"/Patient/{b}").status_code == 410
    assert find(client, "Patient", new_value) == {new_id}


def test_delete_runs_before_post_whatever_the_entry_order(client):
    value = uid()
    old = put_patient(client, value)
    result = ok_transaction(client, [
        entry("POST", "Patient", new_patient(value, gender="female")),
        entry("DELETE", f"Patient?identifier={SYS}|{value}"),  # deletes only the resource that existed before
    ])
    new_id = created_id(client, result[0], "Patient")
    assert code(result[1]) in (200, 204)
    assert client.get(f"/Patient/{old}").status_code == 410
    assert find(client, "Patient", value) == {new_id}


def test_if_none_exist_is_evaluated_after_the_deletes(client):
    value = uid()
    old = put_patient(client, value)
    p = urn()
    result = ok_transaction(client, [
        entry("DELETE", f"Patient?identifier={SYS}|{value}"),
        entry("POST", "Patient", new_patient(value), p, ifNoneExist=f"identifier={SYS}|{value}"),
        entry("POST", "Observation", bp(p)),
    ])
    assert code(result[0]) in (200, 204)
    # the DELETE has already removed the only match, so the conditional create creates
    new_id = created_id(client, result[1], "Patient")
    assert new_id != old
    oid = created_id(client, result[2], "Observation")
    assert read(client, f"Observation/{oid}")["subject"] == {"reference": f"Patient/{new_id}"}
    assert find(client, "Patient", value) == {new_id}


def test_overlapping_identities_fail_the_transaction(client):
    # http.html: "If any resource identities (including resolved identities from conditional update/delete)
    # overlap in steps 1-3, then the transaction SHALL fail."
    value = uid()
    pid = put_patient(client, value)
    before = newest_history_entry(client)
    r = transaction(client, [
        entry("DELETE", f"Patient/{pid}"),
        entry("PUT", f"Patient/{pid}", {**new_patient(value), "id": pid, "gender": "male"}),
    ])
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert read(client, f"Patient/{pid}")["meta"]["versionId"] == "1"
    assert newest_history_entry(client) == before


# ---------------------------------------------------------------- conditional create / update / references


def test_if_none_exist_with_a_match_returns_it_and_references_point_at_it(client):
    value = uid()
    existing = put_patient(client, value, gender="male")
    p = urn()
    result = ok_transaction(client, [
        entry("POST", "Patient", new_patient(value, gender="female"), p, ifNoneExist=f"identifier={SYS}|{value}"),
        entry("POST", "Observation", bp(p)),
    ])
    assert code(result[0]) == 200
    assert result[0]["response"]["etag"] == 'W/"1"'
    oid = created_id(client, result[1], "Observation")
    assert read(client, f"Observation/{oid}")["subject"] == {"reference": f"Patient/{existing}"}
    assert find(client, "Patient", value) == {existing}
    unchanged = read(client, f"Patient/{existing}")
    assert unchanged["meta"]["versionId"] == "1" and unchanged["gender"] == "male"


def test_if_none_exist_without_a_match_creates(client):
    value = uid()
    result = ok_transaction(client, [
        entry("POST", "Patient", new_patient(value), urn(), ifNoneExist=f"identifier={SYS}|{value}")])
    assert find(client, "Patient", value) == {created_id(client, result[0], "Patient")}


def test_if_none_exist_with_two_matches_fails_the_transaction(client):
    value, other = uid(), uid()
    put_patient(client, value)
    put_patient(client, value)
    before = newest_history_entry(client)
    r = transaction(client, [
        entry("POST", "Patient", new_patient(other)),
        entry("POST", "Patient", new_patient(value), urn(), ifNoneExist=f"identifier={SYS}|{value}"),
    ])
    failed(client, r, 412)
    assert find(client, "Patient", other) == set()
    assert newest_history_entry(client) == before


def test_conditional_references_are_resolved(client):
    value = uid()
    pid = put_patient(client, value)
    prac = f"tx-pr-{uid()}"
    assert client.put(f"/Practitioner/{prac}", json={"resourceType": "Practitioner", "id": prac,
                                                     "identifier": ident(prac)}).status_code == 201
    result = ok_transaction(client, [entry("POST", "Observation", bp(
        f"Patient?identifier={SYS}|{value}",
        performer=[{"reference": f"Practitioner?identifier={SYS}|{prac}"}]))])
    stored = read(client, f"Observation/{created_id(client, result[0], 'Observation')}")
    assert stored["subject"] == {"reference": f"Patient/{pid}"}
    assert stored["performer"] == [{"reference": f"Practitioner/{prac}"}]


@pytest.mark.parametrize("matches", [0, 2])
def test_conditional_reference_not_matching_exactly_one_fails_the_transaction(client, matches):
    value, other = uid(), uid()
    for _ in range(matches):
        put_patient(client, value)
    before = newest_history_entry(client)
    r = transaction(client, [
        entry("POST", "Patient", new_patient(other)),
        entry("POST", "Observation", bp(f"Patient?identifier={SYS}|{value}", identifier=ident(other))),
    ])
    failed(client, r, 412)
    assert find(client, "Patient", other) == set()
    assert find(client, "Observation", other) == set()
    assert newest_history_entry(client) == before


def test_conditional_put_entry_updates_the_match_and_references_follow(client):
    value = uid()
    existing = put_patient(client, value)
    p = urn()
    result = ok_transaction(client, [
        entry("PUT", f"Patient?identifier={SYS}|{value}", new_patient(value, gender="female"), p),
        entry("POST", "Observation", bp(p)),
    ])
    assert code(result[0]) == 200
    assert result[0]["response"]["etag"] == 'W/"2"'
    stored = read(client, f"Patient/{existing}")
    assert stored["meta"]["versionId"] == "2" and stored["gender"] == "female"
    oid = created_id(client, result[1], "Observation")
    assert read(client, f"Observation/{oid}")["subject"] == {"reference": f"Patient/{existing}"}
    assert find(client, "Patient", value) == {existing}


def test_conditional_put_entry_without_a_match_creates(client):
    value = uid()
    p = urn()
    result = ok_transaction(client, [
        entry("PUT", f"Patient?identifier={SYS}|{value}", new_patient(value), p),
        entry("POST", "Observation", bp(p)),
    ])
    pid = created_id(client, result[0], "Patient")
    assert find(client, "Patient", value) == {pid}
    oid = created_id(client, result[1], "Observation")
    assert read(client, f"Observation/{oid}")["subject"] == {"reference": f"Patient/{pid}"}


def test_conditional_put_entry_with_two_matches_fails(client):
    value = uid()
    put_patient(client, value)
    put_patient(client, value)
    before = newest_history_entry(client)
    failed(client, transaction(client, [entry("PUT", f"Patient?identifier={SYS}|{value}", new_patient(value))]),
           412)
    assert newest_history_entry(client) == before


# ---------------------------------------------------------------- PATCH entries


def test_fhirpath_patch_entry(client):
    value = uid()
    pid = put_patient(client, value, gender="male")
    result = ok_transaction(client, [entry("PATCH", f"Patient/{pid}",
                                           fhirpath_replace("Patient.gender", valueCode="female"))])
    assert code(result[0]) == 200
    assert result[0]["response"]["etag"] == 'W/"2"'
    stored = read(client, f"Patient/{pid}")
    assert stored["gender"] == "female" and stored["meta"]["versionId"] == "2"
    assert stored["identifier"] == ident(value)


def test_json_patch_entry_as_binary(client):
    # R4 allows a JSON Patch in a Bundle as a Binary with contentType application/json-patch+json
    value = uid()
    pid = put_patient(client, value, gender="male")
    patch = [{"op": "replace", "path": "/gender", "value": "other"}]
    binary = {"resourceType": "Binary", "contentType": "application/json-patch+json",
              "data": base64.b64encode(json.dumps(patch).encode()).decode()}
    result = ok_transaction(client, [entry("PATCH", f"Patient/{pid}", binary)])
    assert code(result[0]) == 200
    assert read(client, f"Patient/{pid}")["gender"] == "other"


def test_patch_entry_that_makes_the_resource_invalid_fails_the_transaction(client):
    value, other = uid(), uid()
    pid = put_patient(client, value, birthDate="1970-01-01")
    before = newest_history_entry(client)
    r = transaction(client, [
        entry("POST", "Patient", new_patient(other)),
        entry("PATCH", f"Patient/{pid}", fhirpath_replace("Patient.birthDate", valueString="not-a-date")),
    ])
    assert r.status_code in (400, 422), r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert find(client, "Patient", other) == set()
    assert read(client, f"Patient/{pid}")["birthDate"] == "1970-01-01"
    assert newest_history_entry(client) == before


# ---------------------------------------------------------------- all or nothing


def test_invalid_post_entry_fails_the_whole_transaction(client):
    value, cid = uid(), f"tx-put-{uid()}"
    existing = put_patient(client, uid())
    before = newest_history_entry(client)
    p = urn()
    r = transaction(client, [
        entry("POST", "Patient", new_patient(value), p),
        entry("POST", "Observation", bp(p, identifier=ident(value),
                                        valueQuantity={"value": "not-a-number", "unit": "mmHg"})),
        entry("PUT", f"Patient/{cid}", {"resourceType": "Patient", "id": cid}),
        entry("DELETE", f"Patient/{existing}"),
    ])
    outcome = failed(client, r, 400)
    assert "Bundle.entry[1]" in json.dumps(outcome)  # names the entry that failed
    assert find(client, "Patient", value) == set()
    assert find(client, "Observation", value) == set()
    assert client.get(f"/Patient/{cid}").status_code == 404
    assert read(client, f"Patient/{existing}")["meta"]["versionId"] == "1"
    assert newest_history_entry(client) == before


def test_invalid_put_entry_rolls_back_deletes_and_creates_already_done(client):
    value = uid()
    existing = put_patient(client, uid())
    updated = put_patient(client, uid(), gender="male")
    bad = f"tx-bad-{uid()}"
    before = newest_history_entry(client)
    r = transaction(client, [
        entry("DELETE", f"Patient/{existing}"),
        entry("POST", "Patient", new_patient(value)),
        entry("PUT", f"Patient/{updated}", {"resourceType": "Patient", "id": updated, "gender": "female"}),
        entry("PUT", f"Patient/{bad}", {"resourceType": "Patient", "id": bad, "birthDate": "not-a-date"}),
    ])
    outcome = failed(client, r, 400)
    assert "Bundle.entry[3]" in json.dumps(outcome)
    assert read(client, f"Patient/{existing}")["meta"]["versionId"] == "1"
    assert read(client, f"Patient/{updated}")["gender"] == "male"
    assert find(client, "Patient", value) == set()
    assert client.get(f"/Patient/{bad}").status_code == 404
    assert newest_history_entry(client) == before


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_if_match_mismatch_fails_the_transaction(client, method):
    value, other = uid(), uid()
    pid = put_patient(client, value, gender="male")
    resource = {"PUT": {**new_patient(value), "id": pid, "gender": "female"},
                "DELETE": None,
                "PATCH": fhirpath_replace("Patient.gender", valueCode="female")}[method]
    before = newest_history_entry(client)
    r = transaction(client, [
        entry("POST", "Patient", new_patient(other)),
        entry(method, f"Patient/{pid}", resource, ifMatch='W/"2"'),  # it is at version 1
    ])
    failed(client, r, 412)
    stored = read(client, f"Patient/{pid}")
    assert stored["meta"]["versionId"] == "1" and stored["gender"] == "male"
    assert find(client, "Patient", other) == set()
    assert newest_history_entry(client) == before


def test_if_match_that_matches_succeeds(client):
    pid = put_patient(client, uid(), gender="male")
    result = ok_transaction(client, [entry("PUT", f"Patient/{pid}", {"resourceType": "Patient", "id": pid},
                                           ifMatch='W/"1"')])
    assert code(result[0]) == 200 and result[0]["response"]["etag"] == 'W/"2"'


def test_get_of_an_unknown_resource_fails_the_transaction(client):
    other = uid()
    before = newest_history_entry(client)
    r = transaction(client, [entry("POST", "Patient", new_patient(other)),
                             entry("GET", f"Patient/tx-never-{uid()}")])
    failed(client, r, 404)
    assert find(client, "Patient", other) == set()
    assert newest_history_entry(client) == before


# ---------------------------------------------------------------- Prefer


def test_prefer_return_minimal_omits_resources(client):
    value, cid = uid(), f"tx-min-{uid()}"
    p = urn()
    result = ok_transaction(client, [
        entry("POST", "Patient", new_patient(value), p),
        entry("PUT", f"Patient/{cid}", {"resourceType": "Patient", "id": cid}),
        entry("POST", "Observation", bp(p)),
    ], headers={"Prefer": "return=minimal"})
    for e in result:
        assert "resource" not in e, e
        assert code(e) == 201
        assert e["response"]["etag"] == 'W/"1"'
    pid = created_id(client, result[0], "Patient")
    assert created_id(client, result[1], "Patient") == cid
    oid = created_id(client, result[2], "Observation")
    assert read(client, f"Observation/{oid}")["subject"] == {"reference": f"Patient/{pid}"}


def test_capability_statement_declares_transaction(client):
    rest = client.get("/metadata").json()["rest"][0]
    assert "transaction" in {i["code"] for i in rest.get("interaction", [])}
