"""R4 Subscriptions over real HTTP on both backends: rest-hook notifications to real receivers started
here, websocket pings to a real websocket client, status kept by the server, retries, a receiver that
is down at first, a server killed between a write and its delivery, several workers, and the writes of
ECG triage and the bulk loader reaching subscribers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import websockets
from conftest import BACKENDS, _create_database, start_server, stop_server
from subscription_receivers import Receiver
from test_ecg_operation import ecg_observation, new_patient, parameters, values

FAST = {"FHIR_SUBSCRIPTION_POLL_S": "0.1", "FHIR_SUBSCRIPTION_RETRY_BASE_S": "0.1",
        "FHIR_SUBSCRIPTION_RETRY_MAX_S": "0.4", "FHIR_SUBSCRIPTION_MAX_ATTEMPTS": "3",
        "FHIR_SUBSCRIPTION_TIMEOUT_S": "2"}
LOINC = "http://loinc.org"
CRITICAL = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation|AA"


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    return request.param


def new_database(request, backend: str) -> dict[str, str]:
    """An empty database of its own (SQLite: the fresh data dir of the server started on it)."""
    if backend == "sqlite":
        return {"FHIR_DATABASE_URL": ""}
    base = request.getfixturevalue("postgres_url")
    name = f"fhir_{uuid.uuid4().hex[:12]}"
    asyncio.run(_create_database(base, name))
    return {"FHIR_DATABASE_URL": base.rsplit("/", 1)[0] + f"/{name}"}


@pytest.fixture
def database(request, backend) -> dict[str, str]:
    return new_database(request, backend)


@pytest.fixture(scope="module")
def sub_server(request, backend) -> Iterator:
    database = new_database(request, backend)
    running = start_server({**database, **FAST})
    running.database_url = database["FHIR_DATABASE_URL"]
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def http(sub_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sub_server.base_url, timeout=30,
                      headers={"Content-Type": "application/fhir+json"}) as client:
        yield client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def observation(code: str = "8867-4", status: str = "final", **extra) -> dict:
    return {"resourceType": "Observation", "status": status,
            "code": {"coding": [{"system": LOINC, "code": code}]}, **extra}


def subscribe(http: httpx.Client, criteria: str, endpoint: str | None = None, *, channel: str = "rest-hook",
              payload: str | None = "application/fhir+json", headers: list[str] | None = None, **extra) -> dict:
    chan = {"type": channel}
    if endpoint:
        chan["endpoint"] = endpoint
    if payload:
        chan["payload"] = payload
    if headers:
        chan["header"] = headers
    response = http.post("/Subscription", json={"resourceType": "Subscription", "status": "requested",
                                                 "reason": "test", "criteria": criteria, "channel": chan, **extra})
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "requested"
    return response.json()


def wait_status(http: httpx.Client, subscription_id: str, status: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        current = http.get(f"/Subscription/{subscription_id}").json()
        if current["status"] == status:
            return current
        assert time.monotonic() < deadline, f"status stayed {current['status']}, not {status}: {current}"
        time.sleep(0.05)


def active(http: httpx.Client, *args, **kwargs) -> dict:
    return wait_status(http, subscribe(http, *args, **kwargs)["id"], "active")


def unique_code() -> str:
    return f"x-{time.monotonic_ns()}"


# ---- rest-hook ----

def test_matching_write_notifies_with_the_resource_and_headers(http, receiver):
    code = unique_code()
    sub = active(http, f"Observation?code={LOINC}|{code}", receiver.url,
                 headers=["Authorization: Bearer county-secret", "X-Alliance: village-7"])
    assert "error" not in sub
    created = http.post("/Observation", json=observation(code)).json()
    got = receiver.wait_for(1)[0]
    assert got.path == "/hook"
    assert got.headers["Authorization"] == "Bearer county-secret"
    assert got.headers["X-Alliance"] == "village-7"
    assert got.headers["Content-Type"] == "application/fhir+json"
    body = json.loads(got.body)
    assert body["id"] == created["id"] and body["meta"]["versionId"] == "1"
    assert body["code"]["coding"][0]["code"] == code


def test_non_matching_write_does_not_notify(http, receiver):
    code = unique_code()
    active(http, f"Observation?code={LOINC}|{code}&status=final", receiver.url)
    http.post("/Observation", json=observation(code, status="preliminary"))  # wrong status
    http.post("/Observation", json=observation(unique_code()))  # wrong code
    http.post("/Patient", json={"resourceType": "Patient"})  # another type
    sentinel = http.post("/Observation", json=observation(code)).json()
    got = receiver.wait_for(1)
    time.sleep(0.3)  # the dispatcher has long passed the earlier writes: nothing else may come
    assert [json.loads(g.body)["id"] for g in receiver.received] == [sentinel["id"]] == [json.loads(got[0].body)["id"]]


def test_without_payload_the_notification_is_an_empty_post(http, receiver):
    code = unique_code()
    active(http, f"Observation?code={LOINC}|{code}", receiver.url, payload=None)
    http.post("/Observation", json=observation(code))
    got = receiver.wait_for(1)[0]
    assert got.body == b"" and "Content-Type" not in got.headers


def test_updates_notify_and_a_deletion_does_not(http, receiver):
    code = unique_code()
    active(http, f"Observation?code={LOINC}|{code}", receiver.url)
    created = http.post("/Observation", json=observation(code)).json()
    http.put(f"/Observation/{created['id']}", json={**observation(code, status="amended"), "id": created["id"]})
    http.delete(f"/Observation/{created['id']}")
    sentinel = http.post("/Observation", json=observation(code)).json()
    got = receiver.wait_for(3)
    time.sleep(0.3)
    bodies = [json.loads(g.body) for g in receiver.received]
    assert [(b["id"], b["meta"]["versionId"]) for b in bodies] == [
        (created["id"], "1"), (created["id"], "2"), (sentinel["id"], "1")]
    assert bodies[1]["status"] == "amended" and len(got) == 3


def test_a_receiver_down_at_first_gets_the_notification_when_it_comes_back(http, sub_server):
    late = Receiver()  # its port is reserved, nothing listens yet
    code = unique_code()
    sub = active(http, f"Observation?code={LOINC}|{code}", late.url)
    created = http.post("/Observation", json=observation(code)).json()
    deadline = time.monotonic() + 20
    while "subscription notification failed" not in sub_server.log_path.read_text():
        assert time.monotonic() < deadline, "no delivery was attempted"
        time.sleep(0.05)
    late.start()
    try:
        got = late.wait_for(1)
        assert json.loads(got[0].body)["id"] == created["id"]
        assert http.get(f"/Subscription/{sub['id']}").json()["status"] in ("active", "error")
    finally:
        late.stop()


def test_repeated_failures_set_error_and_a_later_success_active(http):
    failing = Receiver(status=503).start()
    try:
        code = unique_code()
        sub = active(http, f"Observation?code={LOINC}|{code}", failing.url)
        created = http.post("/Observation", json=observation(code)).json()
        errored = wait_status(http, sub["id"], "error")
        assert len(failing.answered) >= 3  # FHIR_SUBSCRIPTION_MAX_ATTEMPTS
        assert errored["error"].startswith("Delivery failed 3 times; last: HTTP 503")
        failing.status = 200  # the receiver recovers: the notification still comes, the status is active again
        assert json.loads(failing.wait_for(1)[0].body)["id"] == created["id"]
        recovered = wait_status(http, sub["id"], "active")
        assert "error" not in recovered
    finally:
        failing.stop()


def test_off_and_ended_subscriptions_notify_nothing(http, receiver):
    code = unique_code()
    sub = active(http, f"Observation?code={LOINC}|{code}", receiver.url)
    off = http.put(f"/Subscription/{sub['id']}", json={**sub, "status": "off"})
    assert off.status_code == 200 and off.json()["status"] == "off"
    created = http.post("/Subscription", json={**sub, "id": None, "end": "2020-01-01T00:00:00Z"})
    assert created.status_code == 201 and created.json()["status"] == "off"  # ended already
    end = datetime.now(UTC) + timedelta(seconds=1)
    ending = active(http, f"Observation?code={LOINC}|{code}&status=amended", receiver.url,
                    end=end.isoformat(timespec="milliseconds"))
    assert wait_status(http, ending["id"], "off")["error"] == "The subscription's end has passed"
    assert datetime.now(UTC) >= end
    second = active(http, f"Observation?code={LOINC}|{code}&status=preliminary", receiver.url)
    http.post("/Observation", json=observation(code))
    http.post("/Observation", json=observation(code, status="amended"))
    marker = http.post("/Observation", json=observation(code, status="preliminary")).json()
    receiver.wait_for(1)
    time.sleep(0.3)
    assert [json.loads(g.body)["id"] for g in receiver.received] == [marker["id"]]
    assert http.get(f"/Subscription/{second['id']}").json()["status"] == "active"


def test_a_client_write_is_checked_again(http, receiver):
    sub = active(http, f"Observation?code={LOINC}|{unique_code()}", receiver.url)
    # a client may not declare its subscription active (or in error): the server checks it first
    again = http.put(f"/Subscription/{sub['id']}", json={**sub, "status": "active", "error": "nothing"})
    assert again.status_code == 200 and again.json()["status"] == "requested" and "error" not in again.json()
    assert wait_status(http, sub["id"], "active")["meta"]["versionId"] == str(int(again.json()["meta"]["versionId"])
                                                                              + 1)


def test_criteria_that_lose_their_search_parameter_put_the_subscription_in_error(http, receiver):
    code = f"ward{time.monotonic_ns()}"
    parameter = {"resourceType": "SearchParameter", "id": code, "name": code, "status": "active",
                 "url": f"http://alliance.example/fhir/sp/{code}", "description": "ward", "code": code,
                 "base": ["Observation"], "type": "string", "expression": "Observation.note.text"}
    assert http.put(f"/SearchParameter/{code}", json=parameter).status_code == 201
    sub = active(http, f"Observation?{code}=east", receiver.url)
    assert http.put(f"/SearchParameter/{code}", json={**parameter, "status": "retired"}).status_code == 200
    errored = wait_status(http, sub["id"], "error")
    assert errored["error"] == f"Subscription.criteria: Unknown search parameter '{code}' for Observation"


def test_the_version_written_is_judged_not_the_current_one(http, receiver, sub_server, tmp_path):
    """Two versions of one resource committed together (the loader writes an NDJSON unit in one
    transaction): the first matches the criteria, the second does not; only the first is notified."""
    code = unique_code()
    active(http, f"Observation?code={LOINC}|{code}&status=final", receiver.url)
    ndjson = tmp_path / "two-versions.ndjson"
    rid = f"twice-{code}"
    ndjson.write_text(json.dumps({**observation(code), "id": rid}) + "\n"
                      + json.dumps({**observation(code, status="amended"), "id": rid}) + "\n")
    env = {**os.environ, "FHIR_DATABASE_URL": sub_server.database_url}
    fhir = Path(sys.executable).parent / "fhir-server"
    done = subprocess.run([str(fhir), "load", "--workers", "1", "--data-dir", str(sub_server.data_dir), str(ndjson)],
                          env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert http.get(f"/Observation/{rid}").json()["meta"]["versionId"] == "2"
    sentinel = http.post("/Observation", json=observation(code)).json()
    receiver.wait_for(2)
    time.sleep(0.3)
    bodies = [json.loads(g.body) for g in receiver.received]
    assert [(b["id"], b["meta"]["versionId"], b["status"]) for b in bodies] == [
        (rid, "1", "final"), (sentinel["id"], "1", "final")]


# ---- ECG triage ----

def test_a_critical_ecg_triaged_with_persist_reaches_a_subscriber(http, receiver):
    # R4 has no Observation interpretation search parameter (R5 has): the alliance defines it
    defined = http.put("/SearchParameter/observation-interpretation", json={
        "resourceType": "SearchParameter", "id": "observation-interpretation", "name": "interpretation",
        "url": "http://alliance.example/fhir/sp/observation-interpretation", "status": "active",
        "description": "High, low, normal, critical ...", "code": "interpretation", "base": ["Observation"],
        "type": "token", "expression": "Observation.interpretation"})
    assert defined.status_code in (200, 201), defined.text
    active(http, f"Observation?code={LOINC}|8884-9&interpretation={CRITICAL}", receiver.url)
    patient = new_patient(http)
    response = http.post("/Observation/$ecg-triage",
                         json=parameters(ecg_observation("asystole", patient=patient, seed=3), persist=True))
    assert response.status_code == 200, response.text
    assert values(response.json(), "triage") == ["critical"]
    rhythm = json.loads(receiver.wait_for(1)[0].body)
    assert rhythm["subject"] == {"reference": f"Patient/{patient}"}
    assert rhythm["interpretation"][0]["coding"][0]["code"] == "AA"
    stored = [r for r in values(response.json(), "result")
              if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "8884-9"]
    assert [r["id"] for r in stored] == [rhythm["id"]]


# ---- websocket ----

def test_the_websocket_client_gets_its_ping(http):
    sub = active(http, f"Observation?code={LOINC}|{(code := unique_code())}", channel="websocket", payload=None)
    capability = http.get("/metadata").json()
    url = next(e["valueUri"] for e in capability["rest"][0]["extension"]
               if e["url"] == "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket")
    assert url == http.base_url.copy_with(scheme="ws", path="/websocket").__str__()

    async def client() -> list[str]:
        async with websockets.connect(url) as socket:
            await socket.send("bind no-such-subscription")
            refused = await asyncio.wait_for(socket.recv(), 10)
            await socket.send(f"bind {sub['id']}")
            bound = await asyncio.wait_for(socket.recv(), 10)
            await asyncio.to_thread(http.post, "/Observation", json=observation(code))
            ping = await asyncio.wait_for(socket.recv(), 10)
            return [refused, bound, ping]

    refused, bound, ping = asyncio.run(client())
    assert refused == "error no-such-subscription is not a known Subscription"
    assert bound == f"bound {sub['id']}"
    assert ping == f"ping {sub['id']}"


def test_pings_owed_while_no_client_was_bound_come_at_bind(http):
    code = unique_code()
    sub = active(http, f"Observation?code={LOINC}|{code}", channel="websocket", payload=None)
    http.post("/Observation", json=observation(code))
    url = http.base_url.copy_with(scheme="ws", path="/websocket").__str__()

    async def client() -> list[str]:
        async with websockets.connect(url) as socket:
            await socket.send(f"bind {sub['id']}")
            return [await asyncio.wait_for(socket.recv(), 10), await asyncio.wait_for(socket.recv(), 10)]

    assert asyncio.run(client()) == [f"bound {sub['id']}", f"ping {sub['id']}"]


# ---- durability and several workers ----

def test_a_server_killed_between_write_and_delivery_delivers_after_restart(database):
    late = Receiver()  # down while the server runs the first time
    first = start_server({**database, **FAST})
    data_dir = first.data_dir
    try:
        with httpx.Client(base_url=first.base_url, timeout=30) as http:
            code = unique_code()
            active(http, f"Observation?code={LOINC}|{code}", late.url)
            created = [http.post("/Observation", json=observation(code)).json()["id"] for _ in range(5)]
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=15)
    finally:
        if first.process.poll() is None:
            first.process.kill()
    late.start()
    second = start_server({**database, **FAST}, data_dir=data_dir)
    try:
        got = late.wait_for(5)
        assert sorted(json.loads(g.body)["id"] for g in got) == sorted(created)
        time.sleep(0.3)
        assert len(late.received) == 5
    finally:
        late.stop()
        stop_server(second)


def test_several_workers_deliver_each_notification_once(database, receiver):
    running = start_server({**database, **FAST}, workers=2)
    try:
        with httpx.Client(base_url=running.base_url, timeout=30) as http:
            code = unique_code()
            active(http, f"Observation?code={LOINC}|{code}", receiver.url)
            created = [http.post("/Observation", json=observation(code)).json()["id"] for _ in range(20)]
            got = receiver.wait_for(20)
            time.sleep(0.5)
            assert sorted(json.loads(g.body)["id"] for g in got) == sorted(created)
            assert len(receiver.received) == 20
    finally:
        stop_server(running)
