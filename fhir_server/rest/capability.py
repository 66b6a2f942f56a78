"""GET /metadata: a CapabilityStatement that lists only what really works (it grows with features)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .. import __version__
from ..model.types import RESOURCE_TYPES

_TYPE_INTERACTIONS = ["read", "vread", "update", "delete", "history-instance", "history-type", "create"]


def capability_statement(base: str, backend: str) -> dict[str, Any]:
    resources = [{
        "type": rt,
        "interaction": [{"code": code} for code in _TYPE_INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalRead": "full-support",
        "conditionalDelete": "not-supported",
    } for rt in sorted(RESOURCE_TYPES)]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "publisher": "Alliance FHIR server",
        "kind": "instance",
        "software": {"name": "alliance-fhir-server", "version": __version__},
        "implementation": {"description": f"County medical alliance FHIR server ({backend})", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json", "application/json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [{"code": "history-system"}],
        }],
    }
