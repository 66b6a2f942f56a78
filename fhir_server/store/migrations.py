"""Versioned schema migrations, applied in order on start-up under a lock so that several workers
starting together migrate once. Append new steps; never edit a step that has shipped."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass

from sqlalchemy import bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..model.compartment import shard_key
from . import distribution, schema

log = logging.getLogger(__name__)

# FHIR_DB_PARTITIONS of the migrate() call running: what a new database is created with.
_partitions: ContextVar[int] = ContextVar("partitions", default=0)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[AsyncConnection], Awaitable[None]]


async def _create(conn: AsyncConnection, tables: list) -> None:
    """New tables as schema.py defines them now; a new PostgreSQL database asked to be partitioned
    (FHIR_DB_PARTITIONS) gets them in the distributed layout (distribution.py)."""
    partitions = _partitions.get() if conn.dialect.name == "postgresql" else 0
    if partitions:
        await distribution.create_partitioned(conn, tables, partitions)
    else:
        await conn.run_sync(schema.metadata.create_all, tables=tables)


async def _v1_resources(conn: AsyncConnection) -> None:
    # Tables as schema.py defines them now; later changes come as new steps that skip what exists (ALTER).
    await _create(conn, [schema.resources, schema.resource_versions])


async def _v2_search_index(conn: AsyncConnection) -> None:
    await _create(conn, list(schema.SEARCH_TABLES.values()))


async def _v3_date_ranges(conn: AsyncConnection) -> None:
    """PostgreSQL: a GiST index over each date value's [low, high] range. A search bound such as
    date=ge2025-03-01&date=lt2025-04-01 is a 2-D condition (high >= lo and low < hi) that no B-tree
    answers; as a range overlap (&&) this index finds exactly the month. SQLite keeps its B-trees."""
    if conn.dialect.name != "postgresql":
        return
    await conn.execute(text("CREATE EXTENSION IF NOT EXISTS btree_gist"))
    await conn.execute(text("CREATE INDEX IF NOT EXISTS ix_search_date_range ON search_date USING gist "
                            "(resource_type, param, int8range(low, high, '[]'))"))


async def _v4_dicom_instances(conn: AsyncConnection) -> None:
    await conn.run_sync(schema.metadata.create_all, tables=[schema.dicom_instances])


async def _v5_auth(conn: AsyncConnection) -> None:
    from ..auth.tables import AUTH_TABLES

    await conn.run_sync(schema.metadata.create_all, tables=AUTH_TABLES)


async def _v6_subscriptions(conn: AsyncConnection) -> None:
    await conn.run_sync(schema.metadata.create_all, tables=[schema.subscription_types, schema.subscription_events,
                                                            schema.subscription_deliveries])


async def _v7_bulk_jobs(conn: AsyncConnection) -> None:
    await conn.run_sync(schema.metadata.create_all, tables=[schema.bulk_jobs])


async def _v9_union_rows(conn: AsyncConnection) -> None:
    """Observation's combo-* parameters are unions of two others (combo-code = code | component-code):
    searches now read the parts' rows, so their own copies go (a third of a vital sign's index rows)."""
    unions = {"search_token": ("combo-code", "combo-data-absent-reason", "combo-value-concept"),
              "search_quantity": ("combo-value-quantity",),
              "search_composite": ("combo-code-value-concept", "combo-code-value-quantity")}
    for table, codes in unions.items():
        await conn.execute(text(f"DELETE FROM {table} WHERE resource_type = 'Observation' AND param IN "
                                f"({', '.join(repr(c) for c in codes)})"))


async def _v10_shard_key(conn: AsyncConnection) -> None:
    """shard_key (model/compartment.py) on every row of resources, history and search index, computed
    for the rows already there. A database created since has the column from step 1. Every row is
    rewritten, in the one migration transaction: writers of the previous release must be stopped first
    (they would not set the column)."""
    tables = [schema.resources, schema.resource_versions, *schema.SEARCH_TABLES.values()]
    missing = [t for t in tables if "shard_key" not in await _columns(conn, t.name)]
    if not missing:
        return
    for table in missing:
        await conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN shard_key BIGINT NOT NULL DEFAULT 0"))
    names = {t.name for t in missing}
    for table, key in ((schema.resources, "pk"), (schema.resource_versions, "seq")):
        if table.name in names:
            await _compute_shard_keys(conn, table, key)
    for table in missing:
        if table.name.startswith("search_"):
            await conn.execute(text(f"UPDATE {table.name} SET shard_key = r.shard_key FROM resources r"
                                    f" WHERE r.pk = {table.name}.res_pk"))
        if conn.dialect.name == "postgresql":  # SQLite cannot drop a column default; no writer relies on it
            await conn.execute(text(f"ALTER TABLE {table.name} ALTER COLUMN shard_key DROP DEFAULT"))


async def _columns(conn: AsyncConnection, table: str) -> set[str]:
    # Not SQLAlchemy's inspector: it parses JSON that the engines' identity deserialiser leaves as text.
    if conn.dialect.name == "postgresql":
        sql = text("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
                   " AND table_name = :t")
        return set((await conn.execute(sql, {"t": table})).scalars())
    return {row[1] for row in (await conn.execute(text(f"PRAGMA table_info({table})"))).all()}


async def _compute_shard_keys(conn: AsyncConnection, table, key: str, batch: int = 5000) -> None:
    """Python computes the hash (no SQL function matches it on both backends), a batch at a time."""
    column = table.c[key]
    statement = (table.update().where(column == bindparam("row_key"))
                 .values(shard_key=bindparam("new_key")))
    after, done = -1, 0
    while True:
        rows = (await conn.execute(select(column, table.c.resource_type, table.c.id, table.c.patient_key)
                                   .where(column > after).order_by(column).limit(batch))).all()
        if not rows:
            break
        await conn.execute(statement, [{"row_key": row[0], "new_key": shard_key(row[1], row[2], row[3])}
                                       for row in rows])
        after, done = rows[-1][0], done + len(rows)
    log.info("shard_key computed", extra={"table": table.name, "rows": done})


MIGRATIONS: list[Migration] = [
    Migration(1, "resources and resource_versions", _v1_resources),
    Migration(2, "search index tables", _v2_search_index),
    Migration(3, "GiST range index on search_date (PostgreSQL)", _v3_date_ranges),
    Migration(4, "DICOM instance index", _v4_dicom_instances),
    Migration(5, "authorization server: keys, clients, users, codes and tokens", _v5_auth),
    Migration(6, "subscription outbox and deliveries", _v6_subscriptions),
    Migration(7, "bulk $export/$import jobs", _v7_bulk_jobs),
    Migration(9, "Observation combo-* search rows read from their parts", _v9_union_rows),
    Migration(10, "shard_key (distribution value) on resources, history and search index rows", _v10_shard_key),
]

LATEST_VERSION = max(step.version for step in MIGRATIONS)


async def applied_versions(conn: AsyncConnection) -> set[int]:
    await conn.run_sync(schema.metadata.create_all, tables=[schema.schema_migrations])
    return set((await conn.execute(select(schema.schema_migrations.c.version))).scalars())


async def migrate(conn: AsyncConnection, *, partitions: int = 0) -> list[int]:
    """Apply the missing steps inside the caller's (locked) transaction; return what was applied.
    partitions > 0: a new PostgreSQL database gets the partitioned (distributed) layout."""
    _partitions.set(partitions)
    done = await applied_versions(conn)
    applied = []
    for step in MIGRATIONS:
        if step.version in done:
            continue
        await step.apply(conn)
        await conn.execute(schema.schema_migrations.insert().values(version=step.version,
                                                                   description=step.description))
        applied.append(step.version)
    return applied
