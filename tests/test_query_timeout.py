"""FHIR_QUERY_TIMEOUT_S: a runaway statement is cancelled by the database (PostgreSQL statement_timeout)
or interrupted (SQLite progress handler), is recognised as a timeout (answered 503 `timeout`, not a
generic 500), and the connection stays usable. Migrations run without the limit."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from fhir_server.rest.errors import is_query_timeout
from fhir_server.settings import Settings
from fhir_server.store import open_store

SLOW = {"sqlite": "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 1000000000) "
                  "SELECT count(*) FROM r",
        "postgresql": "SELECT pg_sleep(5)"}


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request, tmp_path):
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else ""
    opened = open_store(Settings(data_dir=tmp_path, database_url=url, query_timeout_s=0.3))
    await opened.migrate()
    yield opened
    await opened.close()


async def test_a_runaway_statement_is_cancelled_and_the_connection_reused(store):
    for engine in (store.read_engine, store.write_engine):
        async with engine.connect() as conn:
            started = time.monotonic()
            with pytest.raises(Exception) as caught:
                await conn.execute(text(SLOW[store.backend]))
            assert time.monotonic() - started < 3
            assert is_query_timeout(caught.value)
            await conn.rollback()
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    await store.ping()
    if store.backend == "postgresql":  # the asyncpg pool that reads go through has the limit too
        with pytest.raises(Exception) as caught:
            await (await store._pool()).fetchval(SLOW["postgresql"])
        assert is_query_timeout(caught.value)


def test_other_database_errors_are_not_timeouts():
    assert not is_query_timeout(RuntimeError("interrupted"))
    assert not is_query_timeout(ValueError("x"))
