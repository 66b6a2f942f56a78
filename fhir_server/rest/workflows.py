"""HTTP routes of the alliance workflows: Patient $match, $merge and $everything, and $referral-stats.
The work is done in fhir_server/ops; these handlers only read the request and answer."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ..ops import everything as everything_op
from ..ops import patient_match, patient_merge, referral_stats
from .negotiation import read_resource_body, response_media_type
from .responses import base_url, fhir_response

router = APIRouter()


@router.post("/Patient/$match")
async def match(request: Request) -> Response:
    response_media_type(request)
    wanted = patient_match.read_request(await read_resource_body(request))
    return fhir_response(request, await patient_match.match(request.app.state.service, base_url(request), wanted))


@router.post("/Patient/$merge")
async def merge(request: Request) -> Response:
    response_media_type(request)
    wanted = patient_merge.read_request(await read_resource_body(request))
    return fhir_response(request, await patient_merge.merge(request.app.state.service, base_url(request), wanted))


async def _everything(request: Request, patient_id: str | None) -> Response:
    response_media_type(request)
    params = list(request.query_params.multi_items())
    bundle = await everything_op.everything(request.app.state.service, base_url(request), patient_id, params)
    return fhir_response(request, bundle)


@router.get("/Patient/$everything")
@router.post("/Patient/$everything")
async def everything_all(request: Request) -> Response:
    return await _everything(request, None)


@router.get("/Patient/{patient_id}/$everything")
@router.post("/Patient/{patient_id}/$everything")
async def everything(request: Request, patient_id: str) -> Response:
    return await _everything(request, patient_id)


@router.get(f"/${referral_stats.NAME}")
async def referral_stats_get(request: Request) -> Response:
    response_media_type(request)
    wanted = referral_stats.from_query(list(request.query_params.multi_items()))
    return fhir_response(request, await referral_stats.referral_stats(request.app.state.service, wanted))


@router.post(f"/${referral_stats.NAME}")
async def referral_stats_post(request: Request) -> Response:
    response_media_type(request)
    wanted = referral_stats.from_body(await read_resource_body(request))
    return fhir_response(request, await referral_stats.referral_stats(request.app.state.service, wanted))
