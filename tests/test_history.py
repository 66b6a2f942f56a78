"""History at instance, type and system level: Bundle type history, _since, _count and paging."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from conftest import on_every_layout
from httpx import QueryParams

pytestmark = on_every_layout("server", scope="session")


def _new_type_resources(client, n: int) -> tuple[str, list[str]]:
    """n resources of one type that no other test writes, so type history is ours alone."""
    ids = []
    for i in range(n):
        r = client.post("/DeviceMetric", json={"resourceType": "DeviceMetric", "category": "measurement",
                                               "type": {"text": f"bench-{i}"}})
        ids.append(r.json()["id"])
    return "DeviceMetric", ids


def test_instance_history_lists_every_version_newest_first(client, server):
    rid = client.post("/Patient", json={"resourceType": "Patient", "active": True}).json()["id"]
    client.put(f"/Patient/{rid}", json={"resourceType": "Patient", "id": rid, "active": False})
    client.delete(f"/Patient/{rid}")
    r = client.get(f"/Patient/{rid}/_history")
    assert r.status_code == 200
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "history"
    assert bundle["total"] == 3
    assert [e["request"]["method"] for e in bundle["entry"]] == ["DELETE", "PUT", "POST"]
    assert [e["response"]["etag"] for e in bundle["entry"]] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert "resource" not in bundle["entry"][0]  # a deletion has no resource
    assert bundle["entry"][1]["resource"]["active"] is False
    assert bundle["entry"][2]["request"]["url"] == "Patient"
    assert bundle["entry"][1]["request"]["url"] == f"Patient/{rid}"
    assert bundle["entry"][0]["fullUrl"] == f"{server.base_url}/Patient/{rid}"
    assert bundle["link"][0]["relation"] == "self"


def test_history_of_unknown_resource_is_404(client):
    assert client.get("/Patient/nobody-here/_history").status_code == 404


def test_paging_visits_every_version_once(client):
    rtype, ids = _new_type_resources(client, 7)
    seen = []
    url = f"/{rtype}/_history?_count=3"
    pages = 0
    while url:
        bundle = client.get(url).json()
        pages += 1
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        url = nxt[0] if nxt else None
        if url:
            assert QueryParams(url.split("?", 1)[1])["_count"] == "3"
    assert pages == 3
    assert sorted(seen) == sorted(ids)
    assert seen == list(reversed(ids))  # newest first


def test_paging_is_stable_while_data_changes(client):
    rtype, ids = _new_type_resources(client, 4)
    first = client.get(f"/{rtype}/_history", params={"_count": 2}).json()
    next_url = [link["url"] for link in first["link"] if link["relation"] == "next"][0]
    client.post(f"/{rtype}", json={"resourceType": rtype, "category": "setting", "type": {"text": "late"}})
    second = client.get(next_url).json()
    assert [e["resource"]["id"] for e in second["entry"]] == [ids[1], ids[0]]


def test_since_filters_versions(client):
    rid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    time.sleep(0.05)
    cut = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    time.sleep(0.05)
    client.put(f"/Patient/{rid}", json={"resourceType": "Patient", "id": rid, "active": True})
    bundle = client.get(f"/Patient/{rid}/_history", params={"_since": cut}).json()
    assert [e["response"]["etag"] for e in bundle["entry"]] == ['W/"2"']
    system = client.get("/_history", params={"_since": cut, "_count": 1000}).json()
    assert any(e["fullUrl"].endswith(f"/Patient/{rid}") for e in system["entry"])
    assert all(e["response"]["lastModified"] >= cut.replace("Z", "+00:00") for e in system["entry"])


def test_system_history_includes_all_types(client):
    marker = uuid.uuid4().hex
    a = client.post("/Organization", json={"resourceType": "Organization", "name": f"Clinic {marker}"}).json()
    b = client.post("/Practitioner", json={"resourceType": "Practitioner",
                                           "name": [{"family": marker}]}).json()
    entries = client.get("/_history", params={"_count": 2}).json()["entry"]
    assert [e["resource"]["id"] for e in entries] == [b["id"], a["id"]]


def test_count_zero_and_bad_parameters(client):
    rtype, _ = _new_type_resources(client, 1)
    empty = client.get(f"/{rtype}/_history", params={"_count": 0}).json()
    assert "entry" not in empty
    for params in ({"_since": "yesterday"}, {"_since": "2026-01-01"}, {"_count": "-1"}, {"_count": "ten"},
                   {"_cursor": "x"}):
        r = client.get("/_history", params=params)
        assert r.status_code == 400, params
        assert r.json()["issue"][0]["expression"] == [next(iter(params))]


def test_count_is_capped(client):
    bundle = client.get("/_history", params={"_count": 100000}).json()
    nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
    if nxt:
        assert "_count=1000" in nxt[0]
