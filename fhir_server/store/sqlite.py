"""The embedded default backend: one SQLite file in the data directory (aiosqlite), WAL mode.

Writers take the database lock at BEGIN (BEGIN IMMEDIATE), so a read-then-write transaction never
fails half-way on lock upgrade; readers use a separate engine with plain deferred transactions."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
from sqlalchemy import event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

from ..model.outcome import Conflict
from ..settings import Settings
from .base import ResourceVersion
from .coalesce import BATCH_MAX_CHARS, Coalescer
from .sql import SqlResourceStore, identity_json


def _engine(url: str, settings: Settings, *, begin: str, pool_size: int) -> AsyncEngine:
    engine = create_async_engine(url, json_serializer=identity_json, json_deserializer=identity_json,
                                 pool_size=pool_size, max_overflow=0, pool_timeout=60)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's own handling is broken)
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(settings.sqlite_busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {settings.sqlite_synchronous}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql(begin)

    if settings.query_timeout_s > 0:
        _interrupt_slow_statements(engine, settings.query_timeout_s)
    return engine


def _interrupt_slow_statements(engine: AsyncEngine, timeout_s: float) -> None:
    """SQLite has no statement timeout: a progress handler, called every few thousand VM steps, interrupts
    a statement that has run longer than timeout_s (it fails with "interrupted" and its transaction rolls
    back). Each pooled connection keeps its current statement's deadline in its info dict."""

    @event.listens_for(engine.sync_engine, "connect")
    def _install(dbapi_conn, record):
        deadline = record.info["deadline"] = [float("inf")]
        await_only(dbapi_conn.driver_connection.set_progress_handler(lambda: time.monotonic() > deadline[0], 20000))

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _start(conn, cursor, statement, parameters, context, executemany):
        info = conn.connection.info
        if "deadline" in info:
            info["deadline"][0] = float("inf") if info.get("no_timeout") else time.monotonic() + timeout_s


class SqliteResourceStore(SqlResourceStore):
    backend = "sqlite"
    claim_ids = False  # one table each, unique keys on (type, id)
    _creates: Coalescer[tuple, ResourceVersion] | None = None  # plain creates written together (open())

    async def create(self, resource_type, resource_id, resource, patient_key=None, index=None):
        """Plain creates that arrive while the one writer is busy are written together, in one transaction
        and one commit (each commit is an fsync with synchronous=FULL)."""
        if self._creates is None:
            return await super().create(resource_type, resource_id, resource, patient_key, index)
        return await self._creates.submit((resource_type, resource_id, resource, patient_key, index))

    async def _write_creates(self, items: list[tuple]) -> list[ResourceVersion]:
        async with self.transaction() as tx:
            if len(items) == 1:
                return [await tx.create(*items[0])]
            return await tx.create_many(items)

    @staticmethod
    def insert_ignoring_conflict(table):
        return sqlite_insert(table).on_conflict_do_nothing()

    @asynccontextmanager
    async def without_timeout(self, conn: AsyncConnection):
        raw = await conn.get_raw_connection()
        raw.info["no_timeout"] = True
        try:
            yield
        finally:
            raw.info.pop("no_timeout", None)

    @classmethod
    def open(cls, settings: Settings) -> SqliteResourceStore:
        url = settings.effective_database_url
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # One writer connection per process: SQLite serialises writers anyway, and waiting in the
        # pool is cheaper than spinning on the database lock.
        write = _engine(url, settings, begin="BEGIN IMMEDIATE", pool_size=1)
        read = _engine(url, settings, begin="BEGIN", pool_size=settings.db_pool_size)
        store = cls(write, read)
        if settings.db_create_batches > 0:  # one flush at a time: there is one writer
            store._creates = Coalescer(store._write_creates, retry_alone=lambda exc: isinstance(exc, Conflict),
                                       in_flight=1, weigh=lambda item: len(orjson.dumps(item[2])),
                                       max_weight=BATCH_MAX_CHARS)
        return store
