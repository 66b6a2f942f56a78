"""The production backend: PostgreSQL through asyncpg, resources stored as JSONB."""

from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from ..settings import Settings
from .sql import SqlResourceStore, identity_json

# Arbitrary constant naming the advisory lock that serialises schema migrations.
MIGRATION_LOCK_KEY = 0x46484952  # "FHIR"


class PostgresResourceStore(SqlResourceStore):
    backend = "postgresql"
    lock_rows = True

    @staticmethod
    def insert_ignoring_conflict(table):
        return pg_insert(table).on_conflict_do_nothing()

    async def _lock_for_migration(self, conn: AsyncConnection) -> None:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})

    async def lock_key(self, conn: AsyncConnection, key: str) -> None:
        digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": digest})

    @classmethod
    def open(cls, settings: Settings) -> PostgresResourceStore:
        engine = create_async_engine(
            settings.effective_database_url,
            json_serializer=identity_json,
            json_deserializer=identity_json,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_pool_size,
            pool_pre_ping=True,
            # Searches are short and their selectivity depends on the values: a generic prepared plan
            # (chosen after five runs) was 3-9x slower in bench/search.py, and JIT costs ~30 ms a query.
            connect_args={"server_settings": {"plan_cache_mode": "force_custom_plan", "jit": "off"}},
        )
        return cls(engine)
