"""Booking expert Slots, chronic-care interpretation and the central pharmacy, over HTTP on both backends."""

from __future__ import annotations

import uuid

from conftest import newest_history_entry as newest
from workflow_data import create, rejected, resident, transaction

from fhir_server.workflow.pharmacy import STATUS_REASON

SNOMED = "http://snomed.info/sct"
CARDIOLOGY = {"coding": [{"system": SNOMED, "code": "394579002", "display": "Cardiology"}]}
V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


# ---- Slots and Appointments ----

def expert_slots(client, count: int = 2) -> tuple[dict, list[dict]]:
    expert = create(client, {"resourceType": "PractitionerRole", "specialty": [CARDIOLOGY]})
    actor = {"reference": f"PractitionerRole/{expert['id']}"}
    schedule = create(client, {"resourceType": "Schedule", "actor": [actor]})
    slots = [create(client, {"resourceType": "Slot", "schedule": {"reference": f"Schedule/{schedule['id']}"},
                             "status": "free", "specialty": [CARDIOLOGY],
                             "start": f"2026-07-0{i + 1}T09:00:00+08:00", "end": f"2026-07-0{i + 1}T09:30:00+08:00"})
             for i in range(count)]
    return expert, slots


def appointment(patient: dict, *slots: dict, status: str = "booked") -> dict:
    return {"resourceType": "Appointment", "status": status, "slot": [{"reference": f"Slot/{s['id']}"} for s in slots],
            "start": slots[0]["start"], "end": slots[0]["end"],
            "participant": [{"actor": {"reference": f"Patient/{patient['id']}"}, "status": "accepted"}]}


def slot_status(client, slot: dict) -> str:
    return client.get(f"/Slot/{slot['id']}").json()["status"]


def test_booking_takes_the_slot_a_second_booking_is_refused_and_cancelling_frees_it(client):
    expert, (slot, other) = expert_slots(client)
    patient = create(client, resident())
    found = client.get("/Slot", params={"schedule.actor": f"PractitionerRole/{expert['id']}", "status": "free",
                                        "specialty": f"{SNOMED}|394579002", "start": "ge2026-07-02"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [other["id"]]
    booked = create(client, appointment(patient, slot))
    assert slot_status(client, slot) == "busy"
    someone_else = create(client, resident())
    before = newest(client)
    response = client.post("/Appointment", json=appointment(someone_else, slot))
    rejected(response, 409, "Appointment.slot[0]", f"Slot/{slot['id']} is busy")
    response = client.post("/", json=transaction(("POST", "Appointment", appointment(someone_else, other, slot))))
    assert response.status_code == 409, response.text
    assert slot_status(client, other) == "free"  # the whole transaction was rolled back
    assert newest(client) == before
    moved = client.put(f"/Appointment/{booked['id']}", json={**booked, "slot": [{"reference": f"Slot/{other['id']}"}]})
    assert moved.status_code == 200, moved.text
    assert (slot_status(client, slot), slot_status(client, other)) == ("free", "busy")
    cancelled = client.put(f"/Appointment/{booked['id']}", json={**moved.json(), "status": "cancelled"})
    assert cancelled.status_code == 200 and slot_status(client, other) == "free"
    again = create(client, appointment(patient, other))
    assert slot_status(client, other) == "busy"
    assert client.delete(f"/Appointment/{again['id']}").status_code == 200
    assert slot_status(client, other) == "free"


def test_booking_an_unknown_or_foreign_slot_is_refused(client, unchanged):
    patient = client.get("/Patient", params={"_count": 1}).json()["entry"][0]["resource"]
    unknown = {"id": "no-such-slot", "start": "2026-07-01T09:00:00Z", "end": "2026-07-01T10:00:00Z"}
    response = client.post("/Appointment", json=appointment(patient, unknown))
    rejected(response, 422, "Appointment.slot[0]", "Slot/no-such-slot", "does not exist")
    foreign = appointment(patient, unknown)
    foreign["slot"] = [{"reference": "http://elsewhere.example/fhir/Slot/1"}]
    rejected(client.post("/Appointment", json=foreign), 422, "Appointment.slot[0]", "Slot/[id]")


# ---- chronic care ----

def blood_pressure(systolic: float, diastolic: float, **fields) -> dict:
    def component(code: str, value: float) -> dict:
        return {"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                  "code": "mm[Hg]"}}
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "component": [component("8480-6", systolic), component("8462-4", diastolic)], **fields}


def single(code: str, value: float, unit: str, **fields) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
            **fields}


def codes(element: dict) -> list[str]:
    return [c["code"] for concept in element.get("interpretation", []) for c in concept["coding"]]


def test_blood_pressure_heart_rate_and_glucose_are_interpreted(client):
    high = create(client, blood_pressure(152, 95))
    assert codes(high) == ["H"] and [codes(c) for c in high["component"]] == [["H"], ["H"]]
    assert high["interpretation"][0]["coding"][0]["system"] == V3
    assert high["component"][0]["referenceRange"] == [{
        "low": {"value": 90, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        "high": {"value": 139, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]
    crisis = create(client, blood_pressure(185, 100))
    assert codes(crisis) == ["HH"] and [codes(c) for c in crisis["component"]] == [["HH"], ["H"]]
    assert codes(create(client, blood_pressure(118, 76))) == ["N"]
    assert codes(create(client, blood_pressure(65, 38))) == ["LL"]
    assert codes(create(client, single("8867-4", 38, "/min"))) == ["LL"]
    assert codes(create(client, single("8867-4", 72, "/min"))) == ["N"]
    assert codes(create(client, single("15074-8", 3.2, "mmol/L"))) == ["L"]
    assert codes(create(client, single("15074-8", 25.0, "mmol/L"))) == ["HH"]
    assert codes(create(client, single("2339-0", 180, "mg/dL"))) == ["H"]
    assert "interpretation" not in create(client, single("15074-8", 5.0, "mg/dL"))  # a unit the table lacks


def test_what_the_client_set_is_kept_and_updates_are_interpreted(client):
    own = create(client, blood_pressure(152, 95, interpretation=[{"text": "white-coat effect"}]))
    assert own["interpretation"] == [{"text": "white-coat effect"}]
    assert [codes(c) for c in own["component"]] == [["H"], ["H"]]
    ranged = single("15074-8", 7.0, "mmol/L", referenceRange=[{
        "low": {"value": 3.9, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        "high": {"value": 6.1, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        "text": "fasting"}])
    stored = create(client, ranged)
    assert codes(stored) == ["H"] and stored["referenceRange"] == ranged["referenceRange"]
    normal = create(client, single("8867-4", 72, "/min"))
    changed = {**normal, "valueQuantity": {**normal["valueQuantity"], "value": 160}}
    del changed["interpretation"]
    assert codes(client.put(f"/Observation/{normal['id']}", json=changed).json()) == ["HH"]
    patched = client.patch(f"/Observation/{normal['id']}", headers={"Content-Type": "application/json-patch+json"},
                           json=[{"op": "remove", "path": "/interpretation"},
                                 {"op": "replace", "path": "/valueQuantity/value", "value": 55}])
    assert patched.status_code == 200 and codes(patched.json()) == ["L"]


# ---- central pharmacy ----

def prescription(client, status: str = "active") -> tuple[dict, dict]:
    patient = create(client, resident())
    request = create(client, {"resourceType": "MedicationRequest", "status": status, "intent": "order",
                              "medicationCodeableConcept": {"text": "Amlodipine 5 mg tablet"},
                              "subject": {"reference": f"Patient/{patient['id']}"}})
    return patient, request


def dispense(patient: dict, request: dict, location: str, status: str = "completed", **fields) -> dict:
    return {"resourceType": "MedicationDispense", "status": status,
            "medicationCodeableConcept": {"text": "Amlodipine 5 mg tablet"},
            "subject": {"reference": f"Patient/{patient['id']}"}, "location": {"reference": location},
            "authorizingPrescription": [{"reference": f"MedicationRequest/{request['id']}"}], **fields}


def test_dispenses_and_stock_outs_are_searchable_by_location(client):
    site = create(client, {"resourceType": "Location", "name": f"Village dispensary {uuid.uuid4().hex[:6]}"})
    where = f"Location/{site['id']}"
    patient, request = prescription(client)
    handed = create(client, dispense(patient, request, where, quantity={"value": 30, "unit": "tablet"}))
    out = create(client, dispense(patient, request, where, "declined", statusReasonCodeableConcept={
        "coding": [{"system": STATUS_REASON, "code": "outofstock", "display": "Drug not available - out of stock"}]}))
    found = client.get("/MedicationDispense", params={"location": where, "status": "declined",
                                                      "status-reason": f"{STATUS_REASON}|outofstock"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [out["id"]]
    all_here = client.get("/MedicationDispense", params={"location": where}).json()
    assert {e["resource"]["id"] for e in all_here["entry"]} == {handed["id"], out["id"]}
    waiting = client.get("/MedicationRequest", params={
        "_has:MedicationDispense:prescription:status-reason": "outofstock"}).json()
    assert request["id"] in {e["resource"]["id"] for e in waiting["entry"]}


def test_dispense_rules_refuse_what_a_pharmacy_would(client):
    site = f"Location/{create(client, {'resourceType': 'Location', 'name': 'Township dispensary'})['id']}"
    patient, stopped = prescription(client, "stopped")
    _, active = prescription(client)
    before = newest(client)
    rejected(client.post("/MedicationDispense", json=dispense(patient, active, site, "declined")), 422,
             "MedicationDispense.statusReason", "outofstock")
    rejected(client.post("/MedicationDispense", json=dispense(patient, stopped, site)), 422,
             "MedicationDispense.authorizingPrescription[0]", "stopped")
    rejected(client.post("/MedicationDispense", json=dispense(patient, {"id": "nothing-here"}, site)), 422,
             "MedicationDispense.authorizingPrescription[0]", "does not exist")
    assert newest(client) == before
