"""Batch Bundles (POST [base], Bundle.type = batch), checked against FHIR R4 http.html: every entry is
processed on its own; a failing entry gets its own response.status and response.outcome while the
others succeed and are stored; the answer is a `batch-response` with one entry per request entry, in order."""

from __future__ import annotations

import httpx
import pytest
from conftest import on_every_layout
from write_data import SYS, new_patient, uid

pytestmark = on_every_layout("server", scope="session")


def entry(method: str, url: str, resource: dict | None = None, **request) -> dict:
    out: dict = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        out["resource"] = resource
    return out


def batch(client: httpx.Client, entries: list[dict], headers: dict | None = None) -> list[dict]:
    r = client.post("/", json={"resourceType": "Bundle", "type": "batch", "entry": entries}, headers=headers)
    assert r.status_code == 200, r.text  # a batch answers 200 even when entries fail
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "batch-response"
    assert len(bundle["entry"]) == len(entries)
    return bundle["entry"]


def code(e: dict) -> int:
    return int(e["response"]["status"].split()[0])


def has_error_outcome(e: dict) -> bool:
    outcome = e["response"].get("outcome")
    return (outcome is not None and outcome["resourceType"] == "OperationOutcome"
            and outcome["issue"][0]["severity"] in ("error", "fatal"))


def relative(client: httpx.Client, url: str) -> str:
    base = str(client.base_url).rstrip("/") + "/"
    return url[len(base):] if url.startswith(base) else url


def created_id(client: httpx.Client, e: dict, resource_type: str) -> str:
    assert code(e) == 201, e
    parts = relative(client, e["response"]["location"]).split("/")
    assert len(parts) == 4 and parts[0] == resource_type and parts[2:] == ["_history", "1"], e
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
    pid = f"bt-{uid()}"
    r = client.put(f"/Patient/{pid}", json={**new_patient(value, **fields), "id": pid})
    assert r.status_code == 201, r.text
    return pid


def fhirpath_replace(path: str, **value) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": path},
        {"name": "value", **value}]}]}


def test_failing_entries_do_not_stop_the_others(client):
    created, invalid, conditional = uid(), uid(), uid()
    stale = put_patient(client, uid(), gender="male")
    updated = put_patient(client, uid(), gender="male")
    deleted = put_patient(client, uid())
    patched = put_patient(client, uid(), gender="male")
    existing = put_patient(client, conditional)
    entries = [
        entry("POST", "Patient", new_patient(created)),
        entry("POST", "Patient", new_patient(invalid, birthDate="not-a-date")),
        entry("GET", f"Patient/bt-never-{uid()}"),
        entry("PUT", f"Patient/{stale}", {"resourceType": "Patient", "id": stale, "gender": "female"},
              ifMatch='W/"3"'),
        entry("PUT", f"Patient/{updated}", {"resourceType": "Patient", "id": updated, "gender": "female"}),
        entry("DELETE", f"Patient/{deleted}"),
        entry("POST", "Patient", new_patient(conditional), ifNoneExist=f"identifier={SYS}|{conditional}"),
        entry("PATCH", f"Patient/{patched}", fhirpath_replace("Patient.gender", valueCode="female")),
        entry("GET", f"Patient?identifier={SYS}|{conditional}"),
    ]
    result = batch(client, entries)
    assert [code(e) for e in result] == [201, 400, 404, 412, 200, code(result[5]), 200, 200, 200]
    assert code(result[5]) in (200, 204)
    for failing in (1, 2, 3):
        assert has_error_outcome(result[failing]), result[failing]
    for succeeding in (0, 4, 5, 6, 7, 8):
        assert "outcome" not in result[succeeding]["response"] or not has_error_outcome(result[succeeding])

    assert find(client, "Patient", created) == {created_id(client, result[0], "Patient")}
    assert find(client, "Patient", invalid) == set()
    assert read(client, f"Patient/{stale}")["meta"]["versionId"] == "1"
    assert read(client, f"Patient/{updated}")["gender"] == "female"
    assert result[4]["response"]["etag"] == 'W/"2"'
    assert client.get(f"/Patient/{deleted}").status_code == 410
    assert find(client, "Patient", conditional) == {existing}
    assert read(client, f"Patient/{patched}")["gender"] == "female"
    searchset = result[8]["resource"]
    assert searchset["type"] == "searchset"
    assert [e["resource"]["id"] for e in searchset["entry"] if e["search"]["mode"] == "match"] == [existing]


def test_unknown_resource_type_fails_only_its_entry(client):
    value = uid()
    result = batch(client, [
        entry("POST", "Patient", new_patient(value)),
        entry("POST", "Banana", {"resourceType": "Banana"}),
        entry("GET", "Banana/1"),
    ])
    assert [code(e) for e in result] == [201, 404, 404]
    assert has_error_outcome(result[1]) and has_error_outcome(result[2])
    assert find(client, "Patient", value) == {created_id(client, result[0], "Patient")}


def test_conditional_failures_are_per_entry(client):
    twice, value = uid(), uid()
    put_patient(client, twice)
    put_patient(client, twice)
    result = batch(client, [
        entry("POST", "Patient", new_patient(twice), ifNoneExist=f"identifier={SYS}|{twice}"),
        entry("PUT", f"Patient?identifier={SYS}|{twice}", new_patient(twice)),
        entry("POST", "Patient", new_patient(value)),
        entry("DELETE", f"Patient?identifier={SYS}|{uid()}"),  # matches nothing: fine
    ])
    assert code(result[0]) == 412 and has_error_outcome(result[0])
    assert code(result[1]) == 412 and has_error_outcome(result[1])
    assert find(client, "Patient", value) == {created_id(client, result[2], "Patient")}
    assert code(result[3]) in (200, 204)
    assert len(find(client, "Patient", twice)) == 2


def test_patch_entry_with_an_invalid_result_fails_alone(client):
    pid = put_patient(client, uid(), birthDate="1970-01-01")
    value = uid()
    result = batch(client, [
        entry("PATCH", f"Patient/{pid}", fhirpath_replace("Patient.birthDate", valueString="not-a-date")),
        entry("POST", "Patient", new_patient(value)),
    ])
    assert code(result[0]) in (400, 422) and has_error_outcome(result[0])
    assert read(client, f"Patient/{pid}")["birthDate"] == "1970-01-01"
    assert find(client, "Patient", value) == {created_id(client, result[1], "Patient")}


def test_order_is_preserved(client):
    values = [uid() for _ in range(6)]
    result = batch(client, [entry("POST", "Patient", new_patient(v)) for v in values])
    for value, e in zip(values, result, strict=True):
        assert find(client, "Patient", value) == {created_id(client, e, "Patient")}


@pytest.mark.parametrize("prefer", ["return=minimal"])
def test_prefer_return_minimal_omits_resources(client, prefer):
    value = uid()
    result = batch(client, [entry("POST", "Patient", new_patient(value))], headers={"Prefer": prefer})
    assert "resource" not in result[0]
    assert find(client, "Patient", value) == {created_id(client, result[0], "Patient")}


def test_capability_statement_declares_batch(client):
    rest = client.get("/metadata").json()["rest"][0]
    assert "batch" in {i["code"] for i in rest.get("interaction", [])}
