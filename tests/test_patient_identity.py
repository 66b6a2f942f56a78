"""One resident, one record, over HTTP on both backends: duplicate resident IDs refused on every write
path, Patient/$match, Patient/$merge and Patient/$everything, with their failure paths."""

from __future__ import annotations

from conftest import newest_history_entry as newest
from workflow_data import create, parameters, phone, rejected, resident, resident_id, transaction

from fhir_server.identifiers import HEALTH_CARD, RESIDENT_ID

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"


# ---- duplicate detection ----

def test_a_second_active_patient_with_the_same_resident_id_is_refused(client):
    rid = resident_id()
    first = create(client, resident(rid=rid))
    before = newest(client)
    response = client.post("/Patient", json=resident("李", "娜", rid=rid))
    issue = rejected(response, 409, "Patient.identifier[0]", rid, f"Patient/{first['id']}", code="duplicate")
    assert "$merge" in issue["diagnostics"]
    assert newest(client) == before


def test_duplicates_are_refused_by_update_patch_and_transaction(client):
    rid = resident_id()
    first = create(client, resident(rid=rid))
    other = create(client, resident("李", "娜"))
    before = newest(client)
    claimed = {**other, "identifier": [{"system": RESIDENT_ID, "value": rid}]}
    rejected(client.put(f"/Patient/{other['id']}", json=claimed), 409, "Patient.identifier[0]", first["id"])
    patch = [{"op": "replace", "path": "/identifier/0/value", "value": rid}]
    response = client.patch(f"/Patient/{other['id']}", json=patch,
                            headers={"Content-Type": "application/json-patch+json"})
    rejected(response, 409, "Patient.identifier[0]", first["id"])
    bundle = transaction(("POST", "Patient", resident("赵", "敏", rid=rid)))
    response = client.post("/", json=bundle)
    assert response.status_code == 409, response.text
    assert first["id"] in response.json()["issue"][0]["diagnostics"]
    assert newest(client) == before
    assert client.get(f"/Patient/{other['id']}").json()["identifier"][0]["value"] != rid


def test_two_registrations_in_one_transaction_are_refused(client, unchanged):
    rid = resident_id()
    bundle = transaction(("POST", "Patient", resident(rid=rid)), ("POST", "Patient", resident("李", "娜", rid=rid)))
    response = client.post("/", json=bundle)
    assert response.status_code == 409, response.text
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[0].resource.identifier[0]"]
    assert client.get("/Patient", params={"identifier": f"{RESIDENT_ID}|{rid}"}).json()["total"] == 0


def test_an_inactive_patient_or_the_same_patient_may_keep_the_resident_id(client):
    rid = resident_id()
    first = create(client, resident(rid=rid))
    assert client.put(f"/Patient/{first['id']}", json={**first, "gender": "male"}).status_code == 200
    create(client, resident(rid=rid, active=False))  # an inactive record stands in nobody's way


# ---- $match ----

def test_match_finds_by_identifier_first_and_grades_demographic_matches(client):
    number, card, tel = resident_id(), f"HC{resident_id()}", phone()
    original = create(client, resident("欧阳", "秀英", rid=number, card=card, birth="1951-02-03", phone=tel))
    namesake = create(client, resident("欧阳", "秀英", rid=resident_id(), birth="1951-02-03", gender="male"))
    # another clinic registers the same woman with her health card only
    by_card = client.post("/Patient/$match", json=parameters(
        {"name": "resource", "resource": resident("欧阳", "秀英", rid=False, card=card)}))
    assert by_card.status_code == 200, by_card.text
    entry, *others = by_card.json()["entry"]
    assert entry["resource"]["id"] == original["id"]
    assert [(e["resource"]["id"], e["search"]["extension"][0]["valueCode"]) for e in others] == [
        (namesake["id"], "possible")]  # same name, another gender and birth date
    assert entry["search"] == {"extension": [{"url": MATCH_GRADE, "valueCode": "certain"}], "mode": "match",
                               "score": 1.0}
    # no identifier: name, birth date, gender and phone
    wanted = resident("欧阳", "秀英", rid=False, birth="1951-02-03", phone=tel)
    bundle = client.post("/Patient/$match", json=parameters({"name": "resource", "resource": wanted})).json()
    assert bundle["type"] == "searchset" and bundle["total"] == 2
    first, second = bundle["entry"]
    assert first["resource"]["id"] == original["id"] and first["search"]["score"] == 1.0
    assert first["search"]["extension"][0]["valueCode"] == "probable"  # certain needs an identifier
    assert second["resource"]["id"] == namesake["id"] and second["search"]["score"] == 0.75
    only = client.post("/Patient/$match", json=parameters(
        {"name": "resource", "resource": wanted}, {"name": "onlyCertainMatches", "valueBoolean": True})).json()
    assert only["total"] == 0 and "entry" not in only
    one = client.post("/Patient/$match", json=parameters(
        {"name": "resource", "resource": wanted}, {"name": "count", "valueInteger": 1})).json()
    assert [e["resource"]["id"] for e in one["entry"]] == [original["id"]]
    # a different resident ID number is a different resident, however alike
    other = resident("欧阳", "秀英", rid=resident_id(), birth="1951-02-03", phone=tel)
    ids = [e["resource"]["id"] for e in client.post("/Patient/$match", json=parameters(
        {"name": "resource", "resource": other})).json().get("entry", [])]
    assert original["id"] not in ids and namesake["id"] not in ids


def test_match_refuses_bad_input(client, unchanged):
    rejected(client.post("/Patient/$match", json={"resourceType": "Patient"}), 400, "resourceType", "Parameters")
    rejected(client.post("/Patient/$match", json=parameters({"name": "count", "valueInteger": 2})), 400,
             "Parameters.parameter", "resource")
    rejected(client.post("/Patient/$match", json=parameters({"name": "resource", "resource": {
        "resourceType": "Observation"}})), 400, "Parameters.parameter[0].resource", "Patient")
    rejected(client.post("/Patient/$match", json=parameters(
        {"name": "resource", "resource": resident()}, {"name": "count", "valueInteger": 0})), 400,
        "Parameters.parameter[1].valueInteger", "at least 1")
    rejected(client.post("/Patient/$match", json=parameters(
        {"name": "resource", "resource": resident()}, {"name": "onlyCertainMatches", "valueString": "yes"})), 400,
        "Parameters.parameter[1].valueBoolean")
    response = client.post("/Patient/$match", json=parameters({"name": "resource", "resource": {
        "resourceType": "Patient", "birthDate": "03/02/1951"}}))
    assert response.status_code == 400 and response.json()["issue"][0]["expression"] == ["Patient.birthDate"]


# ---- $merge ----

def _merge(client, source: str, target: str, *extra: dict):
    return client.post("/Patient/$merge", json=parameters(
        {"name": "source-patient", "valueReference": {"reference": f"Patient/{source}"}},
        {"name": "target-patient", "valueReference": {"reference": f"Patient/{target}"}}, *extra))


def test_merge_links_both_moves_the_compartment_and_leaves_a_provenance(client):
    rid, card = resident_id(), f"HC{resident_id()}"
    target = create(client, resident(rid=rid))
    source = create(client, resident(rid=False, card=card))
    observation = create(client, {"resourceType": "Observation", "status": "final", "code": {"text": "note"},
                                  "subject": {"reference": f"Patient/{source['id']}"}})
    task = create(client, {"resourceType": "Task", "status": "requested", "intent": "order",
                           "for": {"reference": f"Patient/{source['id']}"}})
    preview = _merge(client, source["id"], target["id"], {"name": "preview", "valueBoolean": True})
    assert preview.status_code == 200, preview.text
    assert "Would merge" in preview.json()["parameter"][1]["resource"]["issue"][0]["diagnostics"]
    assert client.get(f"/Patient/{source['id']}").json()["meta"]["versionId"] == "1"  # preview wrote nothing
    response = _merge(client, source["id"], target["id"])
    assert response.status_code == 200, response.text
    output = {p["name"]: p["resource"] for p in response.json()["parameter"]}
    assert "2 resource(s)" in output["outcome"]["issue"][0]["diagnostics"]
    result = output["result"]
    assert result["id"] == target["id"]
    assert result["link"] == [{"other": {"reference": f"Patient/{source['id']}"}, "type": "replaces"}]
    assert {"system": HEALTH_CARD, "value": card, "use": "old"} in result["identifier"]
    merged_source = client.get(f"/Patient/{source['id']}").json()
    assert merged_source["active"] is False
    assert merged_source["link"] == [{"other": {"reference": f"Patient/{target['id']}"}, "type": "replaced-by"}]
    assert client.get(f"/Observation/{observation['id']}").json()["subject"] == {
        "reference": f"Patient/{target['id']}"}
    assert client.get(f"/Task/{task['id']}").json()["for"] == {"reference": f"Patient/{target['id']}"}
    [provenance] = [e["resource"] for e in client.get("/Provenance", params={
        "target": f"Patient/{target['id']}"}).json()["entry"]]
    assert provenance["activity"]["coding"][0]["code"] == "merge"
    targets = {t["reference"].split("/_history")[0] for t in provenance["target"]}
    assert targets == {f"Patient/{target['id']}", f"Patient/{source['id']}", f"Observation/{observation['id']}",
                       f"Task/{task['id']}"}
    # the survivor's $everything now holds the moved record; the merged-away one stays out of $match
    everything = client.get(f"/Patient/{target['id']}/$everything").json()
    assert f"Observation/{observation['id']}" in {f"{e['resource']['resourceType']}/{e['resource']['id']}"
                                                  for e in everything["entry"]}
    found = client.post("/Patient/$match", json=parameters({"name": "resource", "resource": resident(
        rid=False, card=card)}, {"name": "onlyCertainMatches", "valueBoolean": True})).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [target["id"]]
    rejected(_merge(client, source["id"], target["id"]), 422, "Parameters.parameter[0].valueReference",
             "already merged", code="business-rule")


def test_merge_by_identifiers(client):
    rid = resident_id()
    target = create(client, resident(rid=rid))
    card = f"HC{resident_id()}"
    source = create(client, resident(rid=False, card=card))
    response = client.post("/Patient/$merge", json=parameters(
        {"name": "source-patient-identifier", "valueIdentifier": {"system": HEALTH_CARD, "value": card}},
        {"name": "target-patient-identifier", "valueIdentifier": {"system": RESIDENT_ID, "value": rid}}))
    assert response.status_code == 200, response.text
    assert client.get(f"/Patient/{source['id']}").json()["active"] is False
    assert client.get(f"/Patient/{target['id']}").json()["link"][0]["type"] == "replaces"


def test_merge_refuses_bad_requests_and_changes_nothing(client, unchanged):
    one = client.get("/Patient", params={"_count": 2}).json()["entry"]
    a = one[0]["resource"]["id"]
    rejected(client.post("/Patient/$merge", json=parameters(
        {"name": "target-patient", "valueReference": {"reference": f"Patient/{a}"}})), 400, "Parameters.parameter",
        "source-patient")
    rejected(client.post("/Patient/$merge", json=parameters(
        {"name": "source-patient", "valueReference": {"reference": "Observation/x"}},
        {"name": "target-patient", "valueReference": {"reference": f"Patient/{a}"}})), 400,
        "Parameters.parameter[0].valueReference", "Patient/[id]")
    rejected(_merge(client, a, a), 422, "Parameters.parameter[1].valueReference", "same Patient")
    rejected(_merge(client, "no-such-patient", a), 422, "Parameters.parameter[0].valueReference", "does not exist",
             code="not-found")
    rejected(client.post("/Patient/$merge", json=parameters(
        {"name": "source-patient-identifier", "valueIdentifier": {"system": RESIDENT_ID, "value": "nobody"}},
        {"name": "target-patient", "valueReference": {"reference": f"Patient/{a}"}})), 422,
        "Parameters.parameter[0]", "matches 0 Patients")


def test_merge_with_a_result_patient_that_is_not_the_target_is_refused(client):
    target = create(client, resident())
    source = create(client, resident(rid=False))
    before = newest(client)
    response = _merge(client, source["id"], target["id"], {"name": "result-patient", "resource": source})
    rejected(response, 422, "Parameters.parameter[2].resource.id", "must be the target")
    assert newest(client) == before


# ---- $everything ----

def test_everything_gives_the_compartment_and_what_it_refers_to_paged(client):
    organization = create(client, {"resourceType": "Organization", "name": "Village clinic"})
    patient = create(client, resident(managingOrganization={"reference": f"Organization/{organization['id']}"}))
    ref = {"reference": f"Patient/{patient['id']}"}
    made = [create(client, {"resourceType": "Observation", "status": "final", "code": {"text": f"o{i}"},
                            "subject": ref, "performer": [{"reference": f"Organization/{organization['id']}"}]})
            for i in range(3)]
    made.append(create(client, {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                                "subject": ref}))
    create(client, resident())  # someone else's record stays out
    bundle = client.get(f"/Patient/{patient['id']}/$everything").json()
    matches = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]
               if e["search"]["mode"] == "match"}
    assert matches == {f"Patient/{patient['id']}", *(f"{r['resourceType']}/{r['id']}" for r in made)}
    included = {e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "include"}
    assert organization["id"] in included
    only = client.get(f"/Patient/{patient['id']}/$everything", params={"_type": "Encounter"}).json()
    assert [e["resource"]["resourceType"] for e in only["entry"] if e["search"]["mode"] == "match"] == ["Encounter"]
    since = made[1]["meta"]["lastUpdated"]
    later = client.get(f"/Patient/{patient['id']}/$everything", params={"_since": since}).json()
    assert {e["resource"]["id"] for e in later["entry"] if e["search"]["mode"] == "match"} == {
        r["id"] for r in made[1:]}
    seen, url = [], f"/Patient/{patient['id']}/$everything?_count=2"
    while url:
        page = client.get(url).json()
        seen += [e["resource"]["id"] for e in page["entry"] if e["search"]["mode"] == "match"]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert len(seen) == 5 and set(seen) == {patient["id"], *(r["id"] for r in made)}
    every = client.get("/Patient/$everything", params={"_type": "Patient", "_count": 1}).json()
    assert every["entry"][0]["resource"]["resourceType"] == "Patient"


def test_everything_refuses_bad_requests(client, unchanged):
    patient = client.get("/Patient", params={"_count": 1}).json()["entry"][0]["resource"]["id"]
    response = client.get("/Patient/no-such-patient/$everything")
    assert response.status_code == 404 and response.json()["resourceType"] == "OperationOutcome"
    rejected(client.get(f"/Patient/{patient}/$everything", params={"_type": "Organization"}), 400, "_type",
             "not a type of the Patient compartment")
    rejected(client.get(f"/Patient/{patient}/$everything", params={"_since": "yesterday"}), 400, "_since")
    rejected(client.get(f"/Patient/{patient}/$everything", params={"start": "2026-01-01"}), 400, "start",
             "does not support")
