"""The FHIR R4 resource types this server serves (all concrete R4 types)."""

from __future__ import annotations

import json
import re
from importlib import resources

RESOURCE_TYPES: frozenset[str] = frozenset(
    json.loads(resources.files("fhir_server.model").joinpath("data/r4-resource-types.json").read_text())
)

# FHIR id: 1-64 of [A-Za-z0-9-.]
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def is_resource_type(name: str) -> bool:
    return name in RESOURCE_TYPES


def is_valid_id(value: str) -> bool:
    return bool(ID_RE.match(value))
