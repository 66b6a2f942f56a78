"""Subscriptions the server cannot honour are refused before anything is stored: the status, an
OperationOutcome naming the element, and an unchanged store (REST create and update, transactions)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
import websockets

GOOD = {"resourceType": "Subscription", "status": "requested", "reason": "critical ECGs",
        "criteria": "Observation?code=http://loinc.org|8884-9",
        "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "payload": "application/fhir+json"}}


def subscription(**changes) -> dict:
    channel = {**GOOD["channel"], **changes.pop("channel", {})}
    return {**GOOD, **changes, "channel": {k: v for k, v in channel.items() if v is not None}}


def rejected(response, status: int, expression: str, words: str) -> None:
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["severity"] == "error" and issue["expression"] == [expression]
    assert words in issue["diagnostics"], issue["diagnostics"]


BAD = [
    (subscription(criteria="Observatio?code=8884-9"), "Subscription.criteria", "'Observatio' is not one"),
    (subscription(criteria="Observation?colour=red"), "Subscription.criteria",
     "Unknown search parameter 'colour' for Observation"),
    (subscription(criteria="Observation?date=yesterday"), "Subscription.criteria",
     "Invalid value for search parameter 'date'"),
    (subscription(criteria="Observation?code=8884-9&_sort=date"), "Subscription.criteria",
     "may not use the result parameter '_sort'"),
    (subscription(channel={"type": "email", "endpoint": "mailto:ecg@county.example"}), "Subscription.channel.type",
     "'email' is not supported"),
    (subscription(channel={"endpoint": None}), "Subscription.channel.endpoint", "is not an absolute http(s) URL"),
    (subscription(channel={"endpoint": "ftp://county.example/hook"}), "Subscription.channel.endpoint",
     "'ftp://county.example/hook' is not an absolute http(s) URL"),
    (subscription(channel={"payload": "application/fhir+xml"}), "Subscription.channel.payload",
     "'application/fhir+xml' is not supported"),
    (subscription(channel={"header": ["Authorization: Bearer x", "no colon here"]}), "Subscription.channel.header[1]",
     "'no colon here' is not 'Name: value'"),
]
IDS = ["unknown-type", "unknown-parameter", "bad-value", "result-parameter", "email-channel", "no-endpoint",
       "ftp-endpoint", "xml-payload", "bad-header"]


@pytest.mark.parametrize(("body", "expression", "words"), BAD, ids=IDS)
def test_create_is_refused(client, unchanged, body, expression, words):
    rejected(client.post("/Subscription", json=body), 422, expression, words)


def test_missing_criteria_is_refused(client, unchanged):
    body = {k: v for k, v in GOOD.items() if k != "criteria"}
    response = client.post("/Subscription", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["issue"][0]["expression"] == ["Subscription.criteria"]


@pytest.fixture
def stored(client) -> Iterator[dict]:
    """An active subscription that nothing else in the session matches (the server activates it first,
    so that the test's `unchanged` sees no write of the server's), deleted afterwards."""
    response = client.post("/Subscription", json=subscription(criteria=f"Observation?code=urn:test|{uuid.uuid4()}"))
    assert response.status_code == 201, response.text
    deadline = time.monotonic() + 20
    while (current := client.get(f"/Subscription/{response.json()['id']}").json())["status"] != "active":
        assert time.monotonic() < deadline, current
        time.sleep(0.05)
    yield current
    client.delete(f"/Subscription/{current['id']}")


def test_update_is_refused_and_the_subscription_kept(client, stored, unchanged):
    body = {**stored, "criteria": "Observation?colour=red"}
    rejected(client.put(f"/Subscription/{stored['id']}", json=body), 422, "Subscription.criteria",
             "Unknown search parameter 'colour'")
    assert client.get(f"/Subscription/{stored['id']}").json()["criteria"] == stored["criteria"]


def test_a_transaction_with_a_bad_subscription_stores_nothing(client, unchanged):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "male"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": subscription(criteria="Observation?colour=red"),
         "request": {"method": "POST", "url": "Subscription"}}]}
    response = client.post("/", json=bundle)
    assert response.status_code == 422, response.text
    issue = response.json()["issue"][0]
    assert "Subscription.criteria: Unknown search parameter 'colour'" in issue["diagnostics"]
    assert issue["expression"] == ["Bundle.entry[1].resource.criteria"]


def test_websocket_bind_is_refused_for_what_is_not_a_websocket_subscription(server, stored):
    url = server.base_url.replace("http://", "ws://") + "/websocket"

    async def client() -> list[str]:
        async with websockets.connect(url) as socket:
            answers = []
            for message in (f"bind {stored['id']}", "subscribe everything", "bind"):
                await socket.send(message)
                answers.append(await asyncio.wait_for(socket.recv(), 10))
            return answers

    assert asyncio.run(client()) == [
        f"error {stored['id']} is not a websocket subscription",
        "error subscribe everything: expected 'bind <Subscription id>'",
        "error bind: expected 'bind <Subscription id>'"]
