"""Concurrent writers on one resource, through real HTTP on both backends: no write is lost."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
from conftest import on_every_layout

pytestmark = on_every_layout("server", scope="session")


def _put(base: str, path: str, body: dict, headers: dict | None = None) -> httpx.Response:
    with httpx.Client(base_url=base, timeout=60) as http:
        return http.put(path, json=body, headers={"Content-Type": "application/fhir+json", **(headers or {})})


def test_concurrent_if_match_updates_have_one_winner(client, server):
    rid = client.post("/Patient", json={"resourceType": "Patient", "active": True}).json()["id"]
    bodies = [{"resourceType": "Patient", "id": rid, "name": [{"family": f"Writer{i}"}]} for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda b: _put(server.base_url, f"/Patient/{rid}", b, {"If-Match": 'W/"1"'}),
                                  bodies))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1 and set(statuses) <= {200, 412}, statuses
    winner = next(r for r in responses if r.status_code == 200).json()
    history = client.get(f"/Patient/{rid}/_history").json()
    assert history["total"] == 2  # the original and exactly one update
    assert client.get(f"/Patient/{rid}").json()["name"] == winner["name"]


def test_concurrent_updates_without_if_match_all_become_versions(client, server):
    rid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    bodies = [{"resourceType": "Patient", "id": rid, "name": [{"family": f"Writer{i}"}]} for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda b: _put(server.base_url, f"/Patient/{rid}", b), bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    versions = sorted(int(r.json()["meta"]["versionId"]) for r in responses)
    assert versions == list(range(2, 10))  # every write got its own version: none lost
    assert client.get(f"/Patient/{rid}/_history").json()["total"] == 9


def test_concurrent_create_on_update_of_one_new_id(client, server):
    rid = f"new-{uuid.uuid4().hex[:10]}"
    body = {"resourceType": "Patient", "id": rid, "gender": "female"}
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: _put(server.base_url, f"/Patient/{rid}", body), range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 1 and statuses.count(200) == 5, [r.text for r in responses]
    assert client.get(f"/Patient/{rid}/_history").json()["total"] == 6
