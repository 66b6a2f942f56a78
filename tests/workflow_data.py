"""Builders and checks shared by the alliance workflow tests."""

from __future__ import annotations

import random
import uuid

import httpx

from fhir_server.identifiers import HEALTH_CARD, RESIDENT_ID

_rng = random.Random()


def resident_id() -> str:
    """A fresh 18-character resident ID number (unique per call, so tests on a shared server never clash)."""
    return f"5301{uuid.uuid4().int % 10**14:014d}"


def resident(family: str = "王", given: str = "丽", *, rid: str | None = None, card: str | None = None,
             birth: str = "1960-05-04", gender: str = "female", phone: str | None = None, **fields) -> dict:
    identifiers = []
    if rid is not False:
        identifiers.append({"system": RESIDENT_ID, "value": rid or resident_id()})
    if card:
        identifiers.append({"system": HEALTH_CARD, "value": card})
    patient = {"resourceType": "Patient", "name": [{"family": family, "given": [given]}], "gender": gender,
               "birthDate": birth, **fields}
    if identifiers:
        patient["identifier"] = identifiers
    if phone:
        patient["telecom"] = [{"system": "phone", "value": phone}]
    return patient


def phone() -> str:
    return f"139{_rng.randrange(10**8):08d}"


def create(client: httpx.Client, resource: dict) -> dict:
    response = client.post(f"/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return response.json()


def parameters(*items: dict) -> dict:
    return {"resourceType": "Parameters", "parameter": list(items)}


def rejected(response: httpx.Response, status: int, expression: str, *words: str, code: str | None = None) -> dict:
    """The response is `status` with an error OperationOutcome naming `expression` and saying `words`."""
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["severity"] == "error"
    assert issue["expression"] == [expression], issue
    for word in words:
        assert word in issue["diagnostics"], issue["diagnostics"]
    if code:
        assert issue["code"] == code
    return issue


def transaction(*entries: tuple[str, str, dict | None]) -> dict:
    """A transaction Bundle of (method, url, resource) entries."""
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [{"request": {"method": method, "url": url}, **({"resource": resource} if resource else {})}
                      for method, url, resource in entries]}
