"""SMART scopes over bulk jobs (fhir_server/bulk/access.py): which types an export may read, the
conditions a kept grant puts on the pages it reads (on a real SQLite store), and whose jobs are whose."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from bulk_data import population

from fhir_server.auth.grant import Grant, acting_as
from fhir_server.bulk import access
from fhir_server.bulk.export import default_types
from fhir_server.model.outcome import Forbidden
from fhir_server.service import ResourceService
from fhir_server.settings import Settings
from fhir_server.store import open_store
from fhir_server.store.bulk import ExportSelection, export_page

SYSTEM = Grant(scopes=("system/Observation.read", "system/Patient.read"), client_id="etl", subject="etl")
PATIENT = Grant(scopes=("patient/*.read",), client_id="app", subject="pt-2", patient="pt-2")


def test_without_a_grant_every_type_is_permitted():
    types = default_types("system")
    assert access.permitted_types(types, explicit=False) == types
    assert access.job_grant() is None and access.same_client(None)


def test_types_outside_the_scopes_are_left_out_or_refused():
    with acting_as(SYSTEM):
        assert access.permitted_types(default_types("system"), explicit=False) == ["Observation", "Patient"]
        assert access.permitted_types(["Patient"], explicit=True) == ["Patient"]
        with pytest.raises(Forbidden) as refused:
            access.permitted_types(["Patient", "Encounter"], explicit=True)
        assert "Encounter" in str(refused.value)
        with pytest.raises(Forbidden):
            access.permitted_types(["Encounter"], explicit=False)
        with pytest.raises(Forbidden):
            access.check_import_types(["Observation"])  # a read scope writes nothing
        kept = access.job_grant()
    assert kept["client_id"] == "etl"
    with acting_as(SYSTEM):
        assert access.same_client(kept)
    with acting_as(PATIENT):
        assert not access.same_client(kept) and not access.same_client(None)


async def test_a_kept_patient_grant_confines_the_pages_to_the_compartment(tmp_path):
    settings = Settings(data_dir=tmp_path, database_url="")
    store = open_store(settings)
    await store.migrate()
    service = ResourceService(store, settings)
    await service.start()
    try:
        written, errors = await service.upsert_many(population())
        assert errors == [] and written == len(population())
        types = ["Patient", "Observation", "Organization"]
        sel = ExportSelection(types=types, until=datetime.now(UTC) + timedelta(seconds=1))
        everything = await export_page(store, sel, 0, 1000)
        assert {row[1] for row in everything} == set(types)
        kept = {"scopes": list(PATIENT.scopes), "client_id": "app", "subject": "pt-2", "patient": "pt-2",
                "fhir_user": None, "token_id": None}
        sel.access = access.read_conditions(kept, service.registry, types)
        assert set(sel.access) == {"Patient", "Observation"}  # Organization: not patient data, readable in full
        confined = await export_page(store, sel, 0, 1000)
        patients = {row[2] for row in confined if row[1] == "Patient"}
        observations = {row[2] for row in confined if row[1] == "Observation"}
        assert patients == {"pt-2"} and observations == {"bp-6", "bp-7", "bp-8", "hr-2"}
        assert {row[2] for row in confined if row[1] == "Organization"} == {"county-hospital", "village-east",
                                                                             "village-west"}
        with pytest.raises(Forbidden):  # a job whose types the grant no longer covers stops
            access.read_conditions({**kept, "scopes": ["patient/Observation.read"]}, service.registry, ["Encounter"])
    finally:
        await store.close()
