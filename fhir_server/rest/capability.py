"""GET /metadata: a CapabilityStatement that lists only what really works (it grows with features)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .. import __version__
from ..model.types import RESOURCE_TYPES
from ..search.registry import Registry
from .subscriptions import EXTENSION as WEBSOCKET_EXTENSION
from .subscriptions import websocket_url

_TYPE_INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                      "search-type"]
_COMMON_PARAMS = [("_id", "token"), ("_lastUpdated", "date"), ("_text", "string"), ("_content", "string")]
_HL7_OPERATION = "http://hl7.org/fhir/OperationDefinition/"
_BULK = "http://hl7.org/fhir/uv/bulkdata"
# operations per resource type: (name, path of its OperationDefinition on this server, or its canonical URL)
_OPERATIONS = {"Observation": [("ecg-triage", "OperationDefinition/ecg-triage")],
               "Patient": [(name, f"http://hl7.org/fhir/OperationDefinition/Patient-{name}")
                           for name in ("match", "merge", "everything")]
               + [("export", f"{_BULK}/OperationDefinition/patient-export")],
               "Group": [("export", f"{_BULK}/OperationDefinition/group-export")]}
_TERMINOLOGY_OPERATIONS = {"CodeSystem": ["lookup", "validate-code", "subsumes"],
                           "ValueSet": ["expand", "validate-code"], "ConceptMap": ["translate"]}
_TOKEN_MODIFIERS = "Modifiers: :missing, :not, :text, :of-type (identifier), :in, :not-in (a ValueSet), " \
                   ":below, :above (subsumption in a code system this server holds)"


def _operations(rt: str, base: str) -> list[dict[str, str]]:
    listed = [{"name": name, "definition": path if "://" in path else f"{base}/{path}"}
              for name, path in _OPERATIONS.get(rt, [])]
    listed += [{"name": name, "definition": f"{_HL7_OPERATION}{rt}-{name}"}
               for name in _TERMINOLOGY_OPERATIONS.get(rt, [])]
    return [*listed, {"name": "validate", "definition": f"{_HL7_OPERATION}Resource-validate"}]


def _resource(rt: str, registry: Registry, base: str) -> dict[str, Any]:
    params = registry.params(rt)
    references = sorted(p.code for p in params.values() if p.type == "reference")
    search_params = [{"name": code, "type": kind} for code, kind in _COMMON_PARAMS]
    search_params += [{"name": p.code, "definition": p.url, "type": p.type} for p in
                      sorted(params.values(), key=lambda p: p.code)
                      if p.code not in ("_id", "_lastUpdated") and p.type != "special"]
    for param in search_params:
        if param["type"] == "token" and param["name"] != "_id":
            param["documentation"] = _TOKEN_MODIFIERS
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
    resource["operation"] = _operations(rt, base)
    return resource


def smart_security(base: str) -> dict[str, Any]:
    """rest.security of a server protected by SMART on FHIR (SMART App Launch: the oauth-uris extension)."""
    return {
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR"}], "text": "OAuth2 using SMART-on-FHIR profile"}],
        "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                       "extension": [{"url": name, "valueUri": f"{base}/auth/{name}"}
                                     for name in ("authorize", "token", "introspect", "revoke")]}],
        "description": f"SMART App Launch and Backend Services; see {base}/.well-known/smart-configuration",
    }


def capability_statement(base: str, backend: str, registry: Registry, smart: bool = False) -> dict[str, Any]:
    resources = [_resource(rt, registry, base) for rt in sorted(RESOURCE_TYPES)]
    statement = {
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
            "extension": [{"url": WEBSOCKET_EXTENSION, "valueUri": websocket_url(base)}],  # Subscription channel
            "mode": "server",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"},
                            {"code": "search-system"}],
            "searchParam": [{"name": code, "type": kind} for code, kind in _COMMON_PARAMS[:2]]
            + [{"name": "_type", "type": "token"}],
            "operation": [{"name": "export", "definition": f"{_BULK}/OperationDefinition/export"}],
        }],
    }
    if smart:
        statement["rest"][0]["security"] = smart_security(base)
    return statement
