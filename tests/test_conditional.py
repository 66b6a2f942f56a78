"""Conditional create (If-None-Exist), conditional update (PUT [type]?criteria) and conditional delete
(DELETE [type]?criteria), checked against FHIR R4 http.html, on both backends."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import newest_history_entry, on_every_layout
from write_data import SYS, new_patient, uid

pytestmark = on_every_layout("server", scope="session")


def criteria(value: str) -> str:
    return f"identifier={SYS}|{value}"


def put_patient(client: httpx.Client, value: str, **fields) -> str:
    pid = f"cd-{uid()}"
    r = client.put(f"/Patient/{pid}", json={**new_patient(value, **fields), "id": pid})
    assert r.status_code == 201, r.text
    return pid


def find(client: httpx.Client, value: str) -> set[str]:
    r = client.get("/Patient", params={"identifier": f"{SYS}|{value}", "_count": "200"})
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"}


def rejected(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] in ("error", "fatal")
    return outcome


def location_id(client: httpx.Client, response: httpx.Response, version: int = 1) -> str:
    base = str(client.base_url).rstrip("/")
    location = response.headers["location"]
    assert location.startswith(f"{base}/Patient/") and location.endswith(f"/_history/{version}"), location
    return location[len(f"{base}/Patient/"):-len(f"/_history/{version}")]


# ---------------------------------------------------------------- conditional create


def test_conditional_create_without_a_match_creates(client):
    value = uid()
    r = client.post("/Patient", json=new_patient(value), headers={"If-None-Exist": criteria(value)})
    assert r.status_code == 201, r.text
    pid = location_id(client, r)
    assert r.json()["id"] == pid
    assert r.headers["etag"] == 'W/"1"'
    assert find(client, value) == {pid}


def test_conditional_create_with_one_match_returns_it_and_creates_nothing(client):
    value = uid()
    existing = put_patient(client, value, gender="male")
    before = newest_history_entry(client)
    r = client.post("/Patient", json=new_patient(value, gender="female"), headers={"If-None-Exist": criteria(value)})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == existing
    assert r.json()["gender"] == "male"  # the existing resource, untouched
    assert r.json()["meta"]["versionId"] == "1"
    assert newest_history_entry(client) == before
    assert find(client, value) == {existing}


def test_conditional_create_with_two_matches_is_412(client):
    value = uid()
    put_patient(client, value)
    put_patient(client, value)
    before = newest_history_entry(client)
    rejected(client.post("/Patient", json=new_patient(value), headers={"If-None-Exist": criteria(value)}), 412)
    assert newest_history_entry(client) == before
    assert len(find(client, value)) == 2


def test_conditional_create_criteria_with_several_parameters(client):
    value = uid()
    existing = put_patient(client, value, gender="male")
    # the second parameter excludes the existing one: no match, so a create
    r = client.post("/Patient", json=new_patient(value, gender="female"),
                    headers={"If-None-Exist": f"{criteria(value)}&gender=female"})
    assert r.status_code == 201, r.text
    assert find(client, value) == {existing, r.json()["id"]}


@pytest.mark.parametrize("bad", ["no-such-parameter=1", "birthdate=not-a-date", "identifier:nonsense=x"])
def test_conditional_create_with_bad_criteria_is_400(client, bad):
    value = uid()
    before = newest_history_entry(client)
    rejected(client.post("/Patient", json=new_patient(value), headers={"If-None-Exist": bad}), 400)
    assert newest_history_entry(client) == before
    assert find(client, value) == set()


def _conditional_post(base: str, value: str) -> httpx.Response:
    with httpx.Client(base_url=base, timeout=60) as http:
        return http.post("/Patient", json=new_patient(value),
                         headers={"Content-Type": "application/fhir+json", "If-None-Exist": criteria(value)})


def test_concurrent_conditional_creates_make_exactly_one(client, server):
    value = uid()
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: _conditional_post(server.base_url, value), range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [201], [r.text for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert find(client, value) == ids


def _conditional_put(base: str, value: str, n: int) -> httpx.Response:
    with httpx.Client(base_url=base, timeout=60) as http:
        return http.put(f"/Patient?{criteria(value)}", json=new_patient(value, name=[{"family": f"W{n}"}]),
                        headers={"Content-Type": "application/fhir+json"})


def test_concurrent_conditional_updates_create_one_and_update_it(client, server):
    value = uid()
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda n: _conditional_put(server.base_url, value, n), range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [201], [r.text for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1 and find(client, value) == ids
    assert sorted(int(r.json()["meta"]["versionId"]) for r in responses) == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------- conditional update


def test_conditional_update_no_match_no_id_creates_with_a_new_id(client):
    value = uid()
    r = client.put(f"/Patient?{criteria(value)}", json=new_patient(value, gender="female"))
    assert r.status_code == 201, r.text
    pid = location_id(client, r)
    assert r.json()["id"] == pid and r.json()["meta"]["versionId"] == "1"
    assert find(client, value) == {pid}


def test_conditional_update_no_match_with_id_creates_with_that_id(client):
    value = uid()
    pid = f"cu-{uid()}"
    r = client.put(f"/Patient?{criteria(value)}", json={**new_patient(value), "id": pid})
    assert r.status_code == 201, r.text
    assert location_id(client, r) == pid
    assert r.json()["id"] == pid
    assert find(client, value) == {pid}


@pytest.mark.parametrize("with_id", [False, True])
def test_conditional_update_one_match_updates_it(client, with_id):
    value = uid()
    existing = put_patient(client, value, gender="male")
    body = new_patient(value, gender="female")
    if with_id:
        body["id"] = existing
    r = client.put(f"/Patient?{criteria(value)}", json=body)
    assert r.status_code == 200, r.text
    assert location_id(client, r, 2) == existing
    assert r.headers["etag"] == 'W/"2"'
    stored = client.get(f"/Patient/{existing}").json()
    assert stored["meta"]["versionId"] == "2" and stored["gender"] == "female"
    assert find(client, value) == {existing}


def test_conditional_update_two_matches_is_412(client):
    value = uid()
    a = put_patient(client, value, gender="male")
    b = put_patient(client, value, gender="male")
    before = newest_history_entry(client)
    rejected(client.put(f"/Patient?{criteria(value)}", json=new_patient(value, gender="female")), 412)
    assert newest_history_entry(client) == before
    assert find(client, value) == {a, b}


def test_conditional_update_body_id_not_the_match_is_400(client):
    value = uid()
    existing = put_patient(client, value, gender="male")
    before = newest_history_entry(client)
    rejected(client.put(f"/Patient?{criteria(value)}",
                        json={**new_patient(value, gender="female"), "id": f"other-{uid()}"}), 400)
    assert newest_history_entry(client) == before
    assert client.get(f"/Patient/{existing}").json()["gender"] == "male"


def test_conditional_update_with_bad_criteria_is_400(client):
    value = uid()
    before = newest_history_entry(client)
    rejected(client.put("/Patient?no-such-parameter=1", json=new_patient(value)), 400)
    assert newest_history_entry(client) == before


def test_conditional_update_with_an_invalid_body_is_400(client):
    value = uid()
    existing = put_patient(client, value)
    before = newest_history_entry(client)
    rejected(client.put(f"/Patient?{criteria(value)}", json=new_patient(value, birthDate="not-a-date")), 400)
    assert newest_history_entry(client) == before
    assert client.get(f"/Patient/{existing}").json()["meta"]["versionId"] == "1"


def test_conditional_update_if_match(client):
    value = uid()
    existing = put_patient(client, value)
    before = newest_history_entry(client)
    rejected(client.put(f"/Patient?{criteria(value)}", json=new_patient(value, gender="male"),
                        headers={"If-Match": 'W/"2"'}), 412)
    assert newest_history_entry(client) == before
    r = client.put(f"/Patient?{criteria(value)}", json=new_patient(value, gender="male"),
                   headers={"If-Match": 'W/"1"'})
    assert r.status_code == 200 and r.json()["id"] == existing and r.json()["meta"]["versionId"] == "2"


# ---------------------------------------------------------------- conditional delete


def test_conditional_delete_one_match(client):
    value = uid()
    pid = put_patient(client, value)
    r = client.delete(f"/Patient?{criteria(value)}")
    assert r.status_code in (200, 204), r.text
    gone = client.get(f"/Patient/{pid}")
    assert gone.status_code == 410
    assert find(client, value) == set()
    assert client.get(f"/Patient/{pid}/_history").json()["total"] == 2


def test_conditional_delete_several_matches_deletes_them_all(client):
    value = uid()
    other = put_patient(client, uid())
    pids = [put_patient(client, value) for _ in range(3)]
    r = client.delete(f"/Patient?{criteria(value)}")
    assert r.status_code in (200, 204), r.text
    for pid in pids:
        assert client.get(f"/Patient/{pid}").status_code == 410
    assert client.get(f"/Patient/{other}").status_code == 200
    assert find(client, value) == set()


def test_conditional_delete_without_a_match_changes_nothing(client):
    before = newest_history_entry(client)
    r = client.delete(f"/Patient?{criteria(uid())}")
    assert r.status_code in (200, 204), r.text
    assert newest_history_entry(client) == before


def test_conditional_delete_prefer_minimal_is_204(client):
    value = uid()
    pid = put_patient(client, value)
    r = client.delete(f"/Patient?{criteria(value)}", headers={"Prefer": "return=minimal"})
    assert r.status_code == 204 and r.content == b""
    assert client.get(f"/Patient/{pid}").status_code == 410


def test_conditional_delete_with_bad_criteria_is_400_and_deletes_nothing(client):
    before = newest_history_entry(client)
    rejected(client.delete("/Patient?no-such-parameter=1"), 400)
    assert newest_history_entry(client) == before


def test_conditional_delete_over_the_limit_is_412_and_deletes_nothing(client):
    # FHIR_CONDITIONAL_DELETE_MAX defaults to 100; R4 lets a server refuse a delete matching many with 412
    value = uid()
    entries = [{"resource": new_patient(value), "request": {"method": "POST", "url": "Patient"}}
               for _ in range(101)]
    r = client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                    headers={"Prefer": "return=minimal"})
    assert r.status_code == 200, r.text
    before = newest_history_entry(client)
    rejected(client.delete(f"/Patient?{criteria(value)}"), 412)
    assert newest_history_entry(client) == before
    assert len(find(client, value)) == 101


def test_capability_statement_declares_conditional_interactions(client):
    resources = {r["type"]: r for r in client.get("/metadata").json()["rest"][0]["resource"]}
    patient = resources["Patient"]
    assert patient.get("conditionalCreate") is True
    assert patient.get("conditionalUpdate") is True
    # it deletes every match (up to a limit), which R4 calls "multiple"
    assert patient.get("conditionalDelete") == "multiple"
