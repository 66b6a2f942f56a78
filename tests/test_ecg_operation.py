"""$ecg-triage over HTTP on both backends: inline Parameters, a bare Observation, a stored
Observation, persisted and returned-only results, the OperationDefinition, and every bad input."""

from __future__ import annotations

import pytest
from conftest import ECG_CENTRE
from ecg_signals import synthesise

from fhir_server.ecg.sampled_data import observation_from_waveform
from fhir_server.model.validate import validate_resource

TRIAGE = "/Observation/$ecg-triage"


def ecg_observation(rhythm: str = "normal", patient: str | None = None, **options) -> dict:
    subject = {"reference": f"Patient/{patient}"} if patient else None
    observation = observation_from_waveform(synthesise(rhythm, leads=["I", "II"], **options), subject)
    observation["effectiveDateTime"] = "2026-05-04T09:30:00+08:00"
    return observation


def parameters(observation: dict, persist: bool | None = None) -> dict:
    items = [{"name": "observation", "resource": observation}]
    if persist is not None:
        items.append({"name": "persist", "valueBoolean": persist})
    return {"resourceType": "Parameters", "parameter": items}


def values(output: dict, name: str) -> list:
    return [next(v for k, v in p.items() if k != "name") for p in output["parameter"] if p["name"] == name]


def new_patient(client) -> str:
    return client.post("/Patient", json={"resourceType": "Patient", "gender": "female"}).json()["id"]


def rejected(response, status: int, expression: str) -> None:
    assert response.status_code == status, response.text
    issue = response.json()["issue"][0]
    assert response.json()["resourceType"] == "OperationOutcome" and issue["severity"] == "error"
    assert issue["expression"] == [expression]


def test_inline_parameters_return_the_triage_and_store_nothing(client, unchanged):
    response = client.post(TRIAGE, json=parameters(ecg_observation("brady", seed=1), persist=False))
    assert response.status_code == 200, response.text
    output = response.json()
    assert output["resourceType"] == "Parameters"
    assert values(output, "triage") == ["urgent"]
    assert values(output, "reason")[0].startswith("Sinus bradycardia: 50/min")
    rate = values(output, "heartRate")[0]
    assert rate["unit"] == "/min" and rate["code"] == "/min" and rate["system"] == "http://unitsofmeasure.org"
    assert 47 <= rate["value"] <= 53
    assert values(output, "rhythm")[0]["coding"][0] == {"system": "http://snomed.info/sct", "code": "426177001",
                                                        "display": "Sinus bradycardia"}
    results = values(output, "result")
    assert [r["resourceType"] for r in results] == ["Observation"] * 3
    assert all("id" not in r for r in results)
    heart_rate = results[0]
    assert heart_rate["code"]["coding"][0]["code"] == "8867-4"
    assert heart_rate["effectiveDateTime"] == "2026-05-04T09:30:00+08:00"
    assert results[2]["interpretation"][0]["coding"][0]["code"] == "A"
    for resource in results:
        validate_resource(resource, "Observation")


def test_bare_observation_body(client, unchanged):
    response = client.post(TRIAGE, json=ecg_observation("normal", seed=2))
    assert response.status_code == 200, response.text
    assert values(response.json(), "triage") == ["routine"]
    assert values(response.json(), "rhythm")[0]["text"] == "Normal sinus rhythm"


def test_persist_stores_the_ecg_results_referral_and_flag_in_one_go(client):
    patient = new_patient(client)
    response = client.post(TRIAGE, json=parameters(ecg_observation("vt", patient, seed=3), persist=True))
    assert response.status_code == 200, response.text
    output = response.json()
    assert values(output, "triage") == ["critical"]
    assert "Ventricular tachycardia run" in values(output, "reason")[0]
    ecg_reference = values(output, "ecg")[0]["reference"]
    stored_ecg = client.get(f"/{ecg_reference}")
    assert stored_ecg.status_code == 200 and stored_ecg.json()["code"]["coding"][0]["code"] == "11524-6"
    results = values(output, "result")
    assert [r["resourceType"] for r in results] == ["Observation", "Observation", "Observation", "ServiceRequest",
                                                    "Task", "Flag"]
    assert all(r["id"] and r["meta"]["versionId"] == "1" for r in results)
    derived = client.get("/Observation", params={"derived-from": ecg_reference}).json()
    assert {e["resource"]["id"] for e in derived["entry"]} == {r["id"] for r in results[:3]}
    requests = client.get("/ServiceRequest", params={"subject": f"Patient/{patient}"}).json()["entry"]
    assert len(requests) == 1
    request = requests[0]["resource"]
    assert request["priority"] == "stat" and request["performer"] == [{"reference": ECG_CENTRE}]
    assert request["supportingInfo"] == [{"reference": ecg_reference}]
    flags = client.get("/Flag", params={"subject": f"Patient/{patient}"}).json()["entry"]
    assert len(flags) == 1 and flags[0]["resource"]["code"]["text"].startswith("Critical ECG: Ventricular")
    tasks = client.get("/Task", params={"focus": f"ServiceRequest/{request['id']}"}).json()["entry"]
    assert len(tasks) == 1 and tasks[0]["resource"]["id"] == results[4]["id"]
    task = tasks[0]["resource"]
    assert task["status"] == "requested" and task["intent"] == "order" and task["priority"] == "stat"
    assert task["owner"] == {"reference": ECG_CENTRE} and task["for"] == {"reference": f"Patient/{patient}"}


def test_stored_observation_by_id(client):
    patient = new_patient(client)
    created = client.post("/Observation", json=ecg_observation("af", patient, seed=4)).json()
    path = f"/Observation/{created['id']}/$ecg-triage"
    looked = client.post(path, content=b"")
    assert looked.status_code == 200, looked.text
    assert values(looked.json(), "triage") == ["urgent"]
    assert values(looked.json(), "rhythm")[0]["coding"][0]["code"] == "49436004"
    derived = values(looked.json(), "result")[0]
    assert derived["derivedFrom"] == [{"reference": f"Observation/{created['id']}"}] and "id" not in derived
    assert "entry" not in client.get("/Observation", params={"derived-from": f"Observation/{created['id']}"}).json()
    persisted = client.post(path, params={"persist": "true"})
    assert persisted.status_code == 200, persisted.text
    found = client.get("/Observation", params={"derived-from": f"Observation/{created['id']}"}).json()["entry"]
    assert len(found) == 3
    again = client.post(path, json={"resourceType": "Parameters", "parameter": [{"name": "persist",
                                                                                   "valueBoolean": True}]})
    assert again.status_code == 200
    assert len(client.get("/Observation", params={"derived-from": f"Observation/{created['id']}"}).json()["entry"]) == 6
    assert "entry" not in client.get("/ServiceRequest", params={"subject": f"Patient/{patient}"}).json()  # urgent


def test_critical_ecg_without_patient_says_no_referral_was_made(client, unchanged):
    response = client.post(TRIAGE, json=ecg_observation("asystole", seed=5))
    assert response.status_code == 200
    output = response.json()
    assert values(output, "triage") == ["critical"] and values(output, "heartRate")[0]["value"] == 0
    assert any("No referral or flag made" in reason for reason in values(output, "reason"))
    assert [r["resourceType"] for r in values(output, "result")] == ["Observation", "Observation"]


def test_a_lead_of_all_zeros_alone_is_an_unreadable_triage(client, unchanged):
    observation = ecg_observation("normal", seed=6)
    for component in observation["component"]:
        component["valueSampledData"]["data"] = " ".join(["0"] * 5000)
    output = client.post(TRIAGE, json=parameters(observation, persist=False)).json()
    assert values(output, "triage") == ["urgent"]
    assert "repeat the recording" in values(output, "reason")[0]
    assert values(output, "rhythm")[0] == {"text": "Signal unreadable"} and not values(output, "heartRate")


def test_operation_definition_is_served_and_listed_in_metadata(client):
    statement = client.get("/metadata").json()
    observation = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Observation")
    operation = observation["operation"]
    assert [o["name"] for o in operation] == ["ecg-triage", "validate"]
    definition = client.get(operation[0]["definition"].removeprefix(str(client.base_url).rstrip("/")))
    assert definition.status_code == 200
    body = definition.json()
    validate_resource(body, "OperationDefinition")
    assert body["url"] == operation[0]["definition"] and body["code"] == "ecg-triage"
    assert body["type"] and body["instance"] and body["resource"] == ["Observation"]


def sampled(**changes) -> dict:
    observation = ecg_observation("normal", seed=7)
    observation["component"][0]["valueSampledData"].update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del observation["component"][0]["valueSampledData"][key]
    return observation


WHERE = "Observation.component[0].valueSampledData"
BAD_WAVEFORMS = {
    "period-0": (sampled(period=0), f"{WHERE}.period"),
    "period-negative": (sampled(period=-2), f"{WHERE}.period"),
    "period-missing": (sampled(period=None), f"{WHERE}.period"),
    "empty-data": (sampled(data=" "), f"{WHERE}.data"),
    "non-numeric": (sampled(data="0 1 two 3"), f"{WHERE}.data"),
    "mismatched-dimensions": (sampled(dimensions=3), f"{WHERE}.data"),
}


@pytest.mark.parametrize("persist", [False, True])
@pytest.mark.parametrize("case", list(BAD_WAVEFORMS))
def test_bad_waveforms_are_422_and_store_nothing(client, unchanged, case, persist):
    observation, expression = BAD_WAVEFORMS[case]
    rejected(client.post(TRIAGE, json=parameters(observation, persist)), 422, expression)


def test_non_ecg_observation_is_422(client, unchanged):
    observation = ecg_observation()
    observation["code"] = {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}
    rejected(client.post(TRIAGE, json=observation), 422, "Observation.code")


def test_observation_without_waveform_is_422(client, unchanged):
    observation = ecg_observation()
    del observation["component"]
    rejected(client.post(TRIAGE, json=parameters(observation, True)), 422, "Observation.component")


def test_stored_observation_that_is_not_an_ecg_is_422(client):
    created = client.post("/Observation", json={"resourceType": "Observation", "status": "final",
                                                 "code": {"text": "weight"}}).json()
    rejected(client.post(f"/Observation/{created['id']}/$ecg-triage", params={"persist": "true"}), 422,
             "Observation.code")


@pytest.mark.parametrize("body, expression", [
    ({"resourceType": "Patient"}, "resourceType"),
    ({"resourceType": "Parameters", "parameter": [{"name": "persist", "valueBoolean": True}]},
     "Parameters.parameter"),
    ({"resourceType": "Parameters", "parameter": [{"name": "observation", "valueString": "x"}]},
     "Parameters.parameter[0].resource"),
    ({"resourceType": "Parameters", "parameter": "observation"}, "Parameters.parameter"),
], ids=["not-parameters", "no-observation", "observation-not-a-resource", "parameter-not-array"])
def test_malformed_requests_are_400(client, unchanged, body, expression):
    rejected(client.post(TRIAGE, json=body), 400, expression)


def test_persist_must_be_boolean(client, unchanged):
    body = parameters(ecg_observation())
    body["parameter"].append({"name": "persist", "valueString": "yes"})
    rejected(client.post(TRIAGE, json=body), 400, "Parameters.parameter[1].valueBoolean")
    rejected(client.post(TRIAGE, json=ecg_observation(), params={"persist": "maybe"}), 400, "persist")
    rejected(client.post(TRIAGE, json=parameters(ecg_observation(), False), params={"persist": "true"}), 400,
             "persist")


def test_invalid_observation_is_400(client, unchanged):
    observation = ecg_observation()
    observation["effectiveDateTime"] = "yesterday morning"
    rejected(client.post(TRIAGE, json=parameters(observation, True)), 400, "Observation.effectiveDateTime")


def test_instance_level_errors(client, unchanged):
    assert client.post("/Observation/no-such-ecg/$ecg-triage").status_code == 404
    rejected(client.post("/Observation/any/$ecg-triage", json=parameters(ecg_observation())), 400,
             "Parameters.parameter[0]")
    rejected(client.post("/Observation/any/$ecg-triage", json=ecg_observation()), 400, "resourceType")
