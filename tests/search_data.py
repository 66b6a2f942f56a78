"""Shared helpers for the search tests: resource builders, loading with client ids, and searchset readers.

Every search module loads its own small data set into a `fresh_client` store (an empty store per module
and backend), so expected results can be written as exact sets of ids."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import httpx

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SUBSETTED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "SUBSETTED")
XHTML = "http://www.w3.org/1999/xhtml"

Params = dict[str, str] | list[tuple[str, str]]


# ---------------------------------------------------------------- builders


def narrative(text: str) -> dict[str, str]:
    return {"status": "generated", "div": f'<div xmlns="{XHTML}"><p>{text}</p></div>'}


def human_name(family: str | None = None, given: list[str] | None = None, text: str | None = None) -> dict:
    name: dict[str, Any] = {}
    if family is not None:
        name["family"] = family
    if given:
        name["given"] = given
    if text is not None:
        name["text"] = text
    return name


def patient(pid: str, family: str | None = None, given: list[str] | None = None, **fields: Any) -> dict:
    resource: dict[str, Any] = {"resourceType": "Patient", "id": pid}
    if family is not None or given:
        resource["name"] = [human_name(family, given)]
    resource.update(fields)
    return resource


def organization(oid: str, name: str | None = None, **fields: Any) -> dict:
    resource: dict[str, Any] = {"resourceType": "Organization", "id": oid}
    if name is not None:
        resource["name"] = name
    resource.update(fields)
    return resource


def coding(system: str | None, code: str, display: str | None = None) -> dict:
    out: dict[str, Any] = {"code": code}
    if system is not None:
        out["system"] = system
    if display is not None:
        out["display"] = display
    return out


def concept(system: str | None, code: str, display: str | None = None, text: str | None = None) -> dict:
    out: dict[str, Any] = {"coding": [coding(system, code, display)]}
    if text is not None:
        out["text"] = text
    return out


def quantity(value: float | int, unit: str | None = None, system: str | None = UCUM,
             code: str | None = None) -> dict:
    out: dict[str, Any] = {"value": value}
    if unit is not None:
        out["unit"] = unit
    if system is not None:
        out["system"] = system
        out["code"] = code if code is not None else unit
    elif code is not None:
        out["code"] = code
    return out


def observation(oid: str, code: dict | None = None, subject: str | dict | None = None, **fields: Any) -> dict:
    """An R4 Observation (status final); `subject` is a reference string such as "Patient/p-1" or a Reference."""
    resource: dict[str, Any] = {"resourceType": "Observation", "id": oid, "status": "final",
                                "code": code or concept(LOINC, "8867-4", "Heart rate")}
    if subject is not None:
        resource["subject"] = {"reference": subject} if isinstance(subject, str) else subject
    resource.update(fields)
    return resource


def ref(reference: str) -> dict[str, str]:
    return {"reference": reference}


# ---------------------------------------------------------------- loading


def put(client: httpx.Client, resource: dict) -> dict:
    """Create (or update) a resource with its client id; returns the stored resource."""
    r = client.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
    assert r.status_code in (200, 201), f"{resource['resourceType']}/{resource['id']}: {r.status_code} {r.text}"
    return r.json()


def put_all(client: httpx.Client, resources: list[dict]) -> None:
    for resource in resources:
        put(client, resource)


def delete(client: httpx.Client, resource_type: str, rid: str) -> None:
    r = client.delete(f"/{resource_type}/{rid}")
    assert r.status_code in (200, 204), r.text


# ---------------------------------------------------------------- searching


def _with_count(params: Params | None, count: int | None) -> list[tuple[str, str]]:
    items = list(params.items()) if isinstance(params, dict) else list(params or [])
    if count is not None and not any(k == "_count" for k, _ in items):
        items.append(("_count", str(count)))
    return items


def base_of(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")


def check_searchset(client: httpx.Client, bundle: dict) -> dict:
    """The shape every searchset Bundle must have, whatever the query."""
    assert bundle["resourceType"] == "Bundle", bundle
    assert bundle["type"] == "searchset"
    assert any(link["relation"] == "self" for link in bundle.get("link", [])), bundle.get("link")
    base = base_of(client)
    for entry in bundle.get("entry", []):
        mode = entry["search"]["mode"]
        assert mode in ("match", "include", "outcome"), entry["search"]
        resource = entry["resource"]
        if mode == "outcome":
            assert resource["resourceType"] == "OperationOutcome"
        else:
            assert entry["fullUrl"] == f"{base}/{resource['resourceType']}/{resource['id']}"
    return bundle


def search(client: httpx.Client, path: str, params: Params | None = None, *, count: int | None = 100,
           headers: dict[str, str] | None = None) -> dict:
    """GET a search and return the (checked) searchset Bundle. `_count=100` unless `params` set one.
    `path` may be a full paging link: pass count=None and no params, so its query is kept as it is."""
    r = client.get(path, params=_with_count(params, count) or None, headers=headers)
    assert r.status_code == 200, f"{path} {params}: {r.status_code} {r.text}"
    return check_searchset(client, r.json())


def post_search(client: httpx.Client, path: str, params: Params | None = None, *, count: int | None = 100,
                headers: dict[str, str] | None = None) -> dict:
    """POST [path]/_search with an application/x-www-form-urlencoded body."""
    body = urlencode(_with_count(params, count))
    r = client.post(path, content=body.encode(),
                    headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
    assert r.status_code == 200, f"POST {path} {params}: {r.status_code} {r.text}"
    return check_searchset(client, r.json())


def entries(bundle: dict, mode: str = "match") -> list[dict]:
    return [e for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def match_ids(bundle: dict) -> set[str]:
    return {e["resource"]["id"] for e in entries(bundle, "match")}


def match_list(bundle: dict) -> list[str]:
    """Ids of the matches in Bundle order (for _sort and paging)."""
    return [e["resource"]["id"] for e in entries(bundle, "match")]


def include_refs(bundle: dict) -> list[str]:
    """"Type/id" of every included entry, in order, duplicates kept (so a test can assert there are none)."""
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries(bundle, "include")]


def ids(client: httpx.Client, path: str, params: Params | None = None, **kwargs: Any) -> set[str]:
    return match_ids(search(client, path, params, **kwargs))


def link(bundle: dict, relation: str) -> str | None:
    urls = [item["url"] for item in bundle.get("link", []) if item["relation"] == relation]
    return urls[0] if urls else None


def has_tag(resource: dict, system: str, code: str) -> bool:
    return any(t.get("system") == system and t.get("code") == code for t in resource.get("meta", {}).get("tag", []))
