"""HTTP endpoints of the SMART on FHIR authorization server (auth/server.py makes the decisions):
discovery, JWKS, the authorization request with its login and consent pages, token, introspection,
revocation, and EHR launch contexts."""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidRequestError, OAuth2Error
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from ..auth.grant import current_grant
from ..auth.pages import consent_page, error_page, login_page
from ..auth.server import PREFIX, AuthServer, PageError, Pending, Redirect
from ..model.outcome import FhirError
from .responses import base_url

router = APIRouter(include_in_schema=False)

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_PAGE_HEADERS = {**_NO_STORE, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
                                            "base-uri 'none'"}


def _auth(request: Request) -> AuthServer:
    return request.app.state.auth


def _cookie(request_id: str) -> str:
    return f"fhir_auth_{request_id[:16]}"


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status, headers=_PAGE_HEADERS)


def _redirect(target: Redirect) -> Response:
    return RedirectResponse(target.url, status_code=303, headers=_NO_STORE)


def _oauth_error(error: OAuth2Error) -> JSONResponse:
    status, body, headers = error()
    return JSONResponse(body, status, headers={**dict(headers), **_NO_STORE})


async def _form(request: Request) -> dict[str, Any]:
    form = await request.form()
    return {key: form.getlist(key) if key == "scope" and len(form.getlist(key)) > 1 else value
            for key, value in form.items()}


@router.get("/.well-known/smart-configuration")
async def smart_configuration(request: Request) -> JSONResponse:
    return JSONResponse(_auth(request).configuration(base_url(request)))


@router.get("/.well-known/openid-configuration")
async def openid_configuration(request: Request) -> JSONResponse:
    return JSONResponse(_auth(request).openid_configuration(base_url(request)))


@router.get(PREFIX + "/jwks")
async def jwks(request: Request) -> JSONResponse:
    return JSONResponse(await _auth(request).keys.jwks(), headers={"Cache-Control": "max-age=300"})


@router.api_route(PREFIX + "/authorize", methods=["GET", "POST"])
async def authorize(request: Request) -> Response:
    query = dict(request.query_params) if request.method == "GET" else {k: str(v) for k, v in
                                                                          (await request.form()).items()}
    try:
        result = await _auth(request).authorize(query, base_url(request))
    except PageError as exc:
        return _html(error_page(str(exc)), exc.status)
    if isinstance(result, Redirect):
        return _redirect(result)
    page = _html(login_page(result))
    page.set_cookie(_cookie(result.id), result.csrf, max_age=request.app.state.settings.auth_request_ttl_s,
                    path=PREFIX, httponly=True, samesite="lax", secure=request.url.scheme == "https")
    return page


async def _pending(request: Request, request_id: str, csrf: str | None) -> Pending:
    return await _auth(request).pending(request_id, request.cookies.get(_cookie(request_id)), csrf)


@router.post(PREFIX + "/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    try:
        pending = await _pending(request, str(form.get("request", "")), str(form.get("csrf", "")))
        auth = _auth(request)
        if not await auth.login(pending, str(form.get("username", "")), str(form.get("password", ""))):
            return _html(login_page(pending, str(form.get("username", ""))))
        if pending.needs_patient_choice():
            await auth.find_patients(pending, "", base_url(request))
    except PageError as exc:
        return _html(error_page(str(exc)), exc.status)
    return _html(consent_page(pending))


@router.get(PREFIX + "/consent")
async def consent_search(request: Request) -> Response:
    """The patient picker's name search: the consent page again, with the patients that match."""
    try:
        pending = await _pending(request, request.query_params.get("request", ""), None)
        if pending.user is None:
            raise PageError("Log in first.", status=403)
        await _auth(request).find_patients(pending, request.query_params.get("q", ""), base_url(request))
    except PageError as exc:
        return _html(error_page(str(exc)), exc.status)
    return _html(consent_page(pending))


@router.post(PREFIX + "/consent")
async def consent(request: Request) -> Response:
    form = await _form(request)
    ticked = form.get("scope", [])
    ticked = [ticked] if isinstance(ticked, str) else ticked
    try:
        pending = await _pending(request, str(form.get("request", "")), str(form.get("csrf", "")))
        auth = _auth(request)
        patient = str(form.get("patient_id") or form.get("patient") or "").strip() or None
        result = await auth.decide(pending, form.get("action") == "approve", ticked, patient, base_url(request))
        if result is None:
            await auth.find_patients(pending, "", base_url(request))
            return _html(consent_page(pending))
    except PageError as exc:
        return _html(error_page(str(exc)), exc.status)
    response = _redirect(result)
    response.delete_cookie(_cookie(pending.id), path=PREFIX)
    return response


async def _token_form(request: Request) -> dict[str, str]:
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise InvalidRequestError("The body must be application/x-www-form-urlencoded")
    return {k: str(v) for k, v in (await request.form()).items()}


async def _form_endpoint(request: Request, handle) -> Response:
    """token, introspect, revoke: a form in, JSON (or an empty 200) out, RFC 6749 errors as JSON."""
    try:
        form = await _token_form(request)
        answer = await handle(form, request.headers.get("authorization"), base_url(request))
    except OAuth2Error as error:
        return _oauth_error(error)
    if answer is None:
        return Response(status_code=200, headers=_NO_STORE)
    return JSONResponse(answer, headers=_NO_STORE)


@router.post(PREFIX + "/token")
async def token(request: Request) -> Response:
    return await _form_endpoint(request, _auth(request).token)


@router.post(PREFIX + "/introspect")
async def introspect(request: Request) -> Response:
    return await _form_endpoint(request, _auth(request).introspect)


@router.post(PREFIX + "/revoke")
async def revoke(request: Request) -> Response:
    return await _form_endpoint(request, _auth(request).revoke)


@router.post(PREFIX + "/launch")
async def launch(request: Request) -> Response:
    """An EHR asks for a `launch` value that carries its patient (and encounter) to the app it launches.
    The EHR calls with its own token (a user/ or system/ scope); the answer is {"launch": "..."}."""
    grant = current_grant.get()
    if grant is None or not any(s.startswith(("user/", "system/")) for s in grant.scopes):
        raise FhirError("Creating a launch context needs a token with a user/ or system/ scope",
                        expression=["Authorization"], status=403, code="forbidden")
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("patient"), str) or not body["patient"]:
        raise FhirError('The body must be JSON {"patient": "<id>", "encounter": "<id>" (optional)}',
                        expression=["patient"])
    encounter = body.get("encounter")
    if encounter is not None and not isinstance(encounter, str):
        raise FhirError("encounter must be a string (an Encounter id)", expression=["encounter"])
    service = request.app.state.service
    await service.read("Patient", body["patient"])  # 404 for an unknown patient
    if encounter:
        await service.read("Encounter", encounter)
    value = await _auth(request).tokens.create_launch(body["patient"], encounter)
    return JSONResponse({"launch": value}, 201, headers=_NO_STORE)
