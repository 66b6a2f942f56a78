"""A small alliance population for the bulk data and view tests, and helpers to run bulk jobs."""

from __future__ import annotations

import json
import time

import httpx

LOINC = "http://loinc.org"
ORGANIZATIONS = ["county-hospital", "village-east", "village-west"]
PATIENTS = 12
GROUP_MEMBERS = [f"pt-{n}" for n in range(4)]


def blood_pressure(n: int, patient: str, organization: str, systolic: int, diastolic: int, when: str) -> dict:
    return {"resourceType": "Observation", "id": f"bp-{n}", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": {"coding": [{"system": LOINC, "code": "85354-9"}], "text": "Blood pressure"},
            "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": when,
            "performer": [{"reference": f"Organization/{organization}"}],
            "component": [
                {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                 "valueQuantity": {"value": systolic, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                   "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                 "valueQuantity": {"value": diastolic, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                   "code": "mm[Hg]"}}]}


def population() -> list[dict]:
    """Organizations, a Practitioner, Patients with Encounters, blood pressures and heart rates, a Group."""
    out: list[dict] = [{"resourceType": "Organization", "id": org, "name": org.replace("-", " ").title()}
                       for org in ORGANIZATIONS]
    out.append({"resourceType": "Practitioner", "id": "dr-li", "name": [{"family": "Li"}]})
    for n in range(PATIENTS):
        patient = f"pt-{n}"
        out.append({"resourceType": "Patient", "id": patient, "gender": "female" if n % 2 else "male",
                    "birthDate": f"19{50 + n}-03-0{1 + n % 9}",
                    "managingOrganization": {"reference": f"Organization/{ORGANIZATIONS[1 + n % 2]}"}})
        out.append({"resourceType": "Encounter", "id": f"enc-{n}", "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": f"Patient/{patient}"}})
        for k in range(3):
            number = 3 * n + k
            out.append(blood_pressure(number, patient, ORGANIZATIONS[1 + n % 2], 110 + number, 70 + number % 20,
                                      f"2026-0{1 + k}-1{n % 10}T08:30:00+08:00"))
        out.append({"resourceType": "Observation", "id": f"hr-{n}", "status": "final",
                    "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
                    "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": "2026-04-01T09:00:00Z",
                    "valueQuantity": {"value": 60 + n, "unit": "/min", "system": "http://unitsofmeasure.org",
                                      "code": "/min"}})
    out.append({"resourceType": "Group", "id": "village-east-hypertension", "type": "person", "actual": True,
                "member": [{"entity": {"reference": f"Patient/{p}"}} for p in GROUP_MEMBERS]})
    return out


def put_all(http: httpx.Client, resources: list[dict]) -> None:
    """Store resources with their ids, in batches of 500 (one batch Bundle each)."""
    for start in range(0, len(resources), 500):
        entries = [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                   for r in resources[start:start + 500]]
        response = http.post("/", json={"resourceType": "Bundle", "type": "batch", "entry": entries})
        assert response.status_code == 200, response.text
        assert all(e["response"]["status"].startswith("20") for e in response.json()["entry"])


ASYNC = {"Prefer": "respond-async"}


def kick_off(http: httpx.Client, path: str, **kwargs) -> str:
    """Start a bulk job; its status URL as a path on the server."""
    headers = {**ASYNC, **kwargs.pop("headers", {})}
    response = http.request(kwargs.pop("method", "GET"), path, headers=headers, **kwargs)
    assert response.status_code == 202, response.text
    location = response.headers["Content-Location"]
    assert location.startswith(str(http.base_url).rstrip("/") + "/bulkstatus/")
    return httpx.URL(location).path


def wait_for(http: httpx.Client, status_path: str, timeout: float = 60) -> dict:
    """Poll until the job is done; the manifest. Every in-progress answer carries the IG's headers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = http.get(status_path)
        if response.status_code == 200:
            assert response.headers["content-type"].startswith("application/json")
            return response.json()
        assert response.status_code == 202, response.text
        assert response.headers["X-Progress"] and response.headers["Retry-After"].isdigit()
        time.sleep(0.1)
    raise AssertionError(f"bulk job {status_path} did not finish in {timeout} s")


def fetch_ndjson(http: httpx.Client, url: str) -> list[dict]:
    response = http.get(httpx.URL(url).path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+ndjson")
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def exported(http: httpx.Client, manifest: dict, key: str = "output") -> dict[str, list[dict]]:
    """The resources of a manifest's files by type (several files of one type are joined)."""
    out: dict[str, list[dict]] = {}
    for item in manifest[key]:
        resources = fetch_ndjson(http, item["url"])
        assert len(resources) == item["count"]
        out.setdefault(item["type"], []).extend(resources)
    return out


def store_counts(http: httpx.Client, types) -> dict[str, int]:
    """Live resources per type in the store (types with none left out)."""
    counts = {t: http.get(f"/{t}", params={"_summary": "count"}).json()["total"] for t in types}
    return {t: n for t, n in counts.items() if n}
