"""The alliance's story played through HTTP on both backends: the example alliance is loaded; a village
clinic registers a resident, records a high blood pressure and sends a critical ECG; the county ECG centre
finds the referral Task, accepts, works and completes it; the village clinic sees the result; another
clinic's duplicate registration is refused and found by $match."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ECG_CENTRE
from ecg_signals import synthesise
from workflow_data import create, parameters, rejected, resident_id

from fhir_server.ecg.sampled_data import observation_from_waveform
from fhir_server.identifiers import HEALTH_CARD, RESIDENT_ID

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "alliance.json"
VILLAGE = "Organization/village-taoyuan"
OTHER_VILLAGE = "Organization/village-hexi"


def test_the_example_alliance_loads_with_one_command(tmp_path):
    fhir_server = Path(sys.executable).parent / "fhir-server"
    done = subprocess.run([str(fhir_server), "load", "--data-dir", str(tmp_path), "--workers", "1", str(EXAMPLE)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"loaded {len(json.loads(EXAMPLE.read_text())['entry'])} resources, rejected 0" in done.stderr


def test_village_to_county_and_back(client):
    loaded = client.post("/", json=json.loads(EXAMPLE.read_text()))
    assert loaded.status_code == 200, loaded.text
    township = client.get("/Organization", params={"_id": "village-taoyuan", "_include": "Organization:partof"})
    assert {e["resource"]["id"] for e in township.json()["entry"]} == {"village-taoyuan", "township-dongguan"}
    doctor = client.get("/PractitionerRole", params={"organization": VILLAGE}).json()["entry"][0]["resource"]
    assert doctor["code"][0]["coding"][0]["code"] == "village-doctor"

    # the village clinic registers a resident
    number, card = resident_id(), f"HC{resident_id()}"
    patient = create(client, {
        "resourceType": "Patient", "name": [{"family": "杨", "given": ["淑珍"]}], "gender": "female",
        "birthDate": "1958-11-23", "telecom": [{"system": "phone", "value": "13912345678"}],
        "identifier": [{"system": RESIDENT_ID, "value": number}, {"system": HEALTH_CARD, "value": card}],
        "managingOrganization": {"reference": VILLAGE},
        "generalPractitioner": [{"reference": f"PractitionerRole/{doctor['id']}"}]})
    subject = {"reference": f"Patient/{patient['id']}"}

    # blood pressure, flagged high by the server
    pressure = create(client, {
        "resourceType": "Observation", "status": "final", "subject": subject, "performer": [{"reference": VILLAGE}],
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "effectiveDateTime": "2026-05-04T09:10:00+08:00",
        "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                       "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                         "code": "mm[Hg]"}} for code, value in (("8480-6", 168), ("8462-4", 96))]})
    assert pressure["interpretation"][0]["coding"][0]["code"] == "H"

    # a critical ECG: triage stores the referral and its Task in one go
    ecg = observation_from_waveform(synthesise("vt", leads=["I", "II"], seed=3), subject)
    ecg["effectiveDateTime"] = "2026-05-04T09:30:00+08:00"
    ecg["performer"] = [{"reference": VILLAGE}]
    triage = client.post("/Observation/$ecg-triage", json=parameters(
        {"name": "observation", "resource": ecg}, {"name": "persist", "valueBoolean": True}))
    assert triage.status_code == 200, triage.text
    assert [p["valueCode"] for p in triage.json()["parameter"] if p["name"] == "triage"] == ["critical"]
    since = client.get(f"/Patient/{patient['id']}").json()["meta"]["lastUpdated"]

    # the county ECG centre finds the referral and works it
    inbox = client.get("/Task", params={"owner": ECG_CENTRE, "status": "requested", "patient": subject["reference"]})
    [entry] = inbox.json()["entry"]
    task = entry["resource"]
    assert task["requester"] == {"reference": VILLAGE} and task["priority"] == "stat"
    request = client.get(f"/{task['focus']['reference']}").json()
    assert request["resourceType"] == "ServiceRequest" and request["requester"] == {"reference": VILLAGE}
    for status in ("received", "accepted", "in-progress"):
        task = client.put(f"/Task/{task['id']}", json={**task, "status": status}).json()
        assert task["status"] == status
    report = create(client, {
        "resourceType": "DiagnosticReport", "status": "final", "subject": subject,
        "code": {"coding": [{"system": "http://loinc.org", "code": "11524-6", "display": "EKG study"}]},
        "basedOn": [task["focus"]], "performer": [{"reference": ECG_CENTRE}],
        "conclusion": "Non-sustained ventricular tachycardia; admit to the county hospital"})
    output = {"type": {"text": "ECG report"}, "valueReference": {"reference": f"DiagnosticReport/{report['id']}"}}
    done = client.put(f"/Task/{task['id']}", json={**task, "status": "completed", "output": [output]})
    assert done.status_code == 200, done.text
    rejected(client.put(f"/Task/{task['id']}", json={**done.json(), "status": "in-progress"}), 422, "Task.status")

    # the village clinic sees the result
    changed = client.get("/Task", params={"requester": VILLAGE, "_lastUpdated": f"gt{since}",
                                          "patient": subject["reference"]}).json()["entry"]
    assert [e["resource"]["status"] for e in changed] == ["completed"]
    result = client.get(f"/{changed[0]['resource']['output'][0]['valueReference']['reference']}").json()
    assert result["conclusion"].startswith("Non-sustained ventricular tachycardia")
    steps = [e["resource"]["status"] for e in client.get(f"/Task/{task['id']}/_history").json()["entry"]]
    assert steps == ["completed", "in-progress", "accepted", "received", "requested"]

    # another clinic registers her again: refused, and $match finds the record
    again = {"resourceType": "Patient", "name": [{"family": "杨", "given": ["淑珍"]}], "gender": "female",
             "birthDate": "1958-11-23", "identifier": [{"system": RESIDENT_ID, "value": number}],
             "managingOrganization": {"reference": OTHER_VILLAGE}}
    rejected(client.post("/Patient", json=again), 409, "Patient.identifier[0]", f"Patient/{patient['id']}")
    without_id = {**again, "identifier": None, "telecom": [{"system": "phone", "value": "13912345678"}]}
    del without_id["identifier"]
    found = client.post("/Patient/$match", json=parameters({"name": "resource", "resource": without_id})).json()
    best = found["entry"][0]
    assert best["resource"]["id"] == patient["id"] and best["search"]["score"] == 1.0
    assert best["search"]["extension"][0]["valueCode"] == "probable"

    # and the county hospital sees the whole record
    everything = client.get(f"/Patient/{patient['id']}/$everything", params={"_count": 100}).json()
    kinds = {e["resource"]["resourceType"] for e in everything["entry"] if e["search"]["mode"] == "match"}
    assert {"Patient", "Observation", "ServiceRequest", "Task", "Flag", "DiagnosticReport"} <= kinds
    included = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in everything["entry"]
                if e["search"]["mode"] == "include"}
    assert {VILLAGE, f"PractitionerRole/{doctor['id']}"} <= included


def test_the_example_file_is_what_its_generator_writes():
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import make_alliance
    finally:
        sys.path.pop(0)
    assert json.loads(EXAMPLE.read_text()) == make_alliance.bundle()
