"""Versioned schema migrations, applied in order on start-up under a lock so that several workers
starting together migrate once. Append new steps; never edit a step that has shipped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from . import schema


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[AsyncConnection], Awaitable[None]]


async def _v1_resources(conn: AsyncConnection) -> None:
    # Tables exactly as schema.py defines them at version 1; later changes come as new steps (ALTER).
    await conn.run_sync(schema.metadata.create_all, tables=[schema.resources, schema.resource_versions])


async def _v2_search_index(conn: AsyncConnection) -> None:
    await conn.run_sync(schema.metadata.create_all, tables=list(schema.SEARCH_TABLES.values()))


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


MIGRATIONS: list[Migration] = [
    Migration(1, "resources and resource_versions", _v1_resources),
    Migration(2, "search index tables", _v2_search_index),
    Migration(3, "GiST range index on search_date (PostgreSQL)", _v3_date_ranges),
    Migration(4, "DICOM instance index", _v4_dicom_instances),
    Migration(5, "authorization server: keys, clients, users, codes and tokens", _v5_auth),
    Migration(6, "subscription outbox and deliveries", _v6_subscriptions),
    Migration(7, "bulk $export/$import jobs", _v7_bulk_jobs),
    Migration(9, "Observation combo-* search rows read from their parts", _v9_union_rows),
]

LATEST_VERSION = max(step.version for step in MIGRATIONS)


async def applied_versions(conn: AsyncConnection) -> set[int]:
    await conn.run_sync(schema.metadata.create_all, tables=[schema.schema_migrations])
    return set((await conn.execute(select(schema.schema_migrations.c.version))).scalars())


async def migrate(conn: AsyncConnection) -> list[int]:
    """Apply the missing steps inside the caller's (locked) transaction; return what was applied."""
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
