"""A bulk load leaves PostgreSQL's planner statistics up to date (`fhir-server load` and `$import` run ANALYZE
when they have written something): until autovacuum's next look, a store filled a moment ago would plan its
searches as if its tables were empty."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
from bulk_data import kick_off, wait_for
from conftest import _fresh_database_env, start_server, stop_server
from pgcluster import free_port

from fhir_server.settings import Settings
from fhir_server.store import open_store

FHIR_SERVER = str(Path(sys.executable).parent / "fhir-server")
TABLES = ("resources", "resource_versions", "search_token", "search_reference")


def analyzed(url: str) -> dict[str, bool]:
    """Whether each table has been ANALYZEd by hand (not by autovacuum) since the database was made."""
    async def fetch():
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT relname, last_analyze IS NOT NULL AS done FROM pg_stat_user_tables"
                                    " WHERE relname = ANY($1::text[])", list(TABLES))
            return {r["relname"]: r["done"] for r in rows}
        finally:
            await conn.close()
    return asyncio.run(fetch())


def observations(count: int) -> str:
    return "".join(json.dumps({
        "resourceType": "Observation", "id": f"stat-{i}", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/p-{i % 5}"}}) + "\n" for i in range(count))


def test_fhir_server_load_analyzes_what_it_filled(request, tmp_path):
    env = {**_fresh_database_env(request, "postgresql"), "FHIR_DATA_DIR": str(tmp_path / "data"),
           "FHIR_TERMINOLOGY_LOAD": "false"}
    subprocess.run([FHIR_SERVER, "migrate"], env={**os.environ, **env}, check=True, capture_output=True, timeout=120)
    assert analyzed(env["FHIR_DATABASE_URL"]) == dict.fromkeys(TABLES, False)
    (tmp_path / "obs.ndjson").write_text(observations(300))
    done = subprocess.run([FHIR_SERVER, "load", "--quiet", "--rejects", str(tmp_path / "rejects.ndjson"),
                           str(tmp_path / "obs.ndjson")], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert analyzed(env["FHIR_DATABASE_URL"]) == dict.fromkeys(TABLES, True)


def test_an_import_analyzes_what_it_filled(request):
    env = _fresh_database_env(request, "postgresql")
    server = start_server({**env, "FHIR_TERMINOLOGY_LOAD": "false"})
    try:
        assert analyzed(env["FHIR_DATABASE_URL"]) == dict.fromkeys(TABLES, False)
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            status = kick_off(http, "/$import", method="POST", content=observations(300),
                              headers={"Content-Type": "application/fhir+ndjson"})
            assert wait_for(http, status)["output"][0]["count"] == 300
        assert analyzed(env["FHIR_DATABASE_URL"]) == dict.fromkeys(TABLES, True)
    finally:
        stop_server(server)


def test_a_failed_analyze_is_a_warning_not_a_failed_load(caplog):
    # the load is committed by then: a database gone away meanwhile must not turn it into an error


    store = open_store(Settings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/fhir"))

    async def refresh() -> None:
        try:
            await store.refresh_statistics()
        finally:
            await store.close()

    asyncio.run(refresh())
    assert any(r.levelname == "WARNING" and r.getMessage() == "ANALYZE after a bulk load failed"
               for r in caplog.records)
