"""$import on both backends: one server imports another's $export by URL, an NDJSON upload with bad
lines, inputs that cannot be fetched, and refusals of malformed kick-offs."""

from __future__ import annotations

import json

import httpx
import pytest
from bulk_data import ASYNC, exported, fetch_ndjson, kick_off, population, put_all, wait_for
from conftest import BACKENDS, _fresh_database_env, newest_history_entry, start_server, stop_server


@pytest.fixture(scope="module", params=BACKENDS)
def pair(request):
    """A source server with the population and an empty target that may fetch the source's files."""
    source = start_server(_fresh_database_env(request))
    target = start_server({**_fresh_database_env(request),
                           "FHIR_IMPORT_URL_PREFIXES": f"http://nowhere.invalid/, {source.base_url}/bulkfiles/"})
    with httpx.Client(base_url=source.base_url, timeout=30) as a, httpx.Client(base_url=target.base_url,
                                                                              timeout=30) as b:
        put_all(a, population())
        yield a, b
    stop_server(source)
    stop_server(target)


def _import_parameters(inputs: list[tuple[str, str]]) -> dict:
    return {"resourceType": "Parameters", "parameter": [
        {"name": "inputFormat", "valueCode": "application/fhir+ndjson"},
        {"name": "inputSource", "valueUri": "http://source.example"},
        {"name": "storageDetail", "part": [{"name": "type", "valueCode": "https"}]},
        *({"name": "input", "part": [{"name": "type", "valueCode": t}, {"name": "url", "valueUri": u}]}
          for t, u in inputs)]}


def _without_meta(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k != "meta"}


def test_import_of_another_servers_export(pair):
    a, b = pair
    manifest = wait_for(a, kick_off(a, "/$export"))
    body = _import_parameters([(item["type"], item["url"]) for item in manifest["output"]])
    result = wait_for(b, kick_off(b, "/$import", method="POST", json=body))
    assert result["error"] == []
    assert [(o["type"], o["count"]) for o in result["output"]] == [(i["type"], i["count"]) for i in manifest["output"]]
    for resources in exported(a, manifest).values():
        for resource in resources:
            copy = b.get(f"/{resource['resourceType']}/{resource['id']}")
            assert copy.status_code == 200 and _without_meta(copy.json()) == _without_meta(resource)
    searched = b.get("/Observation", params={"subject": "pt-3", "code": "http://loinc.org|85354-9"}).json()
    assert searched["total"] == 3  # imported resources are indexed for search


def test_upload_with_bad_lines_reports_each(pair):
    _, b = pair
    lines = [json.dumps({"resourceType": "Patient", "id": "up-1", "gender": "male"}),
             json.dumps({"resourceType": "Observation", "id": "up-2", "status": 42, "code": {"text": "x"}}),
             "",
             "{not json",
             json.dumps({"resourceType": "Patient", "id": "up-3", "gender": "female"})]
    status = kick_off(b, "/$import", method="POST", content="\n".join(lines) + "\n",
                      headers={"Content-Type": "application/fhir+ndjson"})
    manifest = wait_for(b, status)
    assert manifest["output"] == [{"type": "Resource", "inputUrl": "upload", "count": 2}]
    [error] = manifest["error"]
    assert error["count"] == 2
    outcomes = fetch_ndjson(b, error["url"])
    assert [o["issue"][0]["diagnostics"].split(":")[0] for o in outcomes] == ["the uploaded NDJSON line 2",
                                                                              "the uploaded NDJSON line 4"]
    assert outcomes[0]["issue"][0]["expression"] == ["Observation.status"]
    assert b.get("/Patient/up-3").json()["gender"] == "female"
    assert b.get("/Observation/up-2").status_code == 404


def test_inputs_of_the_wrong_type_or_unreachable_are_errors(pair):
    a, b = pair
    manifest = wait_for(a, kick_off(a, "/$export", params={"_type": "Practitioner"}))
    url = manifest["output"][0]["url"]
    missing = url.rsplit("/", 1)[0] + "/Nothing-1.ndjson"
    body = _import_parameters([("Patient", url), ("Patient", missing)])
    before = newest_history_entry(b)
    result = wait_for(b, kick_off(b, "/$import", method="POST", json=body))
    assert [o["count"] for o in result["output"]] == [0, 0]
    outcomes = fetch_ndjson(b, result["error"][0]["url"])
    texts = [o["issue"][0]["diagnostics"] for o in outcomes]
    assert texts[0] == f"{url} line 1: a Practitioner in an input of Patient resources"
    assert texts[1].startswith(f"{missing} line 1: fetching {missing} answered 404")
    assert newest_history_entry(b) == before  # nothing written


@pytest.mark.parametrize(("body", "where"), [
    ({"resourceType": "Patient"}, "resourceType"),
    ({"resourceType": "Parameters", "parameter": []}, "Parameters.parameter"),
    ({"resourceType": "Parameters", "parameter": [{"name": "inputFormat", "valueCode": "text/csv"}]},
     "Parameters.parameter[0].value"),
    ({"resourceType": "Parameters", "parameter": [{"name": "colour", "valueCode": "red"}]}, "Parameters.parameter[0]"),
    (_import_parameters([("Spaceship", "http://127.0.0.1:9/x.ndjson")]), "Parameters.parameter[3].part"),
    (_import_parameters([("Patient", "file:///etc/passwd")]), "Parameters.parameter[3].part"),
    (_import_parameters([("Patient", "http://127.0.0.1:9/x.ndjson")]), "Parameters.parameter[3].part"),
    ({"resourceType": "Parameters", "parameter": [{"name": "storageDetail", "valueString": "aws-s3"}]},
     "Parameters.parameter[0]"),
])
def test_bad_import_is_400(client, server, unchanged, body, where):
    before = {p.name for p in (server.data_dir / "bulk").iterdir()} if (server.data_dir / "bulk").exists() else set()
    response = client.post("/$import", json=body, headers=ASYNC)
    assert response.status_code == 400, response.text
    issue = response.json()["issue"][0]
    assert issue["expression"] == [where] and issue["diagnostics"]
    after = {p.name for p in (server.data_dir / "bulk").iterdir()} if (server.data_dir / "bulk").exists() else set()
    assert after == before


def test_import_needs_respond_async_and_a_known_body(client, unchanged):
    response = client.post("/$import", json=_import_parameters([]))
    assert response.status_code == 400 and response.json()["issue"][0]["expression"] == ["Prefer"]
    response = client.post("/$import", content="x", headers={**ASYNC, "Content-Type": "text/plain"})
    assert response.status_code == 415
    response = client.post("/$import", content=" \n", headers={**ASYNC, "Content-Type": "application/fhir+ndjson"})
    assert response.status_code == 400
