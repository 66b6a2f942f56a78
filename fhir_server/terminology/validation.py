"""The $validate operation: the base FHIR model, then the profiles asked for (`profile`) and those the
resource declares (meta.profile). It reports every issue and never writes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from ..model.outcome import BadRequest, Issue, operation_outcome
from ..model.validate import InvalidResource, validate_resource
from .parameters import OperationInput

if TYPE_CHECKING:
    from ..service import ResourceService

MODES = ("create", "update", "delete", "profile")


async def validate_operation(service: ResourceService, resource_type: str, query: list[tuple[str, str]],
                             body: dict[str, Any] | None, resource_id: str | None = None) -> dict[str, Any]:
    """The OperationOutcome of $validate (answered with 200 whether or not the resource is valid)."""
    from ..service import check_body_type, check_id, check_type

    check_type(resource_type)
    if resource_id is not None:
        check_id(resource_id)
    if body is not None and body.get("resourceType") == "Parameters" and resource_type != "Parameters":
        inp = OperationInput(query, body)
        resource = inp.resource("resource")
    else:
        inp = OperationInput(query)
        resource = body
    mode = inp.string("mode")
    if mode is not None and mode not in MODES:
        raise BadRequest(f"mode must be one of {', '.join(MODES)}, not {mode!r}", expression=["mode"])
    if mode == "delete" or resource is None:
        if resource_id is None:
            raise BadRequest("A resource to validate is required (the body, or a 'resource' parameter)",
                             expression=["resource"])
        stored = await service.read(resource_type, resource_id)  # 404 / 410 when there is none
        if mode == "delete":  # nothing in this server forbids deleting a resource that exists
            return operation_outcome([Issue("informational", "The resource may be deleted", "information")])
        resource = orjson.loads(stored.content)
    check_body_type(resource_type, resource)
    issues: list[Issue] = []
    body_id = resource.get("id")
    if (mode == "update" or resource_id is not None) and body_id != resource_id:
        message = (f"The resource id {body_id!r} is not the id of the URL ({resource_id!r})" if resource_id
                   else "An update needs the resource's id")
        issues.append(Issue("invalid", message, expression=[f"{resource_type}.id"]))
    try:
        validate_resource(resource, resource_type)
    except InvalidResource as exc:
        issues += exc.issues
    term = service.terminology.scoped()
    requested = inp.string("profile")
    if requested:
        if await term.definitions.find("StructureDefinition", requested) is None:
            raise BadRequest(f"Profile {requested} is not known to this server", expression=["profile"],
                             code="not-found")
        issues += await term.profile_issues(resource, [requested])
    declared = [p for p in (resource.get("meta") or {}).get("profile") or [] if isinstance(p, str) and p != requested]
    issues += await term.profile_issues(resource, declared, declared_only=True)
    if not issues:
        issues = [Issue("informational", "All OK", "information")]
    return operation_outcome(issues)
