"""Every failure reaches the client as an OperationOutcome with the right status; never a traceback."""

from __future__ import annotations

import logging

import asyncpg
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from ..model.outcome import FhirError, Gone, ServiceUnavailable
from .responses import outcome_response

log = logging.getLogger("fhir_server.errors")

_HTTP_CODES = {404: "not-found", 405: "not-supported", 413: "too-costly"}


def is_query_timeout(exc: BaseException | None) -> bool:
    """A statement cancelled by FHIR_QUERY_TIMEOUT_S: PostgreSQL's statement_timeout, or SQLite's
    progress-handler interrupt; raw (asyncpg pool) or wrapped by SQLAlchemy."""
    seen = 0
    while exc is not None and seen < 5:
        if type(exc).__name__ == "QueryCanceledError" or (type(exc).__name__ == "OperationalError"
                                                          and str(exc).strip() == "interrupted"):
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__
        seen += 1
    return False


def _timed_out(request: Request):
    limit = request.app.state.settings.query_timeout_s
    log.warning("query timeout", extra={"path": request.url.path, "limit_s": limit})
    return outcome_response(request, ServiceUnavailable(
        f"The database query ran longer than {limit:g} s (FHIR_QUERY_TIMEOUT_S) and was cancelled; "
        "narrow the search (more selective parameters, smaller _count, fewer _include)", code="timeout"))


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
    # the same, met on the paths that use asyncpg without SQLAlchemy (reads, creates, the DICOM index)
    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.InsufficientResourcesError)  # disk full (507), too many connections
    @app.exception_handler(asyncpg.CannotConnectNowError)
    @app.exception_handler(asyncpg.AdminShutdownError)
    @app.exception_handler(asyncpg.CrashShutdownError)
    async def _database_down(request: Request, exc: Exception):
        if is_query_timeout(exc):
            return _timed_out(request)
        if "database or disk is full" in str(exc) or "No space left on device" in str(exc):
            log.error("database disk full", extra={"error": type(exc).__name__})
            return outcome_response(request, FhirError(
                "The database disk is full; nothing of this request was written. Free space and retry.",
                status=507, code="exception"))
        log.error("database unavailable", extra={"error": type(exc).__name__})
        return outcome_response(request, ServiceUnavailable("The database is unavailable; retry later"),
                                {"Retry-After": "5"})

    @app.exception_handler(DBAPIError)
    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        if is_query_timeout(exc):
            return _timed_out(request)
        log.exception("unhandled error")
        return outcome_response(request, FhirError("Internal server error", status=500, code="exception"))
