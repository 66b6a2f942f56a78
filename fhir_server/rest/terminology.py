"""HTTP routes of the terminology operations ($lookup, $validate-code, $subsumes, $expand, $translate)
and of $validate, at type and instance level. The work is done in fhir_server/terminology."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ..terminology import operations
from ..terminology.parameters import OperationInput
from ..terminology.validation import validate_operation
from .negotiation import read_resource_body, response_media_type
from .responses import fhir_response

router = APIRouter()

# resource type -> {operation name: implementation}
OPERATIONS = {
    "CodeSystem": {"lookup": operations.lookup, "validate-code": operations.validate_code_cs,
                   "subsumes": operations.subsumes},
    "ValueSet": {"expand": operations.expand, "validate-code": operations.validate_code_vs},
    "ConceptMap": {"translate": operations.translate_op},
}


async def _body(request: Request):
    if request.method != "POST" or not (await request.body()).strip():
        return None
    return await read_resource_body(request)


def _query(request: Request) -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.query_params.multi_items() if k not in ("_format", "_pretty")]


def _routes(resource_type: str, name: str, implementation) -> None:
    async def type_level(request: Request) -> Response:
        response_media_type(request)
        inp = OperationInput(_query(request), await _body(request))
        return fhir_response(request, await implementation(request.app.state.service.terminology.scoped(), inp))

    async def instance_level(request: Request, resource_id: str) -> Response:
        response_media_type(request)
        inp = OperationInput(_query(request), await _body(request))
        term = request.app.state.service.terminology.scoped()
        resource = await term.definitions.read(resource_type, resource_id)
        return fhir_response(request, await implementation(term, inp, resource))

    methods = ["GET", "POST"]
    router.add_api_route(f"/{resource_type}/${name}", type_level, methods=methods, include_in_schema=True,
                         summary=f"{resource_type} ${name}")
    router.add_api_route(f"/{resource_type}/{{resource_id}}/${name}", instance_level, methods=methods,
                         summary=f"{resource_type} ${name} (instance)")


for _type, _operations in OPERATIONS.items():
    for _name, _implementation in _operations.items():
        _routes(_type, _name, _implementation)


@router.post("/{resource_type}/$validate")
async def validate_type(request: Request, resource_type: str) -> Response:
    response_media_type(request)
    outcome = await validate_operation(request.app.state.service, resource_type, _query(request),
                                       await _body(request))
    return fhir_response(request, outcome)


@router.api_route("/{resource_type}/{resource_id}/$validate", methods=["GET", "POST"])
async def validate_instance(request: Request, resource_type: str, resource_id: str) -> Response:
    response_media_type(request)
    outcome = await validate_operation(request.app.state.service, resource_type, _query(request),
                                       await _body(request), resource_id)
    return fhir_response(request, outcome)
