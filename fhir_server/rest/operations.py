"""HTTP routes of FHIR operations ($ecg-triage) and their OperationDefinitions. Included before the
generic routes, whose /{type}/{id} patterns would otherwise take these paths."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ..ecg import operation as ecg_operation
from ..model.outcome import BadRequest
from .negotiation import read_resource_body, response_media_type
from .responses import base_url, fhir_response

router = APIRouter()


def _persist(request: Request, from_body: bool | None) -> bool:
    from_query = ecg_operation.parse_persist(request.query_params.get("persist"))
    if from_body is not None and from_query is not None and from_body != from_query:
        raise BadRequest("persist in the Parameters and ?persist disagree", expression=["persist"])
    return bool(from_body if from_body is not None else from_query)


@router.get(f"/OperationDefinition/{ecg_operation.NAME}")
async def ecg_triage_definition(request: Request) -> Response:
    response_media_type(request)
    return fhir_response(request, ecg_operation.operation_definition(base_url(request)))


@router.post(f"/Observation/${ecg_operation.NAME}")
async def ecg_triage(request: Request) -> Response:
    response_media_type(request)
    observation, persist = ecg_operation.read_parameters(await read_resource_body(request), instance=False)
    result = await ecg_operation.triage(request.app.state.service, observation, persist=_persist(request, persist))
    return fhir_response(request, result)


@router.post(f"/Observation/{{resource_id}}/${ecg_operation.NAME}")
async def ecg_triage_stored(request: Request, resource_id: str) -> Response:
    response_media_type(request)
    persist = None
    if await request.body():
        _, persist = ecg_operation.read_parameters(await read_resource_body(request), instance=True)
    service = request.app.state.service
    stored = await service.read("Observation", resource_id)
    result = await ecg_operation.triage(service, orjson.loads(stored.content),
                                        persist=_persist(request, persist), source=f"Observation/{resource_id}")
    return fhir_response(request, result)
