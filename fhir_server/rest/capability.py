"""GET /metadata: a CapabilityStatement that lists only what really works (it grows with features)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .. import __version__
from ..model.types import RESOURCE_TYPES
from ..search.registry import Registry

_TYPE_INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                      "search-type"]
_COMMON_PARAMS = [("_id", "token"), ("_lastUpdated", "date"), ("_text", "string"), ("_content", "string")]
# operations per resource type: (name, path of its OperationDefinition on this server)
_OPERATIONS = {"Observation": [("ecg-triage", "OperationDefinition/ecg-triage")]}
_BULK = "http://hl7.org/fhir/uv/bulkdata"
_BULK_OPERATIONS = {"Patient": [("export", f"{_BULK}/OperationDefinition/patient-export")],
                    "Group": [("export", f"{_BULK}/OperationDefinition/group-export")]}


def _resource(rt: str, registry: Registry, base: str) -> dict[str, Any]:
    params = registry.params(rt)
    references = sorted(p.code for p in params.values() if p.type == "reference")
    search_params = [{"name": code, "type": kind} for code, kind in _COMMON_PARAMS]
    search_params += [{"name": p.code, "definition": p.url, "type": p.type} for p in
                      sorted(params.values(), key=lambda p: p.code)
                      if p.code not in ("_id", "_lastUpdated") and p.type != "special"]
    resource = {
        "type": rt,
        "interaction": [{"code": code} for code in _TYPE_INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "full-support",
        "conditionalUpdate": True,
        "conditionalDelete": "multiple",
        "searchInclude": ["*", *(f"{rt}:{code}" for code in references)],
        "searchRevInclude": ["*"],
        "searchParam": search_params,
    }
    operations = [{"name": name, "definition": f"{base}/{path}"} for name, path in _OPERATIONS.get(rt, [])]
    operations += [{"name": name, "definition": url} for name, url in _BULK_OPERATIONS.get(rt, [])]
    if operations:
        resource["operation"] = operations
    return resource


def capability_statement(base: str, backend: str, registry: Registry) -> dict[str, Any]:
    resources = [_resource(rt, registry, base) for rt in sorted(RESOURCE_TYPES)]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "publisher": "Alliance FHIR server",
        "kind": "instance",
        "software": {"name": "alliance-fhir-server", "version": __version__},
        "implementation": {"description": f"County medical alliance FHIR server ({backend})", "url": base},
        "instantiates": [f"{_BULK}/CapabilityStatement/bulk-data"],
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json", "application/json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"},
                            {"code": "search-system"}],
            "searchParam": [{"name": code, "type": kind} for code, kind in _COMMON_PARAMS[:2]]
            + [{"name": "_type", "type": "token"}],
            "operation": [{"name": "export", "definition": f"{_BULK}/OperationDefinition/export"}],
        }],
    }
