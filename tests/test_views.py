"""SQL on FHIR v2 ViewDefinitions: the evaluator on the behaviours of the spec's shareable test cases
(our own data), the shipped blood-pressure view, $viewdefinition-run on both backends, and the
`fhir-server view` command writing CSV and Parquet."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bulk_data import population, put_all
from conftest import start_server, stop_server

from fhir_server.views.evaluator import View, ViewError

ROOT = Path(__file__).resolve().parent.parent
BP_VIEW = json.loads((ROOT / "mappings" / "views" / "blood-pressure.json").read_text())
FHIR_SERVER = str(Path(sys.executable).parent / "fhir-server")

PATIENTS = [
    {"resourceType": "Patient", "id": "a", "active": True,
     "name": [{"use": "official", "family": "Wang", "given": ["Li", "Mei"]}, {"use": "usual", "family": "W"}],
     "telecom": [{"system": "phone", "value": "111"}],
     "contact": [{"telecom": [{"system": "email", "value": "a@x"}], "name": {"given": ["Bo"]}},
                 {"telecom": [{"system": "phone", "value": "222"}], "name": {"given": ["Yu", "Yan"]}}],
     "managingOrganization": {"reference": "Organization/village-east"},
     "link": [{"type": "seealso", "other": {"reference": "Patient/a"}}]},
    {"resourceType": "Patient", "id": "b", "active": False, "name": [{"use": "usual", "family": "Zhao"}],
     "deceasedBoolean": True, "link": [{"type": "seealso", "other": {"reference": "Patient/a"}}]},
    {"resourceType": "Patient", "id": "c"},
    {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"}},
]


def rows(view: dict, resources=PATIENTS) -> list[dict]:
    compiled = View({"resource": "Patient", **view})
    return [dict(zip(compiled.names, row, strict=True)) for r in resources for row in compiled.rows(r)]


def col(name: str, path: str, **extra) -> dict:
    return {"name": name, "path": path, **extra}


def test_columns_and_types_of_other_resources():
    columns = [col("id", "id"), col("active", "active"), col("family", "name.first().family")]
    assert rows({"select": [{"column": columns}]}) == [
        {"id": "a", "active": True, "family": "Wang"}, {"id": "b", "active": False, "family": "Zhao"},
        {"id": "c", "active": None, "family": None}]


def test_for_each_and_for_each_or_null():
    view = {"select": [{"column": [col("id", "id")]}, {"forEach": "name", "column": [col("family", "family")]}]}
    assert rows(view) == [{"id": "a", "family": "Wang"}, {"id": "a", "family": "W"}, {"id": "b", "family": "Zhao"}]
    view["select"][1] = {"forEachOrNull": "name", "column": [col("family", "family")]}
    assert rows(view)[-1] == {"id": "c", "family": None} and len(rows(view)) == 4
    view["select"][1] = {"forEach": "identifier", "column": [col("value", "value")]}
    assert rows(view) == []  # an empty forEach removes the resource's rows


def test_nested_for_each_with_columns_at_each_level():
    view = {"select": [{"column": [col("id", "id")]},
                       {"forEach": "contact", "column": [col("kind", "telecom.system")],
                        "select": [{"forEach": "name.given", "column": [col("given", "$this")]}]}]}
    assert rows(view) == [{"id": "a", "kind": "email", "given": "Bo"}, {"id": "a", "kind": "phone", "given": "Yu"},
                          {"id": "a", "kind": "phone", "given": "Yan"}]


def test_union_all_concatenates_branches():
    branch = [col("tel", "value"), col("sys", "system")]
    view = {"select": [{"column": [col("id", "id")],
                        "unionAll": [{"forEach": "telecom", "column": branch},
                                     {"forEach": "contact.telecom", "column": branch}]}]}
    assert rows(view) == [{"id": "a", "tel": "111", "sys": "phone"}, {"id": "a", "tel": "a@x", "sys": "email"},
                          {"id": "a", "tel": "222", "sys": "phone"}]
    view = {"select": [{"column": [col("id", "id")],
                        "unionAll": [{"forEachOrNull": "photo", "column": [col("url", "url")]},
                                     {"unionAll": [{"forEach": "telecom[0]", "column": [col("url", "value")]},
                                                   {"forEach": "photo", "column": [col("url", "url")]}]}]}]}
    assert rows(view) == [{"id": "a", "url": None}, {"id": "a", "url": "111"}, {"id": "b", "url": None},
                          {"id": "c", "url": None}]


def test_where_constants_and_collections():
    view = {"constant": [{"name": "use", "valueString": "official"}, {"name": "index", "valueInteger": 1},
                         {"name": "dead", "valueBoolean": True}],
            "select": [{"column": [col("id", "id"), col("official", "name.where(use = %use).family"),
                                   col("second", "name[%index].family"),
                                   col("given", "name.given", collection=True)]}],
            "where": [{"path": "name.exists()"}]}
    assert rows(view) == [{"id": "a", "official": "Wang", "second": "W", "given": ["Li", "Mei"]},
                          {"id": "b", "official": None, "second": None, "given": []}]
    view["where"] = [{"path": "deceased.ofType(boolean) = %dead"}]
    assert [r["id"] for r in rows(view)] == ["b"]
    view["where"] = [{"path": "active"}, {"path": "name.where(use = %use).exists()"}]
    assert [r["id"] for r in rows(view)] == ["a"]


def test_resource_and_reference_keys():
    view = {"select": [{"column": [col("key", "getResourceKey()"),
                                   col("same", "getResourceKey() = link.other.getReferenceKey(Patient)"),
                                   col("any", "link.other.getReferenceKey()"),
                                   col("wrong", "link.other.getReferenceKey(Observation)"),
                                   col("org", "managingOrganization.getReferenceKey(Organization)")]}]}
    assert rows(view) == [{"key": "a", "same": True, "any": "a", "wrong": None, "org": "village-east"},
                          {"key": "b", "same": False, "any": "a", "wrong": None, "org": None},
                          {"key": "c", "same": None, "any": None, "wrong": None, "org": None}]


@pytest.mark.parametrize(("view", "where"), [
    ({}, "ViewDefinition.resource"),
    ({"resource": "Patient"}, "ViewDefinition.select"),
    ({"resource": "Patient", "select": [{"forEach": "@@", "column": [col("a", "id")]}]},
     "ViewDefinition.select[0].forEach"),
    ({"resource": "Patient", "select": [{"forEach": 1, "column": [col("a", "id")]}]},
     "ViewDefinition.select[0].forEach"),
    ({"resource": "Patient", "select": [{"column": [col("a b", "id")]}]}, "ViewDefinition.select[0].column[0].name"),
    ({"resource": "Patient", "select": [{"column": [col("a", "id")]}, {"column": [col("a", "gender")]}]},
     "ViewDefinition.select"),
    ({"resource": "Patient", "select": [{"unionAll": [{"column": [col("a", "id"), col("b", "id")]},
                                                      {"column": [col("b", "id"), col("a", "id")]}]}]},
     "ViewDefinition.select[0].unionAll[1]"),
    ({"resource": "Patient", "select": [{"column": [col("a", "name.where(use = %nope)")]}]},
     "ViewDefinition.select[0].column[0].path"),
    ({"resource": "Patient", "constant": [{"name": "x"}], "select": [{"column": [col("a", "id")]}]},
     "ViewDefinition.constant[0]"),
    ({"resource": "Spaceship", "select": [{"column": [col("a", "id")]}]}, "ViewDefinition.resource"),
])
def test_invalid_views_are_refused_with_the_place(view, where):
    with pytest.raises(ViewError) as caught:
        View(view)
    assert caught.value.issues[0].expression == [where]


@pytest.mark.parametrize(("view", "where"), [
    ({"select": [{"column": [col("family", "name.family")]}]}, "ViewDefinition.select[0].column[0].path"),
    ({"select": [{"column": [col("id", "id")]}], "where": [{"path": "name.family"}]}, "ViewDefinition.where[0].path"),
])
def test_rows_that_break_the_view_are_errors(view, where):
    with pytest.raises(ViewError) as caught:
        rows(view)
    assert caught.value.issues[0].expression == [where]


def _expected_bp() -> list[dict]:
    out = []
    for r in population():
        if r["resourceType"] == "Observation" and r["id"].startswith("bp-"):
            out.append({"id": r["id"], "patient_id": r["subject"]["reference"].split("/")[1],
                        "organization_id": r["performer"][0]["reference"].split("/")[1],
                        "effective": r["effectiveDateTime"], "systolic": r["component"][0]["valueQuantity"]["value"],
                        "diastolic": r["component"][1]["valueQuantity"]["value"]})
    return out


def test_the_blood_pressure_view_on_the_population():
    compiled = View(BP_VIEW)
    got = [dict(zip(compiled.names, row, strict=True)) for r in population() for row in compiled.rows(r)]
    assert got == _expected_bp() and len(got) == 36


# ---- $viewdefinition-run over HTTP, both backends ----

@pytest.fixture(scope="module")
def http(fresh_client):
    put_all(fresh_client, population())
    return fresh_client


def _run(http, *parameters, fmt: str | None = None):
    body = {"resourceType": "Parameters", "parameter": [{"name": "viewResource", "resource": BP_VIEW}, *parameters]}
    return http.post("/ViewDefinition/$viewdefinition-run", json=body, params={"_format": fmt} if fmt else None)


def test_run_answers_csv_by_default(http):
    response = _run(http)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    got = list(csv.DictReader(io.StringIO(response.text)))
    expected = [{k: str(v) for k, v in row.items()} for row in _expected_bp()]
    assert sorted(got, key=lambda r: r["id"]) == sorted(expected, key=lambda r: r["id"])


def test_run_answers_ndjson_json_and_parquet(http):
    expected = sorted(_expected_bp(), key=lambda r: r["id"])
    response = _run(http, {"name": "_format", "valueCode": "ndjson"})
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert sorted((json.loads(line) for line in response.text.splitlines()), key=lambda r: r["id"]) == expected
    response = _run(http, fmt="json")
    assert sorted(response.json(), key=lambda r: r["id"]) == expected
    import pyarrow as pa
    import pyarrow.parquet as pq

    response = _run(http, fmt="parquet")
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(pa.BufferReader(response.content))
    assert table.schema.field("systolic").type == pa.float64()
    assert sorted(table.to_pylist(), key=lambda r: r["id"]) == expected


def test_run_filters_limit_and_inline_resources(http):
    response = _run(http, {"name": "patient", "valueReference": {"reference": "Patient/pt-2"}}, fmt="ndjson")
    assert sorted(json.loads(line)["id"] for line in response.text.splitlines()) == ["bp-6", "bp-7", "bp-8"]
    response = _run(http, {"name": "_limit", "valueInteger": 5}, {"name": "header", "valueBoolean": False})
    assert len(response.text.splitlines()) == 5 and not response.text.startswith("id,")
    inline = [r for r in population() if r["id"] in ("bp-0", "hr-0")]
    response = _run(http, *({"name": "resource", "resource": r} for r in inline), fmt="json")
    assert [r["id"] for r in response.json()] == ["bp-0"]
    response = http.post("/ViewDefinition/$run", params={"_format": "csv"},
                         json={**BP_VIEW, "select": [{"column": [col("id", "id")]}], "where": []})
    assert response.status_code == 200 and len(response.text.splitlines()) == 1 + 48


@pytest.mark.parametrize(("parameters", "where"), [
    ([], "Parameters.parameter"),
    ([{"name": "viewResource", "resource": {**BP_VIEW, "select": [{"column": [col("x", "@@")]}]}}],
     "ViewDefinition.select[0].column[0].path"),
    ([{"name": "viewResource", "resource": BP_VIEW}, {"name": "_format", "valueCode": "xlsx"}],
     "Parameters.parameter[1].value"),
    ([{"name": "viewResource", "resource": BP_VIEW}, {"name": "_limit", "valueInteger": 0}],
     "Parameters.parameter[1].value"),
    ([{"name": "viewResource", "resource": BP_VIEW}, {"name": "source", "valueString": "x"}],
     "Parameters.parameter[1]"),
])
def test_bad_run_is_400(client, unchanged, parameters, where):
    response = client.post("/ViewDefinition/$viewdefinition-run",
                           json={"resourceType": "Parameters", "parameter": parameters})
    assert response.status_code == 400, response.text
    assert response.json()["issue"][0]["expression"] == [where]


# ---- the command ----

def test_view_command_writes_csv_and_parquet(tmp_path):
    server = start_server({"FHIR_DATABASE_URL": ""})
    try:
        import httpx

        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            put_all(http, population())
        env = {**os.environ, "FHIR_DATABASE_URL": ""}
        out = tmp_path / "bp.parquet"
        run = subprocess.run([FHIR_SERVER, "view", str(ROOT / "mappings/views/blood-pressure.json"), "--format",
                              "parquet", "-o", str(out), "--data-dir", str(server.data_dir)],
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert "36 rows of blood_pressure written" in run.stderr and "res/s" in run.stderr  # the progress bar
        import pyarrow.parquet as pq

        assert sorted(pq.read_table(out).to_pylist(), key=lambda r: r["id"]) == sorted(_expected_bp(),
                                                                                        key=lambda r: r["id"])
        ndjson = tmp_path / "in.ndjson"
        ndjson.write_text("".join(json.dumps(r) + "\n" for r in population()))
        run = subprocess.run([FHIR_SERVER, "view", str(ROOT / "mappings/views/blood-pressure.json"), "--input",
                              str(ndjson), "-o", "-", "--quiet"], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and len(run.stdout.splitlines()) == 37
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"resource": "Patient", "select": [{"column": [col("a", "@@")]}]}))
        run = subprocess.run([FHIR_SERVER, "view", str(bad), "-o", str(tmp_path / "x.csv"), "--quiet"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 1 and "ViewDefinition.select[0].column[0].path" in run.stderr
    finally:
        stop_server(server)
