"""Every failure reaches the client as an OperationOutcome with the right status; never a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from ..model.outcome import FhirError, Gone, ServiceUnavailable
from .responses import outcome_response

log = logging.getLogger("fhir_server.errors")

_HTTP_CODES = {404: "not-found", 405: "not-supported", 413: "too-costly"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FhirError)
    async def _fhir_error(request: Request, exc: FhirError):
        headers = None
        if isinstance(exc, Gone):
            headers = {"ETag": f'W/"{exc.version_id}"'}
        return outcome_response(request, exc, headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "Request failed"
        if exc.status_code == 404:
            detail = f"No such endpoint: {request.method} {request.url.path}"
        error = FhirError(detail, status=exc.status_code, code=_HTTP_CODES.get(exc.status_code, "processing"))
        return outcome_response(request, error, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _request_error(request: Request, exc: RequestValidationError):
        return outcome_response(request, FhirError(f"Invalid request: {exc.errors()[:3]}"))

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(ConnectionError)
    @app.exception_handler(OSError)
    async def _database_down(request: Request, exc: Exception):
        log.error("database unavailable", extra={"error": type(exc).__name__})
        return outcome_response(request, ServiceUnavailable("The database is unavailable; retry later"),
                                {"Retry-After": "5"})

    @app.exception_handler(DBAPIError)
    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error")
        return outcome_response(request, FhirError("Internal server error", status=500, code="exception"))
