"""ETags, If-Match, conditional reads and Prefer, exactly as the FHIR spec describes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from conftest import newest_history_entry, on_every_layout

pytestmark = on_every_layout("server", scope="session")


def _patient(client, **extra) -> dict:
    return client.post("/Patient", json={"resourceType": "Patient", **extra}).json()


def test_if_match_accepts_current_version(client):
    p = _patient(client)
    r = client.put(f"/Patient/{p['id']}", json={**p, "active": True}, headers={"If-Match": 'W/"1"'})
    assert r.status_code == 200
    assert r.headers["etag"] == 'W/"2"'


def test_if_match_mismatch_is_412_and_changes_nothing(client):
    p = _patient(client, active=True)
    before = newest_history_entry(client)
    r = client.put(f"/Patient/{p['id']}", json={**p, "active": False}, headers={"If-Match": 'W/"7"'})
    assert r.status_code == 412
    assert r.json()["issue"][0]["code"] == "conflict"
    assert newest_history_entry(client) == before
    assert client.get(f"/Patient/{p['id']}").json()["active"] is True


def test_if_match_on_delete(client):
    p = _patient(client)
    assert client.delete(f"/Patient/{p['id']}", headers={"If-Match": 'W/"2"'}).status_code == 412
    assert client.get(f"/Patient/{p['id']}").status_code == 200
    assert client.delete(f"/Patient/{p['id']}", headers={"If-Match": 'W/"1"'}).status_code == 200


def test_if_match_malformed_is_400(client):
    p = _patient(client)
    r = client.put(f"/Patient/{p['id']}", json=p, headers={"If-Match": "banana"})
    assert r.status_code == 400
    assert "If-Match" in r.json()["issue"][0]["diagnostics"]


def test_if_match_on_missing_resource_is_412(client):
    r = client.put("/Patient/not-there-yet-412", json={"resourceType": "Patient", "id": "not-there-yet-412"},
                   headers={"If-Match": 'W/"1"'})
    assert r.status_code == 412
    assert client.get("/Patient/not-there-yet-412").status_code == 404


def test_if_none_match_gives_304(client):
    p = _patient(client)
    r = client.get(f"/Patient/{p['id']}", headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 304 and r.content == b""
    assert r.headers["etag"] == 'W/"1"'
    assert client.get(f"/Patient/{p['id']}", headers={"If-None-Match": 'W/"0"'}).status_code == 200
    assert client.get(f"/Patient/{p['id']}", headers={"If-None-Match": "*"}).status_code == 304


def test_if_modified_since(client):
    p = _patient(client)
    future = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert client.get(f"/Patient/{p['id']}", headers={"If-Modified-Since": future}).status_code == 304
    assert client.get(f"/Patient/{p['id']}", headers={"If-Modified-Since": past}).status_code == 200
    assert client.get(f"/Patient/{p['id']}", headers={"If-Modified-Since": "not a date"}).status_code == 200


def test_prefer_return(client):
    body = {"resourceType": "Patient", "gender": "male"}
    minimal = client.post("/Patient", json=body, headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["location"] and minimal.headers["etag"] == 'W/"1"'
    outcome = client.post("/Patient", json=body, headers={"Prefer": "return=OperationOutcome"})
    assert outcome.status_code == 201
    assert outcome.json()["resourceType"] == "OperationOutcome"
    assert outcome.json()["issue"][0]["severity"] == "information"
    full = client.post("/Patient", json=body, headers={"Prefer": "return=representation"})
    assert full.json()["resourceType"] == "Patient"
    rid = full.json()["id"]
    upd = client.put(f"/Patient/{rid}", json={**full.json(), "gender": "other"}, headers={"Prefer": "return=minimal"})
    assert upd.status_code == 200 and upd.content == b""
