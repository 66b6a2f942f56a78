"""Builders shared by the write tests (bundles, conditional interactions, PATCH)."""

from __future__ import annotations

import uuid

SYS = "urn:oid:1.2.3"


def uid() -> str:
    return uuid.uuid4().hex[:12]


def ident(value: str) -> list[dict]:
    return [{"system": SYS, "value": value}]


def new_patient(value: str, **fields) -> dict:
    return {"resourceType": "Patient", "identifier": ident(value), **fields}
