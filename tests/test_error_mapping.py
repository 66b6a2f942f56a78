"""Database failures met on the asyncpg-only paths (reads, plain creates, the DICOM index) map to the same
answers as through SQLAlchemy: a lost or refused connection and a shutting-down server are 503 with
Retry-After, anything else unexpected is a 500 OperationOutcome without a traceback."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from fhir_server.rest.errors import install_error_handlers

RAISED = {
    "lost": asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    "failure": asyncpg.exceptions.ConnectionFailureError("connection failure"),
    "starting": asyncpg.CannotConnectNowError("the database system is starting up"),
    "shutdown": asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    "crash": asyncpg.CrashShutdownError("terminating connection because of crash of another server process"),
    "refused": ConnectionRefusedError(111, "Connection refused"),
    "connections": asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    "disk": asyncpg.DiskFullError('could not extend file "base/16384/16385": No space left on device'),
    "bug": asyncpg.UndefinedColumnError('column "nope" does not exist'),
}


@pytest.fixture(scope="module")
def app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/raise/{name}")
    async def raise_it(name: str):
        raise RAISED[name]

    return app


async def answer(app: FastAPI, name: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                 base_url="http://test") as client:
        return await client.get(f"/raise/{name}")


@pytest.mark.parametrize("name", ["lost", "failure", "starting", "shutdown", "crash", "refused", "connections"])
async def test_a_database_gone_away_is_503_with_retry_after(app, name):
    response = await answer(app, name)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "transient"


async def test_a_full_database_disk_is_507(app):
    response = await answer(app, "disk")
    assert response.status_code == 507
    assert "nothing of this request was written" in response.json()["issue"][0]["diagnostics"]


async def test_any_other_database_error_is_500_without_its_text(app):
    response = await answer(app, "bug")
    assert response.status_code == 500
    assert response.json()["issue"][0]["code"] == "exception"
    assert "nope" not in response.text and "Traceback" not in response.text
