"""PostgreSQL pool: a connection that sat idle is pinged before use, so a database restart (here: every
session of the database terminated) while the server idled costs no failed request; a connection in
steady use is not pinged (SQLAlchemy's pool_pre_ping cost three round trips at every checkout)."""

from __future__ import annotations

import asyncio

import pytest
from conftest import _fresh_database_env, pg_fetch
from sqlalchemy.exc import DBAPIError

from fhir_server.settings import Settings
from fhir_server.store import open_store, postgres


@pytest.fixture
def database_url(request) -> str:
    return _fresh_database_env(request, "postgresql")["FHIR_DATABASE_URL"]


@pytest.fixture
async def store(database_url, monkeypatch):
    monkeypatch.setattr(postgres, "IDLE_PING_S", 0.2)
    store = open_store(Settings(database_url=database_url, terminology_load=False))
    await store.migrate()
    yield store
    await store.close()


async def terminate_sessions(url: str) -> int:
    """End every other session of the database, as a restart of PostgreSQL would."""
    rows = await pg_fetch(url, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                               " WHERE datname = current_database() AND pid <> pg_backend_pid()")
    return rows[0][0]


async def history_size(store) -> int:
    return len((await store.history(count=10)).entries)


async def test_an_idle_connection_is_pinged_and_replaced_without_a_failed_request(store, database_url):
    await history_size(store)  # a pooled connection
    assert await terminate_sessions(database_url) >= 1
    await asyncio.sleep(0.3)  # longer than IDLE_PING_S
    assert await history_size(store) == 0


async def test_a_busy_connection_is_not_pinged(store, database_url):
    await history_size(store)
    assert await terminate_sessions(database_url) >= 1
    # used a moment ago: no ping, so the dead connection is found by the query itself, which fails ...
    with pytest.raises(DBAPIError) as failed:
        await history_size(store)
    assert failed.value.connection_invalidated
    # ... and the pool is refilled at once
    assert await history_size(store) == 0
