"""Scope enforcement in the service layer, on a real SQLite store: what each grant may read, search,
include, write and see in history. (test_auth_scopes.py drives the same rules over HTTP with real tokens.)"""

from __future__ import annotations

import orjson
import pytest

from fhir_server.auth.grant import Grant, acting_as, system_access
from fhir_server.model.outcome import Forbidden
from fhir_server.ops.bundle import BundleProcessor
from fhir_server.service import ResourceService
from fhir_server.settings import Settings
from fhir_server.store import open_store

VITALS = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}
LAB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
VITALS_SCOPE = "category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"


def observation(patient: str, category: dict, value: float = 120) -> dict:
    return {"resourceType": "Observation", "status": "final", "category": [category],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "subject": {"reference": f"Patient/{patient}"},
            "valueQuantity": {"value": value, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org",
                              "code": "mm[Hg]"}}


@pytest.fixture(scope="module")
async def world(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("access"), database_url="")
    store = open_store(settings)
    await store.migrate()
    service = ResourceService(store, settings)
    await service.start()
    ids = {}
    for name in ("a", "b"):
        await service.update("Patient", f"p{name}", {"resourceType": "Patient", "id": f"p{name}",
                                                      "name": [{"family": f"Family{name}"}]})
        ids[f"{name}_vitals"] = (await service.create("Observation", observation(f"p{name}", VITALS))).version.id
        ids[f"{name}_lab"] = (await service.create("Observation", observation(f"p{name}", LAB))).version.id
    ids["org"] = (await service.create("Organization", {"resourceType": "Organization", "name": "Village"})).version.id
    yield service, ids
    await store.close()


def grant(scope: str, patient: str | None = "pa", fhir_user: str | None = None) -> Grant:
    return Grant(scopes=tuple(scope.split()), client_id="app", subject="someone", patient=patient,
                 fhir_user=fhir_user)


async def search_ids(service, types, params):
    _, page = await service.search(types, params, base_url="http://x", strict=True)
    return {m.id for m in page.matches}, {f"{i.resource_type}/{i.id}" for i in page.included}


async def history_count(service, *args):
    page = await service.history(*args, count=100)
    return {(e.resource_type, e.id) for e in page.entries}


async def test_patient_scope_confines_search_read_include_and_history(world):
    service, ids = world
    with acting_as(grant("patient/Observation.rs patient/Patient.r")):
        found, included = await search_ids(service, ("Observation",), [("_include", "Observation:subject")])
        assert found == {ids["a_vitals"], ids["a_lab"]}
        assert included == {"Patient/pa"}
        assert (await service.read("Observation", ids["a_lab"])).id == ids["a_lab"]
        with pytest.raises(Forbidden):
            await service.read("Observation", ids["b_vitals"])
        with pytest.raises(Forbidden):
            await service.read("Patient", "pb")
        with pytest.raises(Forbidden):
            await service.vread("Observation", ids["b_vitals"], "1")
        assert (await service.read("Patient", "pa")).id == "pa"
        # the search by id of another patient's resource finds nothing
        assert (await search_ids(service, ("Observation",), [("_id", ids["b_vitals"])]))[0] == set()
        with pytest.raises(Forbidden):  # Patient may be read, not searched: no chaining into it
            await search_ids(service, ("Observation",), [("subject:Patient.name", "Familyb")])
        with pytest.raises(Forbidden):
            await service.history("Observation", ids["b_vitals"], count=10)
        assert await history_count(service, "Observation") == {("Observation", ids["a_vitals"]),
                                                               ("Observation", ids["a_lab"])}
        # system history: only the types and compartment the token may search
        assert await history_count(service) == {("Observation", ids["a_vitals"]), ("Observation", ids["a_lab"])}
        # system search: Observation within the compartment; Patient is not searchable and drops out
        found, _ = await search_ids(service, ("Observation", "Patient"), [])
        assert found == {ids["a_vitals"], ids["a_lab"]}
        with pytest.raises(Forbidden):
            await service.create("Observation", observation("pa", VITALS))


async def test_revinclude_shows_only_the_patients_own_resources(world):
    service, ids = world
    with acting_as(grant("patient/*.read")):
        found, included = await search_ids(service, ("Patient",), [("_revinclude", "Observation:subject")])
        assert found == {"pa"}
        assert included == {f"Observation/{ids['a_vitals']}", f"Observation/{ids['a_lab']}"}
        # an Organization holds no patient data: a patient context may read it
        assert (await service.read("Organization", ids["org"])).id == ids["org"]
    with acting_as(grant("patient/Patient.rs")):  # Observation not granted: revincluded ones are dropped
        found, included = await search_ids(service, ("Patient",), [("_revinclude", "Observation:subject")])
        assert found == {"pa"} and included == set()
        with pytest.raises(Forbidden):
            await search_ids(service, ("Patient",), [("_has:Observation:subject:code", "8480-6")])


async def test_v2_search_parameter_restriction(world):
    service, ids = world
    with acting_as(grant(f"patient/Observation.rs?{VITALS_SCOPE}")):
        assert (await search_ids(service, ("Observation",), []))[0] == {ids["a_vitals"]}
        with pytest.raises(Forbidden):
            await service.read("Observation", ids["a_lab"])
        with pytest.raises(Forbidden):  # old versions cannot be checked against a search restriction
            await service.history("Observation", count=10)
    # two restricted scopes: either one suffices
    with acting_as(grant(f"user/Observation.rs?{VITALS_SCOPE} patient/Observation.rs")):
        assert (await search_ids(service, ("Observation",), []))[0] == {ids["a_vitals"], ids["a_lab"],
                                                                         ids["b_vitals"]}


async def test_patient_scope_writes_stay_in_the_compartment(world):
    service, ids = world
    with acting_as(grant("patient/Observation.cruds patient/Organization.cruds")):
        created = await service.create("Observation", observation("pa", VITALS, 130))
        with pytest.raises(Forbidden):
            await service.create("Observation", observation("pb", VITALS))
        moved = {**observation("pb", VITALS), "id": created.version.id}
        with pytest.raises(Forbidden):  # moving one's own resource to another patient
            await service.update("Observation", created.version.id, moved)
        with pytest.raises(Forbidden):  # overwriting another patient's resource
            await service.update("Observation", ids["b_lab"], {**observation("pa", LAB), "id": ids["b_lab"]})
        with pytest.raises(Forbidden):
            await service.delete("Observation", ids["b_lab"])
        with pytest.raises(Forbidden):  # not patient data: readable, never writable in a patient context
            await service.create("Organization", {"resourceType": "Organization", "name": "x"})
        # a conditional delete matches only within the compartment: another patient's resource is not found
        assert await service.conditional_delete("Observation", f"_id={ids['b_lab']}") == []
        await service.delete("Observation", created.version.id)
    with system_access():
        assert orjson.loads((await service.read("Observation", ids["b_lab"])).content)["subject"] == {
            "reference": "Patient/pb"}
        _, page = await service.search(("Observation",), [("subject", "Patient/pb")], base_url="", strict=True)
        assert len(page.matches) == 2


async def test_user_scope_of_a_patient_user_is_their_own_record(world):
    service, ids = world
    with acting_as(grant("user/Observation.rs", patient=None, fhir_user="Patient/pb")):
        assert (await search_ids(service, ("Observation",), []))[0] == {ids["b_vitals"], ids["b_lab"]}
    with acting_as(grant("user/Observation.rs", patient=None, fhir_user="Practitioner/doc")):
        assert len((await search_ids(service, ("Observation",), []))[0]) >= 4
    with acting_as(grant("patient/Observation.rs", patient=None)):  # no patient in context: nothing
        with pytest.raises(Forbidden):
            await search_ids(service, ("Observation",), [])


async def test_system_scope_read_only(world):
    service, ids = world
    with acting_as(grant("system/Observation.read", patient=None)):
        assert len((await search_ids(service, ("Observation",), []))[0]) >= 4
        with pytest.raises(Forbidden):
            await service.update("Observation", ids["a_lab"], {**observation("pa", LAB), "id": ids["a_lab"]})
        with pytest.raises(Forbidden):
            await service.read("Patient", "pa")


async def test_transaction_with_one_forbidden_entry_writes_nothing(world):
    service, ids = world
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation("pa", VITALS, 141), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation("pb", VITALS, 142), "request": {"method": "POST", "url": "Observation"}}]}
    with acting_as(grant("patient/Observation.crus")):
        with pytest.raises(Forbidden):
            await BundleProcessor(service, "http://x", None).process(bundle)
    _, page = await service.search(("Observation",), [("value-quantity", "141,142")], base_url="", strict=True)
    assert page.matches == []
