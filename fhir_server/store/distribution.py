"""The distributed layout of a patient's record: resources, history and search index rows split by
shard_key (model/compartment.py), so that one patient's rows live together in one partition, or on one
Citus shard.

What distribution asks of a schema, and what PostgreSQL's hash partitioning enforces the same way:
- every primary key and unique key contains the distribution column, so `resources` is keyed by
  (shard_key, pk) and (shard_key, resource_type, id), and history by (shard_key, seq);
- the distribution column of a row is never updated: a resource that moves to another patient's record
  is deleted and inserted again under the same pk (sql.py `_write`); a trigger refuses any UPDATE that
  would change it, as Citus does;
- no unique key spans the partitions, so the uniqueness of (resource_type, id) is kept by the writers:
  a create takes an advisory lock on the id and looks for it first (sql.py `_claim_ids`).

`FHIR_DB_PARTITIONS=N` creates a new PostgreSQL database this way, N hash partitions a table. The same
tables are what a Citus deployment distributes (README, "Scaling out")."""

from __future__ import annotations

from sqlalchemy import Index, MetaData, PrimaryKeyConstraint, Table, UniqueConstraint, text
from sqlalchemy.ext.asyncio import AsyncConnection

from . import schema


def _keys(name: str) -> list:
    """Keys of a distributed table, each led by the distribution column, and the look-ups by other columns
    that the plain layout's keys answered (new objects each time: a constraint belongs to one Table)."""
    if name == "resources":
        return [PrimaryKeyConstraint("shard_key", "pk"), UniqueConstraint("shard_key", "resource_type", "id"),
                Index("ix_resources_type_id", "resource_type", "id"), Index("ix_resources_pk", "pk")]
    if name == "resource_versions":
        return [PrimaryKeyConstraint("shard_key", "seq"), UniqueConstraint("shard_key", "resource_type", "id",
                                                                           "version_id"),
                Index("ix_resource_versions_type_id", "resource_type", "id", "version_id"),
                Index("ix_resource_versions_seq", "seq")]
    return []


DISTRIBUTED = ["resources", "resource_versions", *(t.name for t in schema.SEARCH_TABLES.values())]

_REFUSE_MOVE = """
CREATE OR REPLACE FUNCTION fhir_refuse_shard_key_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'shard_key of a row of % is never updated (delete and insert it again)', TG_TABLE_NAME
    USING ERRCODE = 'feature_not_supported';
END $$"""


def partitioned_table(table: Table, metadata: MetaData) -> Table:
    """`table` partitioned by hash of shard_key, with its keys led by shard_key."""
    columns = []
    for column in table.columns:
        copy = column._copy()
        copy.primary_key = False
        columns.append(copy)
    indexes = [Index(index.name, *(c.name for c in index.columns)) for index in table.indexes]
    return Table(table.name, metadata, *columns, *indexes, *_keys(table.name),
                 postgresql_partition_by="HASH (shard_key)")


async def create_partitioned(conn: AsyncConnection, tables: list[Table], partitions: int) -> None:
    """Create `tables` (of DISTRIBUTED) in the distributed layout, `partitions` hash partitions each."""
    metadata = MetaData()
    split = [partitioned_table(t, metadata) for t in tables]
    await conn.run_sync(metadata.create_all)
    await conn.execute(text(_REFUSE_MOVE))
    for table in split:
        for n in range(partitions):
            await conn.execute(text(f"CREATE TABLE {table.name}_p{n} PARTITION OF {table.name}"
                                    f" FOR VALUES WITH (MODULUS {partitions}, REMAINDER {n})"))
        await conn.execute(text(f"CREATE TRIGGER {table.name}_shard_key_fixed BEFORE UPDATE OF shard_key"
                                f" ON {table.name} FOR EACH ROW WHEN (OLD.shard_key IS DISTINCT FROM"
                                f" NEW.shard_key) EXECUTE FUNCTION fhir_refuse_shard_key_update()"))


async def partition_count(conn: AsyncConnection) -> int:
    """How many partitions `resources` has (0: the plain layout)."""
    if conn.dialect.name != "postgresql":
        return 0
    return (await conn.execute(text("SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass('resources')")
                               )).scalar_one()
