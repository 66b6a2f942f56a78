"""The production backend: PostgreSQL through asyncpg, resources stored as JSONB."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from contextlib import asynccontextmanager
from functools import lru_cache

import asyncpg
import orjson
from sqlalchemy import event, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, IntegrityError, InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..model.compartment import hash64, shard_key
from ..model.outcome import Conflict
from ..search.extract import IndexRows
from ..settings import Settings
from .base import ResourceVersion
from .coalesce import BATCH_MAX_CHARS, Coalescer
from .schema import SEARCH_TABLES, value_columns
from .sql import SqlResourceStore, id_lock, identity_json, now_ms, refuse_repeated, stamp

log = logging.getLogger("fhir_server.store")


# A pooled connection unused for longer than this is pinged before it is handed out, so that a database
# restart or a cut connection since its last use costs a reconnect rather than a failed request.
IDLE_PING_S = 1.0


def _engine(settings: Settings, url: str, extra: dict[str, str]):
    engine = create_async_engine(
        url,
        json_serializer=identity_json,
        json_deserializer=identity_json,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        # Searches are short and their selectivity depends on the values: a generic prepared plan
        # (chosen after five runs) was 3-9x slower in bench/search.py, and JIT costs ~30 ms a query.
        connect_args={"server_settings": {"plan_cache_mode": "force_custom_plan", "jit": "off",
                                          **_timeout(settings), **extra}},
    )
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Pessimistic disconnect handling for connections that sat idle only. SQLAlchemy's pool_pre_ping pings
    at every checkout, which for asyncpg is three round trips (BEGIN, an empty query, ROLLBACK): a DICOM
    index insert took 2.4 ms with it and 1.7 ms without."""
    @event.listens_for(engine.sync_engine, "checkin")
    def idle_from(dbapi_connection, record) -> None:
        record.info["idle_from"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def ping_if_idle(dbapi_connection, record, proxy) -> None:
        idle_from = record.info.pop("idle_from", None)
        if idle_from is not None and time.monotonic() - idle_from > IDLE_PING_S:
            try:
                engine.dialect.do_ping(dbapi_connection)
            except Exception as exc:  # the pool replaces this connection and every other pooled one
                raise InvalidatePoolError(f"pooled connection failed its ping: {exc}") from exc


def _timeout(settings: Settings) -> dict[str, str]:
    """statement_timeout (ms) for every session: a runaway query is cancelled server-side."""
    return {"statement_timeout": str(int(settings.query_timeout_s * 1000))} if settings.query_timeout_s > 0 else {}


# Arbitrary constant naming the advisory lock that serialises schema migrations.
MIGRATION_LOCK_KEY = 0x46484952  # "FHIR"




async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's reset query (a round trip and a statement per request): the pool's
    connections only ever run single autocommit statements that leave no session state behind. (asyncpg
    still rolls back anything left open before calling this.)"""


def _pg_type(column) -> str:
    """SQL type of an index column for jsonb_to_recordset."""
    python_type = column.type.python_type
    return {float: "double precision", int: "bigint"}.get(python_type, "text")


# Keys of an index row as JSON (param, then the value columns); plain str for orjson.
_ROW_KEYS = {name: ["param", *[str(c.name) for c in value_columns(table)]] for name, table in SEARCH_TABLES.items()}


# A change event for the subscriptions, recorded only when some subscription watches the type.
_EVENT_CTE = ("e AS (INSERT INTO subscription_events (resource_type, resource_id, version_id)"
              " SELECT :resource_type, :id, :version_id FROM w"
              " WHERE EXISTS (SELECT 1 FROM subscription_types WHERE resource_type = :resource_type))")


@lru_cache(maxsize=512)
def _write_statement(insert: bool, tables: frozenset[str], event: bool = True, keep_pk: bool = False):
    """One statement that writes a version: resources row, old index rows out, new ones in, history row.
    All CTEs see the same snapshot, so the DELETEs cannot remove the rows this statement inserts.
    keep_pk: the insert reuses the pk of a row just deleted (a resource moved to another shard_key)."""
    if insert:
        pk = ("pk, ", ":pk, ") if keep_pk else ("", "")
        first = (f"w AS (INSERT INTO resources ({pk[0]}resource_type, id, version_id, last_updated, deleted,"
                 f" patient_key, content, shard_key) VALUES ({pk[1]}:resource_type, :id, :version_id, :last_updated,"
                 " :deleted, :patient_key, CAST(:content AS jsonb), :shard_key) ON CONFLICT DO NOTHING RETURNING pk)")
    else:
        first = ("w AS (UPDATE resources SET version_id = :version_id, last_updated = :last_updated,"
                 " deleted = :deleted, patient_key = :patient_key, content = CAST(:content AS jsonb),"
                 " shard_key = :shard_key WHERE shard_key = :old_shard_key AND pk = :pk RETURNING pk)")
    ctes = [first]
    if not insert:
        ctes += [f"d_{name} AS (DELETE FROM {table.name} WHERE res_pk = :pk)" for name, table in SEARCH_TABLES.items()]
    for name in sorted(tables):
        table = SEARCH_TABLES[name]
        columns = [c.name for c in value_columns(table)]
        record = ", ".join(f'"{c.name}" {_pg_type(c)}' for c in value_columns(table))
        ctes.append(f"i_{name} AS (INSERT INTO {table.name} (res_pk, shard_key, resource_type, param,"
                    f" {', '.join(columns)}) SELECT w.pk, :shard_key, :resource_type, x.param,"
                    f" {', '.join('x.' + c for c in columns)}"
                    f" FROM w, jsonb_to_recordset(CAST(:rows_{name} AS jsonb)) AS x(param text, {record}))")
    ctes.append("h AS (INSERT INTO resource_versions (resource_type, id, version_id, last_updated, method,"
                " patient_key, content, shard_key) SELECT :resource_type, :id, :version_id, :last_updated, :method,"
                " :patient_key, CAST(:content AS jsonb), :shard_key FROM w)")
    if event:
        ctes.append(_EVENT_CTE)
    return text("WITH " + ",\n".join(ctes) + " SELECT pk FROM w")


@lru_cache(maxsize=64)
def _bulk_create_statement(tables: frozenset[str]) -> str:
    """New resources, their history rows and every index row in one statement over column arrays
    ($1..$7 the resources; then per index table the resource's position and the row's columns)."""
    ctes = [
        "x AS MATERIALIZED (SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[],"
        " $6::timestamptz[], $7::bigint[]) AS x(n, t, i, k, c, u, s))",
        "r AS (INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, patient_key, content,"
        " shard_key) SELECT t, i, 1, u, false, k, c::jsonb, s FROM x ORDER BY n RETURNING pk, resource_type, id)",
        "h AS (INSERT INTO resource_versions (resource_type, id, version_id, last_updated, method, patient_key,"
        " content, shard_key) SELECT t, i, 1, u, 'POST', k, c::jsonb, s FROM x ORDER BY n)",
        "m AS (SELECT r.pk, x.n, x.t, x.s FROM r JOIN x ON x.t = r.resource_type AND x.i = r.id)",
        "e AS (INSERT INTO subscription_events (resource_type, resource_id, version_id)"
        " SELECT t, i, 1 FROM x WHERE t IN (SELECT resource_type FROM subscription_types) ORDER BY n)",
    ]
    number = 8
    for name in sorted(tables):
        table = SEARCH_TABLES[name]
        columns = [c.name for c in value_columns(table)]
        arrays = [f"${number}::int[]", f"${number + 1}::text[]"]
        arrays += [f"${number + 2 + k}::{_pg_type(c)}[]" for k, c in enumerate(value_columns(table))]
        number += 2 + len(columns)
        ctes.append(f"i_{name} AS (INSERT INTO {table.name} (res_pk, shard_key, resource_type, param,"
                    f" {', '.join(columns)}) SELECT m.pk, m.s, m.t, y.param, {', '.join('y.' + c for c in columns)}"
                    f" FROM unnest({', '.join(arrays)}) AS y(n, param, {', '.join(columns)}) JOIN m ON m.n = y.n)")
    return "WITH " + ",\n".join(ctes) + " SELECT count(*) FROM r"


def _bulk_create(rows: list[tuple[ResourceVersion, str | None, IndexRows | None]]) -> tuple[str, tuple]:
    """The statement of `_bulk_create_statement` and its arguments for new resources: (first version,
    patient_key, index rows) each."""
    tables = frozenset(name for name in SEARCH_TABLES if any(index is not None and getattr(index, name)
                                                             for _, _, index in rows))
    args: list = [list(range(len(rows))), [v.resource_type for v, _, _ in rows], [v.id for v, _, _ in rows],
                  [key for _, key, _ in rows], [v.content for v, _, _ in rows], [v.last_updated for v, _, _ in rows],
                  [shard_key(v.resource_type, v.id, key) for v, key, _ in rows]]
    for name in sorted(tables):
        width = len(_ROW_KEYS[name])
        positions: list[int] = []
        columns: list[list] = [[] for _ in range(width)]
        for n, (_, _, index) in enumerate(rows):
            for row in (getattr(index, name) if index is not None else ()):
                positions.append(n)
                for k in range(width):
                    columns[k].append(row[k])
        args += [positions, *columns]
    return _bulk_create_statement(tables), tuple(args)


def _depends_on_data(error: BaseException) -> bool:
    """A batch failure that one of its items may have caused alone: any error PostgreSQL reports about the
    statement (a key taken, a value out of range, an index row too large), but not a lost or refused
    connection (class 08), a lack of resources (53), a cancelled statement or a shutdown (57), or a
    system error (58), which a lone write would have met just the same."""
    return isinstance(error, asyncpg.PostgresError) and str(error.sqlstate)[:2] not in ("08", "53", "57", "58")


def _retry_alone(error: BaseException) -> bool:
    """A batch failure that one item may have caused: see _depends_on_data; or, partitioned, an id taken."""
    return isinstance(error, Conflict) or _depends_on_data(error)


# Advisory locks, by the sorted numbers of their keys (lock_numbers): two transactions never wait on each
# other in a circle. Then, partitioned layout, whether any of a batch's new ids is stored already.
_LOCK_KEYS = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k"
_TAKEN_ID = ("SELECT r.resource_type || '/' || r.id FROM resources r JOIN unnest($1::text[], $2::text[]) AS n(t, i)"
             " ON r.resource_type = n.t AND r.id = n.i LIMIT 1")

def lock_numbers(keys: list[str]) -> list[int]:
    """The advisory lock numbers of keys, sorted (see _LOCK_KEYS)."""
    return sorted({hash64(key) for key in keys})


_READ_SQL = ("SELECT version_id, last_updated, deleted, content::text FROM resources"
             " WHERE resource_type = $1 AND id = $2")


@lru_cache(maxsize=256)
def _create_statement(tables: frozenset[str]) -> tuple[str, list[str]]:
    """The insert form of the write statement with asyncpg's $n placeholders, and the names in order."""
    sql = str(_write_statement(True, tables))
    names: list[str] = []

    def number(match: re.Match) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return re.sub(r"(?<!:):([a-z_]+)", number, sql), names


class PostgresResourceStore(SqlResourceStore):
    backend = "postgresql"
    lock_rows = True
    _read_pool: asyncpg.Pool | None = None
    _dsn: str = ""
    _write_pool: asyncpg.Pool | None = None
    _write_dsn: str = ""  # set when reads go to a replica: the primary, for single-statement writes
    _pool_size: int = 10
    _server_settings: dict[str, str] = {}  # replaced per store in open()
    _pool_lock: asyncio.Lock | None = None
    _closed = False
    _creates: Coalescer[tuple, ResourceVersion] | None = None  # plain creates written together (open())

    async def read(self, resource_type, resource_id):
        """The hottest path: straight through an asyncpg pool (a prepared statement, no SQLAlchemy
        layers), which took about a third off each read's server CPU."""
        row = await (await self._pool()).fetchrow(_READ_SQL, resource_type, resource_id)
        if row is None:
            return None
        return ResourceVersion(resource_type, resource_id, row[0], row[1], row[2], row[3])

    async def _pool(self, *, write: bool = False) -> asyncpg.Pool:
        """The asyncpg pool for reads (the replica, when there is one), or for single-statement writes."""
        write = write and bool(self._write_dsn)
        pool = self._write_pool if write else self._read_pool
        if pool is not None:
            return pool
        if self._closed:  # a late write (a create batch still draining) must not open a pool nobody closes
            raise ConnectionError("the resource store is closed")
        if self._pool_lock is None:
            self._pool_lock = asyncio.Lock()
        async with self._pool_lock:  # concurrent first callers would each open a pool, and leak all but one
            if write:
                if self._write_pool is None:
                    self._write_pool = await asyncpg.create_pool(
                        self._write_dsn, min_size=1, max_size=self._pool_size, reset=_keep_session,
                        server_settings={**self._server_settings, "synchronous_commit": "remote_apply"})
                return self._write_pool
            if self._read_pool is None:
                self._read_pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._pool_size,
                                                            reset=_keep_session, server_settings=self._server_settings)
            return self._read_pool

    async def fetchval(self, sql: str, *args):
        """One statement ($1, $2… placeholders) on the primary, on its own (autocommit), straight through
        asyncpg: for hot paths whose single statement SQLAlchemy's layers would cost more than."""
        return await (await self._pool(write=True)).fetchval(sql, *args)

    async def create(self, resource_type, resource_id, resource, patient_key=None, index=None):
        """A plain create is one atomic statement, run on its own (autocommit) through asyncpg, without
        BEGIN/COMMIT round trips or the SQLAlchemy layers; creates that arrive together share one."""
        if self.claim_ids is None:
            await self.learn_layout()
        ts = now_ms()
        version = ResourceVersion(resource_type, resource_id, 1, ts, False, stamp(resource, resource_id, 1, ts),
                                  "POST")
        if self._creates is None:
            return (await self._write_creates([(version, patient_key, index)]))[0]
        return await self._creates.submit((version, patient_key, index))

    async def _write_creates(self, batch: list[tuple]) -> list[ResourceVersion]:
        pool = await self._pool(write=True)
        if not self.claim_ids:
            return await self._insert_creates(pool, batch)
        # Partitioned: no unique key spans the partitions. The ids are locked, then looked for, then written,
        # in one transaction (the look must come after the locks, in a statement of its own, to see a
        # concurrent writer's commit).
        ids = [(v.resource_type, v.id) for v, _, _ in batch]
        refuse_repeated(ids)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK_KEYS, lock_numbers([id_lock(*i) for i in ids]))
            taken = await conn.fetchval(_TAKEN_ID, [t for t, _ in ids], [i for _, i in ids])
            if taken is not None:
                raise Conflict(f"{taken} already exists")
            return await self._insert_creates(conn, batch)

    @classmethod
    async def _insert_creates(cls, conn: asyncpg.Pool | asyncpg.Connection,
                              batch: list[tuple]) -> list[ResourceVersion]:
        if len(batch) == 1:
            return [await cls._create_one(conn, *batch[0])]
        sql, args = _bulk_create(batch)
        await conn.fetchval(sql, *args)
        return [version for version, _, _ in batch]

    @staticmethod
    async def _create_one(conn: asyncpg.Pool | asyncpg.Connection, version: ResourceVersion, patient_key,
                          index) -> ResourceVersion:
        tables = frozenset(name for name in SEARCH_TABLES if index is not None and getattr(index, name))
        sql, names = _create_statement(tables)
        params = {"resource_type": version.resource_type, "id": version.id, "version_id": 1,
                  "last_updated": version.last_updated, "deleted": False, "patient_key": patient_key,
                  "content": version.content, "method": "POST",
                  "shard_key": shard_key(version.resource_type, version.id, patient_key)}
        for name in tables:
            params[f"rows_{name}"] = orjson.dumps([dict(zip(_ROW_KEYS[name], row, strict=True))
                                                  for row in getattr(index, name)]).decode()
        if await conn.fetchval(sql, *(params[n] for n in names)) is None:
            raise Conflict(f"{version.resource_type}/{version.id} already exists")
        return version

    async def close(self) -> None:
        self._closed = True
        for pool in (self._read_pool, self._write_pool):
            if pool is not None:
                await pool.close()
        self._read_pool = self._write_pool = None
        await super().close()

    async def write_version(self, tx, pk, resource_type, resource_id, method, values, index, *, old_key=None):
        """The whole version in one round trip (instead of one per table)."""
        tables = frozenset(name for name in SEARCH_TABLES if index is not None and getattr(index, name))
        params = {"pk": pk, **values, "resource_type": resource_type, "id": resource_id, "method": method,
                  "old_shard_key": old_key}
        for name in tables:
            columns = _ROW_KEYS[name]
            params[f"rows_{name}"] = orjson.dumps([dict(zip(columns, row, strict=True))
                                                  for row in getattr(index, name)]).decode()
        statement = _write_statement(pk is None, tables, method != "DELETE", pk is None and "pk" in values)
        return (await tx.conn.execute(statement, params)).scalar()

    async def insert_new(self, tx, versions, items) -> None:
        """One round trip for the whole batch, arrays bound as asyncpg parameters: about ten
        statements' worth of SQLAlchemy parameter handling saved per bundle."""
        try:
            await tx.conn.exec_driver_sql(*_bulk_create([(v, item[3], item[4])
                                                         for v, item in zip(versions, items, strict=True)]))
        except IntegrityError as exc:
            raise Conflict("A resource in the batch already exists") from exc

    @staticmethod
    def insert_ignoring_conflict(table):
        return pg_insert(table).on_conflict_do_nothing()

    async def _lock_for_migration(self, conn: AsyncConnection) -> None:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})

    async def lock_keys(self, conn: AsyncConnection, keys: list[str]) -> None:
        await conn.exec_driver_sql(_LOCK_KEYS, (lock_numbers(keys),))

    @classmethod
    def open(cls, settings: Settings) -> PostgresResourceStore:
        read_url = settings.effective_read_url
        # With a replica, a commit returns once the replica has applied it (the primary must name it in
        # synchronous_standby_names): whatever a client was told is written, a read anywhere then sees.
        write = _engine(settings, settings.effective_database_url,
                        {"synchronous_commit": "remote_apply"} if read_url else {})
        read = _engine(settings, read_url, {}) if read_url else None
        store = cls(write, read)
        store._dsn = (read or write).url.set(drivername="postgresql").render_as_string(hide_password=False)
        if read is not None:
            store._write_dsn = write.url.set(drivername="postgresql").render_as_string(hide_password=False)
        store._pool_size = settings.db_pool_size
        store.partitions = settings.db_partitions
        if settings.db_create_batches > 0:
            store._creates = Coalescer(store._write_creates, retry_alone=_retry_alone,
                                       in_flight=settings.db_create_batches, weigh=lambda item: len(item[0].content),
                                       max_weight=BATCH_MAX_CHARS)
        store._server_settings = {"jit": "off", **_timeout(settings)}
        return store

    async def migrate(self) -> list[int]:
        applied = await super().migrate()
        if self.partitions and not self.claim_ids:
            log.warning("FHIR_DB_PARTITIONS is set but this database was created with plain tables: it keeps them "
                        "(the layout is chosen when a database is created)")
        if self.read_engine is not self.write_engine:
            async with self.write_engine.connect() as conn:
                standbys = (await conn.execute(text("SHOW synchronous_standby_names"))).scalar()
            if not standbys:
                log.warning("FHIR_DATABASE_READ_URL is set but the primary has no synchronous_standby_names: "
                            "a read right after a write may miss it")
        return applied

    async def refresh_statistics(self) -> None:
        """Until autovacuum gets to them (a minute or more), tables filled by a bulk load keep the statistics
        of when they were empty: every estimate is one row, and searches get nested-loop plans (a patient's
        blood pressures by code and date among 5,000 Observations: 26 ms before, 7 ms after). ANALYZE now."""
        tables = ", ".join(["resources", "resource_versions", *(t.name for t in SEARCH_TABLES.values())])
        try:
            async with self.write_engine.begin() as conn, self.without_timeout(conn):
                await conn.execute(text(f"ANALYZE {tables}"))
        except (DBAPIError, OSError) as exc:  # what was loaded is committed: a stale plan is no reason to fail
            log.warning("ANALYZE after a bulk load failed", extra={"error": f"{type(exc).__name__}: {exc}"})

    @asynccontextmanager
    async def without_timeout(self, conn: AsyncConnection):
        await conn.execute(text("SET LOCAL statement_timeout = 0"))
        yield
