"""Versioned schema migrations, applied in order on start-up under a lock so that several workers
starting together migrate once. Append new steps; never edit a step that has shipped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import select
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


MIGRATIONS: list[Migration] = [
    Migration(1, "resources and resource_versions", _v1_resources),
    Migration(2, "search index tables", _v2_search_index),
]

LATEST_VERSION = MIGRATIONS[-1].version


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
