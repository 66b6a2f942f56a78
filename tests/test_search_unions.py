"""Union search parameters (Observation's combo-code = code | component-code, …): no index rows of their
own; a search reads their parts' rows, with the same results as rows of their own would give."""

from __future__ import annotations

import dataclasses

import pytest
from search_data import LOINC, UCUM, concept, ids, observation, put_all
from sqlalchemy import text

from fhir_server.search.extract import extract
from fhir_server.search.registry import CORE, Registry
from fhir_server.settings import Settings
from fhir_server.store import open_store
from fhir_server.store.migrations import MIGRATIONS

SYSTOLIC = concept(LOINC, "8480-6", "Systolic blood pressure")
DIASTOLIC = concept(LOINC, "8462-4", "Diastolic blood pressure")
PANEL = concept(LOINC, "85354-9", "Blood pressure panel", text="Blood pressure")
ABSENT = concept("http://terminology.hl7.org/CodeSystem/data-absent-reason", "asked-unknown")
POSITIVE = concept("http://snomed.info/sct", "10828004", "Positive")


def _mmhg(value: float) -> dict:
    return {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}


OBSERVATIONS = [
    observation("bp", PANEL, component=[{"code": SYSTOLIC, "valueQuantity": _mmhg(150)},
                                        {"code": DIASTOLIC, "dataAbsentReason": ABSENT}]),
    observation("sys", SYSTOLIC, valueQuantity=_mmhg(118)),
    observation("test", concept(LOINC, "94500-6", "SARS-CoV-2 RNA"), valueCodeableConcept=POSITIVE),
    observation("same", SYSTOLIC, valueQuantity=_mmhg(160),  # a value reached by both parts
                component=[{"code": SYSTOLIC, "valueQuantity": _mmhg(160)}]),
    observation("absent", concept(LOINC, "8867-4", "Heart rate"), dataAbsentReason=ABSENT),
]
UNIONS = {"combo-code": ("code", "component-code"),
          "combo-data-absent-reason": ("component-data-absent-reason", "data-absent-reason"),
          "combo-value-concept": ("component-value-concept", "value-concept"),
          "combo-value-quantity": ("component-value-quantity", "value-quantity"),
          "combo-code-value-concept": ("code-value-concept", "component-code-value-concept"),
          "combo-code-value-quantity": ("code-value-quantity", "component-code-value-quantity")}


def _unlinked() -> Registry:
    """The core registry as if no parameter were a union: every parameter extracts rows of its own."""
    registry = CORE.copy()
    registry.by_type = {t: {c: dataclasses.replace(p, parts=()) for c, p in ps.items()}
                        for t, ps in registry.by_type.items()}
    registry.plans = {}
    return registry


def _rows(index, codes) -> set[tuple]:
    return {(table, *row[1:]) for table in index.TABLES for row in getattr(index, table) if row[0] in codes}


def test_the_core_unions_are_observations_combo_parameters():
    found = {(t, c): p.parts for t, ps in CORE.by_type.items() for c, p in ps.items() if p.parts}
    assert found == {("Observation", code): parts for code, parts in UNIONS.items()}
    assert CORE.get("Observation", "code").stored_codes == ("code",)
    assert CORE.get("Observation", "combo-code").stored_codes == ("code", "component-code")


@pytest.mark.parametrize("resource", OBSERVATIONS, ids=[o["id"] for o in OBSERVATIONS])
def test_a_unions_own_rows_would_be_exactly_its_parts_rows(resource):
    stored = extract("Observation", resource, CORE)
    assert not _rows(stored, UNIONS)  # nothing is written for the unions
    own = extract("Observation", resource, _unlinked())
    for union, parts in UNIONS.items():
        assert _rows(own, {union}) == _rows(stored, set(parts)), union


def test_a_search_parameter_defined_as_a_union_is_linked_to_its_parts():
    registry = CORE.copy()
    registry.add({"url": "http://alliance.example/fhir/sp/name-or-address", "code": "name-or-address",
                  "base": ["Patient"], "type": "string", "expression": "Patient.name | Patient.address"})
    assert registry.get("Patient", "name-or-address").parts == ("address", "name")
    registry.add({"url": "http://alliance.example/fhir/sp/name-or-alias", "code": "name-or-alias",
                  "base": ["Patient"], "type": "string", "expression": "Patient.name | Patient.extension.value"})
    assert registry.get("Patient", "name-or-alias").parts == ()  # a term no other parameter covers


@pytest.fixture(scope="module")
def api(fresh_client):
    put_all(fresh_client, OBSERVATIONS)
    return fresh_client


@pytest.mark.parametrize("params, expected", [
    ({"combo-code": f"{LOINC}|8480-6"}, {"bp", "sys", "same"}),  # the code or a component's code
    ({"combo-code": "85354-9"}, {"bp"}),
    ({"combo-code:text": "blood pressure"}, {"bp"}),
    ({"combo-code:not": f"{LOINC}|8480-6"}, {"test", "absent"}),
    ({"combo-value-quantity": "gt155"}, {"same"}),
    ({"combo-value-quantity": "lt155|http://unitsofmeasure.org|mm[Hg]"}, {"bp", "sys"}),
    ({"combo-value-quantity:missing": "true"}, {"test", "absent"}),
    ({"combo-value-quantity:missing": "false"}, {"bp", "sys", "same"}),
    ({"combo-data-absent-reason": "asked-unknown"}, {"bp", "absent"}),
    ({"combo-value-concept": "http://snomed.info/sct|10828004"}, {"test"}),
    ({"combo-code-value-quantity": f"{LOINC}|8480-6$gt140"}, {"bp", "same"}),
    ({"combo-code-value-concept": f"{LOINC}|94500-6${POSITIVE['coding'][0]['code']}"}, {"test"}),
])
def test_union_search_reads_the_parts(api, params, expected):
    assert ids(api, "/Observation", {**params, "_id": ",".join(o["id"] for o in OBSERVATIONS)}) == expected


def test_a_resource_found_through_both_parts_counts_once(api):
    bundle = api.get("/Observation", params={"combo-code": "8480-6", "_total": "accurate",
                                             "_id": "bp,sys,same"}).json()
    assert bundle["total"] == 3
    assert sorted(e["resource"]["id"] for e in bundle["entry"]) == ["bp", "same", "sys"]
    only = api.get("/Observation", params={"combo-code": "8480-6", "_summary": "count"}).json()
    assert only["total"] >= 3


def test_sort_by_a_union(api):
    bundle = api.get("/Observation", params={"_id": "bp,sys,test", "_sort": "-combo-value-quantity"}).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["bp", "sys", "test"]  # 150, 118, none


def test_a_custom_union_parameter_searches_without_reindexing(fresh_client):
    client = fresh_client
    put_all(client, [{"resourceType": "Patient", "id": "u-name", "name": [{"family": "Lianhua"}]},
                     {"resourceType": "Patient", "id": "u-addr", "address": [{"city": "Lianhua"}]},
                     {"resourceType": "Patient", "id": "u-none", "name": [{"family": "Other"}]}])
    r = client.put("/SearchParameter/name-or-address", json={
        "resourceType": "SearchParameter", "id": "name-or-address", "status": "active", "name": "nameOrAddress",
        "url": "http://alliance.example/fhir/sp/name-or-address", "description": "A name or an address",
        "code": "name-or-address", "base": ["Patient"], "type": "string",
        "expression": "Patient.name | Patient.address"})
    assert r.status_code == 201, r.text
    assert ids(client, "/Patient", {"name-or-address": "lianhua"}) == {"u-name", "u-addr"}


async def test_migration_drops_the_unions_own_rows(tmp_path):
    store = open_store(Settings(data_dir=tmp_path, database_url=""))
    await store.migrate()
    step = next(m for m in MIGRATIONS if m.version == 9)
    async with store.write_engine.begin() as conn:  # a store written before the step: union rows present
        for table, param in (("search_token", "combo-code"), ("search_token", "code"),
                             ("search_quantity", "combo-value-quantity"),
                             ("search_composite", "combo-code-value-quantity")):
            await conn.execute(text(f"INSERT INTO {table} (res_pk, resource_type, param, shard_key) "
                                    f"VALUES (1, 'Observation', '{param}', 0)"
                                    if table != "search_quantity" else
                                    f"INSERT INTO {table} (res_pk, resource_type, param, shard_key, value) "
                                    f"VALUES (1, 'Observation', '{param}', 0, 1)"))
        await step.apply(conn)
        left = (await conn.execute(text("SELECT param FROM search_token UNION ALL SELECT param FROM "
                                        "search_quantity UNION ALL SELECT param FROM search_composite"))).scalars()
        assert sorted(left) == ["code"]
    await store.close()
