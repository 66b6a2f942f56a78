"""Every interaction tried over HTTP with real tokens of each scope kind (patient/, user/, system/, v1
and v2, with and without a search restriction): exactly the allowed ones succeed, the others get 403,
searches and includes only ever show the token's own patient, and every access and refusal is an
AuditEvent."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import websockets
from smart_auth import AuthServer, auth_server_for, code_flow, oauth_client
from websockets.exceptions import InvalidStatus

VITALS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
CATEGORY = {"vital-signs": VITALS, "laboratory": "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request):
    for server in auth_server_for(request):
        system = server.system_token()
        http = httpx.Client(base_url=server.base, timeout=30, headers={"Authorization": f"Bearer {system}"})
        ids = {"org": http.post("/Organization", json={"resourceType": "Organization", "name": "Dongcun"}).json()["id"]}
        for family, pid in server.patients.items():
            for category, token in CATEGORY.items():
                system_url, code = token.split("|")
                answer = http.post("/Observation", json={
                    "resourceType": "Observation", "status": "final",
                    "category": [{"coding": [{"system": system_url, "code": code}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": f"Patient/{pid}"}, "valueQuantity": {"value": 70}})
                assert answer.status_code == 201, answer.text
                ids[f"{family}-{category}"] = answer.json()["id"]
        http.close()
        yield server, ids


def patient_token(server: AuthServer, scope: str, patient: str) -> str:
    app, _ = server.add_client("public", f"launch/patient {scope}")
    token, _ = code_flow(server, oauth_client(server, app.client_id, f"launch/patient {scope}"), patient=patient)
    return token["access_token"]


def user_token(server: AuthServer, scope: str, username: str = "dr.li") -> str:
    app, _ = server.add_client("public", scope)
    token, _ = code_flow(server, oauth_client(server, app.client_id, scope), username=username)
    return token["access_token"]


def tokens(server: AuthServer) -> dict[str, str]:
    wang = server.patients["Wang"]
    return {
        "patient/Observation.rs": patient_token(server, "patient/Observation.rs patient/Patient.r", wang),
        "patient/*.read (v1)": patient_token(server, "patient/*.read", wang),
        "patient/*.cruds": patient_token(server, "patient/*.cruds", wang),
        "patient vitals only": patient_token(server, f"patient/Observation.rs?category={VITALS}", wang),
        "user/Observation.rs": user_token(server, "user/Observation.rs"),
        "user/*.rs as Patient user": user_token(server, "user/*.rs", username="wang.fang"),
        "system/Observation.read": server.system_token("system/Observation.read"),
        "system/*.cruds": server.system_token("system/*.cruds"),
    }


def interactions(ids: dict[str, str], patients: dict[str, str]) -> dict[str, tuple]:
    wang, zhao = patients["Wang"], patients["Zhao"]

    def observation(pid: str) -> dict:
        return {"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
                "subject": {"reference": f"Patient/{pid}"}}

    return {
        "read own vitals": ("GET", f"/Observation/{ids['Wang-vital-signs']}", None),
        "read own lab": ("GET", f"/Observation/{ids['Wang-laboratory']}", None),
        "read other's vitals": ("GET", f"/Observation/{ids['Zhao-vital-signs']}", None),
        "vread other's vitals": ("GET", f"/Observation/{ids['Zhao-vital-signs']}/_history/1", None),
        "history of other's vitals": ("GET", f"/Observation/{ids['Zhao-vital-signs']}/_history", None),
        "read own Patient": ("GET", f"/Patient/{wang}", None),
        "read other Patient": ("GET", f"/Patient/{zhao}", None),
        "read Organization": ("GET", f"/Organization/{ids['org']}", None),
        "search Observation": ("GET", "/Observation", None),
        "create own Observation": ("POST", "/Observation", observation(wang)),
        "create other's Observation": ("POST", "/Observation", observation(zhao)),
        "delete other's lab": ("DELETE", f"/Observation/{ids['Zhao-laboratory']}", None),
        "create Organization": ("POST", "/Organization", {"resourceType": "Organization", "name": "x"}),
    }


# Which interactions each token may do; every other one must be refused (403).
ALLOWED = {
    "patient/Observation.rs": {"read own vitals", "read own lab", "read own Patient", "search Observation"},
    "patient/*.read (v1)": {"read own vitals", "read own lab", "read own Patient", "read Organization",
                            "search Observation"},
    "patient/*.cruds": {"read own vitals", "read own lab", "read own Patient", "read Organization",
                        "search Observation", "create own Observation"},
    "patient vitals only": {"read own vitals", "search Observation"},
    "user/Observation.rs": {"read own vitals", "read own lab", "read other's vitals", "vread other's vitals",
                            "history of other's vitals", "search Observation"},
    "user/*.rs as Patient user": {"read own vitals", "read own lab", "read own Patient", "read Organization",
                                  "search Observation"},
    "system/Observation.read": {"read own vitals", "read own lab", "read other's vitals", "vread other's vitals",
                                "history of other's vitals", "search Observation"},
    "system/*.cruds": {"read own vitals", "read own lab", "read other's vitals", "vread other's vitals",
                       "history of other's vitals", "read own Patient", "read other Patient", "read Organization",
                       "search Observation", "create own Observation", "create other's Observation",
                       "delete other's lab", "create Organization"},
}
CONFINED_TO_WANG = {"patient/Observation.rs", "patient/*.read (v1)", "patient/*.cruds", "patient vitals only",
                    "user/*.rs as Patient user"}


def test_every_interaction_with_every_kind_of_token(world):
    server, ids = world
    table = interactions(ids, server.patients)
    wang = server.patients["Wang"]
    for kind, token in tokens(server).items():
        with httpx.Client(base_url=server.base, timeout=30, headers={"Authorization": f"Bearer {token}",
                                                                     "Content-Type": "application/fhir+json"}) as http:
            for name, (method, path, body) in table.items():
                answer = http.request(method, path, json=body)
                if name in ALLOWED[kind]:
                    assert answer.status_code < 300, f"{kind}: {name} refused: {answer.text}"
                else:
                    assert answer.status_code == 403, f"{kind}: {name} gave {answer.status_code}: {answer.text}"
                    assert answer.json()["issue"][0]["code"] == "forbidden"
            if kind in CONFINED_TO_WANG:  # nothing of another patient, also not through includes
                bundle = http.get("/Observation", params={"_include": "Observation:subject",
                                                          "_count": 100}).json()
                subjects = {e["resource"]["subject"]["reference"] for e in bundle.get("entry", [])
                            if e["resource"]["resourceType"] == "Observation"}
                assert subjects == {f"Patient/{wang}"}, (kind, subjects)
                assert all(e["resource"]["id"] == wang for e in bundle["entry"]
                           if e["resource"]["resourceType"] == "Patient")


def test_batch_entries_are_each_checked_and_a_transaction_is_all_or_nothing(world):
    server, ids = world
    token = patient_token(server, "patient/Observation.cruds", server.patients["Wang"])
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Observation/{ids['Wang-vital-signs']}"}},
        {"request": {"method": "GET", "url": f"Observation/{ids['Zhao-vital-signs']}"}},
        {"request": {"method": "GET", "url": "Observation?_count=50"}}]}
    answer = httpx.post(server.base + "/", json=batch, headers=headers, timeout=30).json()
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses[0].startswith("200") and statuses[1].startswith("403") and statuses[2].startswith("200")
    found = answer["entry"][2]["resource"]["entry"]
    assert {e["resource"]["subject"]["reference"] for e in found} == {f"Patient/{server.patients['Wang']}"}
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "tx-own"},
                      "subject": {"reference": f"Patient/{server.patients['Wang']}"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "tx-other"},
                      "subject": {"reference": f"Patient/{server.patients['Zhao']}"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    refused = httpx.post(server.base + "/", json=transaction, headers=headers, timeout=30)
    assert refused.status_code == 403
    system = {"Authorization": f"Bearer {server.system_token()}"}
    left = httpx.get(server.base + "/Observation", params={"code:text": "tx-own", "_summary": "count"},
                     headers=system).json()
    assert left["total"] == 0


def test_a_patient_context_token_cannot_subscribe_past_its_compartment(world):
    server, _ = world
    token = patient_token(server, "patient/*.cruds", server.patients["Wang"])
    answer = httpx.post(server.base + "/Subscription", headers={"Authorization": f"Bearer {token}",
                                                                "Content-Type": "application/fhir+json"},
                        json={"resourceType": "Subscription", "status": "requested", "reason": "all vitals",
                              "criteria": "Observation?code=8867-4",
                              "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook",
                                          "payload": "application/fhir+json"}})
    assert answer.status_code == 403, answer.text


def test_accesses_and_refusals_are_audit_events(world):
    server, ids = world
    token = patient_token(server, "patient/Observation.rs", server.patients["Wang"])
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{server.base}/Observation/{ids['Wang-vital-signs']}",
                     headers=headers).status_code == 200
    assert httpx.get(f"{server.base}/Observation/{ids['Zhao-vital-signs']}", headers=headers).status_code == 403
    assert httpx.get(f"{server.base}/Observation/{ids['Zhao-vital-signs']}").status_code == 401
    system = {"Authorization": f"Bearer {server.system_token()}"}
    deadline = time.monotonic() + 15
    while True:  # the audit trail is written in the background, in batches
        events = [e["resource"] for e in httpx.get(server.base + "/AuditEvent", headers=system, params={
            "entity": f"Observation/{ids['Zhao-vital-signs']}", "_count": 100}, timeout=30).json().get("entry", [])]
        outcomes = sorted(e["outcome"] for e in events)
        if ("4" in outcomes and len([o for o in outcomes if o == "4"]) >= 2) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    refusals = [e for e in events if e["outcome"] == "4"]
    assert any("HTTP 403" in e["outcomeDesc"] and e["agent"][0]["who"] == {"reference": "Practitioner/dr-li"}
               for e in refusals), refusals
    assert any("HTTP 401" in e["outcomeDesc"] and e["agent"][0]["name"] == "unauthenticated client"
               for e in refusals), refusals
    granted = httpx.get(server.base + "/AuditEvent", headers=system, params={
        "entity": f"Observation/{ids['Wang-vital-signs']}", "outcome": "0"}, timeout=30).json()
    assert granted.get("total", len(granted.get("entry", []))) >= 1


def websocket_subscription(server: AuthServer, system: str) -> str:
    """A websocket Subscription to pulse rates, made with a backend token; its id."""
    answer = httpx.post(server.base + "/Subscription", headers={"Authorization": f"Bearer {system}"}, json={
        "resourceType": "Subscription", "status": "requested", "reason": "vitals to the ward screen",
        "criteria": "Observation?code=8867-4", "channel": {"type": "websocket"}})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def test_a_websocket_binds_only_with_a_token_that_may_read_the_subscription(world):
    server, _ = world
    system = server.system_token()
    sub_id = websocket_subscription(server, system)
    url = server.base.replace("http://", "ws://") + "/websocket"
    wang = patient_token(server, "patient/*.cruds", server.patients["Wang"])

    async def bind(target: str, headers: dict[str, str] | None = None) -> str:
        async with websockets.connect(target, additional_headers=headers or {}) as socket:
            await socket.send(f"bind {sub_id}")
            return await asyncio.wait_for(socket.recv(), 10)

    async def refused(target: str, headers: dict[str, str] | None = None) -> int:
        with pytest.raises(InvalidStatus) as raised:
            await bind(target, headers)
        return raised.value.response.status_code

    assert asyncio.run(refused(url)) == 403  # no token
    assert asyncio.run(refused(url, {"Authorization": "Bearer not-a-token"})) == 403
    assert asyncio.run(refused(f"{url}?access_token=not-a-token")) == 403
    assert asyncio.run(bind(url, {"Authorization": f"Bearer {system}"})) == f"bound {sub_id}"
    assert asyncio.run(bind(f"{url}?access_token={system}")) == f"bound {sub_id}"  # as a browser sends it
    log = server.server.log_path.read_text()
    assert "access_token=***" in log and system not in log  # the server logs the URL, never the token in it
    # a patient's app may read the Subscription, but not follow one that watches every patient
    answer = asyncio.run(bind(url, {"Authorization": f"Bearer {wang}"}))
    assert answer.startswith(f"error {sub_id} may not be followed with this token: Read of Observation"), answer
    reader = server.system_token("system/Patient.read")  # may not read the Subscription at all
    answer = asyncio.run(bind(url, {"Authorization": f"Bearer {reader}"}))
    assert answer == f"error {sub_id} is not a known Subscription"


def test_a_bound_websocket_loses_its_subscriptions_with_its_token(world):
    server, _ = world
    sub_id = websocket_subscription(server, server.system_token())
    app, _ = server.add_client("public", "user/*.cruds")
    token, _ = code_flow(server, oauth_client(server, app.client_id, "user/*.cruds"))

    async def bind_revoke_bind() -> tuple[str, str]:
        url = server.base.replace("http://", "ws://") + "/websocket"
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        async with websockets.connect(url, additional_headers=headers) as socket:
            await socket.send(f"bind {sub_id}")
            first = await asyncio.wait_for(socket.recv(), 10)
            revoked = await asyncio.to_thread(httpx.post, server.base + "/auth/revoke",
                                              data={"token": token["access_token"], "client_id": app.client_id})
            assert revoked.status_code == 200, revoked.text
            await socket.send(f"bind {sub_id}")
            return first, await asyncio.wait_for(socket.recv(), 10)

    first, second = asyncio.run(bind_revoke_bind())
    assert first == f"bound {sub_id}"
    assert second == f"error {sub_id} may not be followed: the access token is no longer valid"

