"""Referral Tasks between member institutions on both backends: the status machine on every write
path (PUT, PATCH, transaction Bundle), what the referring clinic sees, and $referral-stats."""

from __future__ import annotations

import uuid

import pytest
from conftest import newest_history_entry as newest
from workflow_data import create, parameters, rejected, resident, transaction

from fhir_server.workflow.codes import REFERRAL_CATEGORY
from fhir_server.workflow.tasks import TRANSITIONS

STATUSES = ["draft", "requested", "received", "accepted", "rejected", "in-progress", "completed", "cancelled",
            "on-hold", "failed"]
REFUSED = [(old, new) for old in STATUSES for new in STATUSES
           if old != new and new not in TRANSITIONS.get(old, ())]


def referral(client, requester: str, owner: str, category: str = "referral", status: str = "requested",
             authored: str = "2026-05-04T09:00:00+08:00") -> dict:
    patient = create(client, resident())
    request = create(client, {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "category": [{"coding": [{"system": REFERRAL_CATEGORY, "code": category}]}],
        "subject": {"reference": f"Patient/{patient['id']}"}, "requester": {"reference": requester},
        "performer": [{"reference": owner}]})
    return create(client, {"resourceType": "Task", "status": status, "intent": "order",
                           "focus": {"reference": f"ServiceRequest/{request['id']}"},
                           "for": {"reference": f"Patient/{patient['id']}"}, "authoredOn": authored,
                           "requester": {"reference": requester}, "owner": {"reference": owner}})


def advance(client, task: dict, *statuses: str) -> dict:
    for status in statuses:
        response = client.put(f"/Task/{task['id']}", json={**task, "status": status})
        assert response.status_code == 200, response.text
        task = response.json()
    return task


def test_the_referral_walks_its_path_and_the_clinic_sees_each_step(client):
    clinic, county = f"Organization/{uuid.uuid4().hex}", f"Organization/{uuid.uuid4().hex}"
    task = referral(client, clinic, county)
    since = task["meta"]["lastUpdated"]
    task = advance(client, task, "received", "accepted", "in-progress", "completed")
    seen = client.get("/Task", params={"requester": clinic, "_lastUpdated": f"gt{since}"}).json()["entry"]
    assert [e["resource"]["status"] for e in seen] == ["completed"]
    history = client.get(f"/Task/{task['id']}/_history").json()["entry"]
    assert [e["resource"]["status"] for e in history] == ["completed", "in-progress", "accepted", "received",
                                                          "requested"]
    other = advance(client, referral(client, clinic, county), "received", "rejected")
    assert other["status"] == "rejected"
    for path in (("received", "cancelled"), ("cancelled",), ("received", "accepted", "cancelled")):
        assert advance(client, referral(client, clinic, county), *path)["status"] == "cancelled"


@pytest.mark.parametrize(("old", "new"), REFUSED[::3])  # a third of the refused pairs, spread over all
def test_a_transition_off_the_path_is_refused(client, old, new):
    task = create(client, {"resourceType": "Task", "status": old, "intent": "order"})
    before = newest(client)
    response = client.put(f"/Task/{task['id']}", json={**task, "status": new})
    rejected(response, 422, "Task.status", f"{old} → {new}", code="business-rule")
    assert newest(client) == before


def test_patch_and_transactions_obey_the_status_machine(client):
    task = create(client, {"resourceType": "Task", "status": "requested", "intent": "order"})
    before = newest(client)
    response = client.patch(f"/Task/{task['id']}", json=[{"op": "replace", "path": "/status", "value": "completed"}],
                            headers={"Content-Type": "application/json-patch+json"})
    rejected(response, 422, "Task.status", "requested → completed", "received, cancelled")
    bundle = transaction(("PUT", f"Task/{task['id']}", {**task, "status": "in-progress"}))
    response = client.post("/", json=bundle)
    assert response.status_code == 422 and "requested → in-progress" in response.json()["issue"][0]["diagnostics"]
    batch = {**bundle, "type": "batch"}
    entry = client.post("/", json=batch).json()["entry"][0]["response"]
    assert entry["status"].startswith("422") and entry["outcome"]["issue"][0]["expression"] == ["Task.status"]
    assert newest(client) == before
    fine = client.post("/", json=transaction(("PUT", f"Task/{task['id']}", {**task, "status": "received"})))
    assert fine.status_code == 200, fine.text
    final = advance(client, client.get(f"/Task/{task['id']}").json(), "rejected")
    response = client.put(f"/Task/{task['id']}", json={**final, "status": "accepted"})
    rejected(response, 422, "Task.status", "'rejected' is final")
    # other changes to a Task keep its status and pass
    noted = client.put(f"/Task/{task['id']}", json={**final, "note": [{"text": "closed"}]})
    assert noted.status_code == 200


def test_referral_stats_counts_by_organization_month_status_and_category(client):
    clinic, township, county = (f"Organization/{uuid.uuid4().hex}" for _ in range(3))
    advance(client, referral(client, clinic, county), "received", "accepted", "in-progress", "completed")
    advance(client, referral(client, clinic, county, "teleconsultation"), "received", "rejected")
    referral(client, clinic, county, "imaging-read")
    advance(client, referral(client, clinic, county), "cancelled")
    referral(client, township, county, authored="2026-06-10T10:00:00+08:00")
    referral(client, clinic, county, authored="2025-12-31T10:00:00+08:00")  # outside the period
    response = client.get("/$referral-stats", params={"period": "2026-05/2026-06", "organization": clinic})
    assert response.status_code == 200, response.text
    output = response.json()
    assert output["parameter"][0] == {"name": "period", "valuePeriod": {"start": "2026-05", "end": "2026-06"}}
    assert output["parameter"][1] == {"name": "total", "valueInteger": 4}
    groups = [{p["name"]: p for p in g["part"]} for g in output["parameter"] if g["name"] == "group"]
    assert [(g["organization"]["valueReference"]["reference"], g["month"]["valueString"], g["role"]["valueCode"])
            for g in groups] == [(clinic, "2026-05", "requester")]
    sent = next(g for g in output["parameter"] if g["name"] == "group")["part"]
    statuses = {p["part"][0]["valueCode"]: p["part"][1]["valueInteger"] for p in sent if p["name"] == "status"}
    categories = {p["part"][0]["valueCode"]: p["part"][1]["valueInteger"] for p in sent if p["name"] == "category"}
    assert statuses == {"cancelled": 1, "completed": 1, "rejected": 1, "requested": 1}
    assert categories == {"imaging-read": 1, "referral": 2, "teleconsultation": 1}
    assert groups[0]["consultationRate"]["valueDecimal"] == pytest.approx(1 / 3, abs=1e-4)
    posted = client.post("/$referral-stats", json=parameters(
        {"name": "period", "valuePeriod": {"start": "2026-05-01", "end": "2026-06-30"}},
        {"name": "organization", "valueReference": {"reference": county}}))
    assert posted.status_code == 200, posted.text
    owned = [{p["name"]: p for p in g["part"]} for g in posted.json()["parameter"] if g["name"] == "group"]
    assert [(g["month"]["valueString"], g["role"]["valueCode"], g["total"]["valueInteger"]) for g in owned] == [
        ("2026-05", "owner", 4), ("2026-06", "owner", 1)]


def test_referral_stats_refuses_bad_parameters(client, unchanged):
    rejected(client.get("/$referral-stats", params={"period": "May"}), 400, "period")
    rejected(client.get("/$referral-stats", params={"period": "2026-06/2026-05"}), 400, "period")
    rejected(client.get("/$referral-stats", params={"organization": "Patient/1"}), 400, "organization")
    rejected(client.get("/$referral-stats", params={"month": "2026-05"}), 400, "month")
    rejected(client.post("/$referral-stats", json=parameters({"name": "period", "valueInteger": 2026})), 400,
             "Parameters.parameter[0].valueString")
    rejected(client.post("/$referral-stats", json=parameters(
        {"name": "organization", "valueReference": {"reference": "Practitioner/x"}})), 400,
        "Parameters.parameter[0].valueReference")
