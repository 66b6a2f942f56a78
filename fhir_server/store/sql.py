"""ResourceStore over SQLAlchemy 2 async Core; the SQLite and PostgreSQL backends differ only in
how they open engines, lock rows and serialise writers (see sqlite.py and postgres.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import and_, false, func, select, text, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..model.compartment import shard_key
from ..model.outcome import Conflict, NotFound, PreconditionFailed
from ..search.extract import IndexRows
from . import migrations
from .base import HistoryPage, ResourceStore, ResourceVersion, StoreTransaction, WriteResult, format_instant
from .distribution import partition_count
from .schema import SEARCH_TABLES, subscription_events, subscription_types, value_columns
from .schema import resource_versions as rv
from .schema import resources as res
from .search_sql import run_search

# A change event for the subscriptions, recorded only when some subscription watches the type.
RECORD_EVENT = text("INSERT INTO subscription_events (resource_type, resource_id, version_id)"
                    " SELECT :resource_type, :id, :version_id"
                    " WHERE EXISTS (SELECT 1 FROM subscription_types WHERE resource_type = :resource_type)")

# Value columns of each index table, in the order of the IndexRows tuples (after the param code).
_INDEX_COLUMNS = {name: [c.name for c in value_columns(table)] for name, table in SEARCH_TABLES.items()}


def id_lock(resource_type: str, resource_id: str) -> str:
    """The lock key that the writers of one id take in the partitioned layout."""
    return f"id {resource_type}/{resource_id}"


def refuse_repeated(ids: list[tuple[str, str]]) -> None:
    """Conflict if a (type, id) comes twice among new resources: in the partitioned layout no unique key
    would see it (under two patients the two rows would land in two partitions)."""
    seen: set[tuple[str, str]] = set()
    for resource_type, resource_id in ids:
        if (resource_type, resource_id) in seen:
            raise Conflict(f"{resource_type}/{resource_id} comes twice")
        seen.add((resource_type, resource_id))


def now_ms() -> datetime:
    """Current UTC time truncated to milliseconds, the precision of meta.lastUpdated."""
    ts = datetime.now(UTC)
    return ts.replace(microsecond=ts.microsecond // 1000 * 1000)


def identity_json(value: Any) -> Any:
    return value


def stamp(resource: dict[str, Any], resource_id: str, version_id: int, ts: datetime) -> str:
    """Set id and meta.versionId/lastUpdated, keeping the client's other meta, and encode."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = format_instant(ts)
    body = {"resourceType": resource["resourceType"], "id": resource_id, "meta": meta}
    body.update((k, v) for k, v in resource.items() if k not in body)
    return orjson.dumps(body).decode()


async def _read(conn: AsyncConnection, resource_type: str, resource_id: str) -> ResourceVersion | None:
    query = select(res.c.version_id, res.c.last_updated, res.c.deleted, res.c.content).where(
        res.c.resource_type == resource_type, res.c.id == resource_id)
    row = (await conn.execute(query)).first()
    if row is None:
        return None
    return ResourceVersion(resource_type, resource_id, row.version_id, row.last_updated, row.deleted, row.content)


class SqlTransaction(StoreTransaction):
    def __init__(self, store: SqlResourceStore, conn: AsyncConnection):
        self.store = store
        self.conn = conn

    async def read(self, resource_type: str, resource_id: str) -> ResourceVersion | None:
        return await _read(self.conn, resource_type, resource_id)

    async def search(self, query, extra=None):
        return await run_search(self.conn, self.store.backend, query, extra)

    async def lock(self, key: str) -> None:
        await self.store.lock_key(self.conn, key)

    async def _current(self, resource_type: str, resource_id: str):
        query = select(res.c.pk, res.c.version_id, res.c.deleted, res.c.patient_key, res.c.shard_key).where(
            res.c.resource_type == resource_type, res.c.id == resource_id)
        if self.store.lock_rows:
            query = query.with_for_update()
        return (await self.conn.execute(query)).first()

    async def _write(self, resource_type: str, resource_id: str, version_id: int, method: str,
                     resource: dict[str, Any] | None, patient_key: str | None, index: IndexRows | None, *,
                     current=None) -> ResourceVersion:
        """Write one version; `current` None means a new resource (insert), else its row (_current)."""
        ts = now_ms()
        content = stamp(resource, resource_id, version_id, ts) if resource is not None else None
        values = dict(version_id=version_id, last_updated=ts, deleted=resource is None, patient_key=patient_key,
                      content=content, shard_key=shard_key(resource_type, resource_id, patient_key))
        pk = current.pk if current is not None else None
        if pk is not None and current.shard_key != values["shard_key"] and self.store.claim_ids:
            # Moved to another patient's record, in the partitioned layout: a row's distribution value is never
            # updated in place (Citus refuses it), so out it goes and in again, same pk. (Writers of this id
            # wait for each other on its lock, or one would find the row gone in between.)
            await self.conn.execute(res.delete().where(res.c.shard_key == current.shard_key, res.c.pk == pk))
            await self.drop_index(pk)
            values["pk"], pk = pk, None
        pk = await self.store.write_version(self, pk, resource_type, resource_id, method, values, index,
                                            old_key=current.shard_key if pk is not None else None)
        if pk is None:
            raise Conflict(f"{resource_type}/{resource_id} already exists")
        return ResourceVersion(resource_type, resource_id, version_id, ts, resource is None, content, method)

    async def drop_index(self, pk: int) -> None:
        for table in SEARCH_TABLES.values():
            await self.conn.execute(table.delete().where(table.c.res_pk == pk))

    async def replace_index(self, pk: int, key: int, resource_type: str, index: IndexRows) -> None:
        """New index rows for the row `pk` (its shard_key `key`), in place of its old ones."""
        await self.drop_index(pk)
        await self._write_indexes([(pk, key, resource_type, index)])

    async def reindex(self, resource_type: str, resource_id: str, make_index) -> bool:
        await self._lock_id(resource_type, resource_id)
        query = select(res.c.pk, res.c.shard_key, res.c.deleted, res.c.content).where(
            res.c.resource_type == resource_type, res.c.id == resource_id)
        row = (await self.conn.execute(query.with_for_update() if self.store.lock_rows else query)).first()
        if row is None or row.deleted:
            return False
        await self.replace_index(row.pk, row.shard_key, resource_type, make_index(row.content))
        return True

    async def track_subscription(self, subscription_id: str, resource_type: str | None) -> None:
        from .subscriptions import track

        await track(self, subscription_id, resource_type)

    async def _write_indexes(self, entries: list[tuple[int, int, str, IndexRows]]) -> None:
        """Index rows of many resources, (pk, shard_key, type, rows) each: one multi-row INSERT per table."""
        for name, table in SEARCH_TABLES.items():
            columns = _INDEX_COLUMNS[name]
            rows = [{"res_pk": pk, "shard_key": key, "resource_type": resource_type, "param": row[0],
                     **dict(zip(columns, row[1:], strict=True))}
                    for pk, key, resource_type, index in entries for row in getattr(index, name)]
            if rows:
                await self.conn.execute(table.insert(), rows)

    async def _claim_ids(self, ids: list[tuple[str, str]]) -> None:
        """Partitioned layout: no unique key spans the partitions, so before inserting new resources, lock
        each (type, id) until commit and make sure that none exists, nor comes twice in this batch."""
        refuse_repeated(ids)
        await self.store.lock_keys(self.conn, [id_lock(*i) for i in ids])
        for start in range(0, len(ids), 500):
            taken = (await self.conn.execute(select(res.c.resource_type, res.c.id).where(
                tuple_(res.c.resource_type, res.c.id).in_(ids[start:start + 500])).limit(1))).first()
            if taken is not None:
                raise Conflict(f"{taken[0]}/{taken[1]} already exists")

    async def create_many(self, items) -> list[ResourceVersion]:
        """Bulk create: (type, id, resource, patient_key, index) tuples in a handful of statements."""
        if not items:
            return []
        if self.store.claim_ids:
            await self._claim_ids([(item[0], item[1]) for item in items])
        ts = now_ms()
        versions = [ResourceVersion(rt, rid, 1, ts, False, stamp(resource, rid, 1, ts), "POST")
                    for rt, rid, resource, _, _ in items]
        await self.store.insert_new(self, versions, items)
        return versions

    async def create(self, resource_type, resource_id, resource, patient_key=None, index=None):
        if self.store.claim_ids:
            await self._claim_ids([(resource_type, resource_id)])
        return await self._write(resource_type, resource_id, 1, "POST", resource, patient_key, index)

    async def _lock_id(self, resource_type: str, resource_id: str) -> None:
        """Partitioned layout: the writers of one id take turns (see _claim_ids and _write)."""
        if self.store.claim_ids:
            await self.store.lock_keys(self.conn, [id_lock(resource_type, resource_id)])

    async def update(self, resource_type, resource_id, resource, *, if_match=None, patient_key=None, index=None):
        await self._lock_id(resource_type, resource_id)
        current = await self._current(resource_type, resource_id)
        if current is None:
            if if_match is not None:
                raise PreconditionFailed(f"If-Match given but {resource_type}/{resource_id} does not exist")
            try:
                return WriteResult(await self.create(resource_type, resource_id, resource, patient_key, index), True)
            except Conflict:  # a concurrent create-on-update of the same id won: update its version instead
                current = await self._current(resource_type, resource_id)
        if if_match is not None and if_match != current.version_id:
            raise PreconditionFailed(
                f"Version conflict: If-Match is {if_match} but {resource_type}/{resource_id} is at version "
                f"{current.version_id}")
        version = await self._write(resource_type, resource_id, current.version_id + 1, "PUT", resource,
                                    patient_key, index, current=current)
        return WriteResult(version, bool(current.deleted))

    async def delete(self, resource_type, resource_id, *, if_match=None):
        await self._lock_id(resource_type, resource_id)
        current = await self._current(resource_type, resource_id)
        if current is None:
            raise NotFound(f"Resource {resource_type}/{resource_id} is not known")
        if if_match is not None and if_match != current.version_id:
            raise PreconditionFailed(
                f"Version conflict: If-Match is {if_match} but {resource_type}/{resource_id} is at version "
                f"{current.version_id}")
        if current.deleted:
            return None
        # The tombstone stays in its patient's record, and on its shard.
        return await self._write(resource_type, resource_id, current.version_id + 1, "DELETE", None,
                                 current.patient_key, None, current=current)


class SqlResourceStore(ResourceStore):
    lock_rows = False  # SELECT ... FOR UPDATE where the database has row locks
    partitions = 0  # FHIR_DB_PARTITIONS: the layout a new database is created with
    # The database is partitioned: creates make sure of an id's uniqueness (_claim_ids). None: not known yet,
    # found out before the first write (learn_layout), whichever process opened the store.
    claim_ids: bool | None = None

    async def write_version(self, tx: SqlTransaction, pk: int | None, resource_type: str, resource_id: str,
                            method: str, values: dict[str, Any], index: IndexRows | None, *,
                            old_key: int | None = None) -> int | None:
        """Write the resources row (insert when pk is None), its index rows and its history row; returns
        the pk, or None when an insert found the id taken. Statement by statement here (SQLite has no
        round trips to save); PostgreSQL does it in one statement."""
        conn = tx.conn
        if pk is None:
            stmt = (self.insert_ignoring_conflict(res)
                    .values(resource_type=resource_type, id=resource_id, **values).returning(res.c.pk))
            pk = (await conn.execute(stmt)).scalar()
            if pk is None:
                return None
        else:
            await conn.execute(res.update().where(res.c.shard_key == old_key, res.c.pk == pk).values(**values))
            await tx.drop_index(pk)
        if index is not None:
            await tx._write_indexes([(pk, values["shard_key"], resource_type, index)])
        await conn.execute(rv.insert().values(resource_type=resource_type, id=resource_id, method=method,
                                              version_id=values["version_id"], last_updated=values["last_updated"],
                                              patient_key=values["patient_key"], content=values["content"],
                                              shard_key=values["shard_key"]))
        if method != "DELETE":
            await conn.execute(RECORD_EVENT, {"resource_type": resource_type, "id": resource_id,
                                              "version_id": values["version_id"]})
        return pk

    async def insert_new(self, tx: SqlTransaction, versions: list[ResourceVersion], items) -> None:
        """First versions of new resources with their history and index rows; Conflict if an id is taken."""
        rows = [{"resource_type": v.resource_type, "id": v.id, "version_id": 1, "last_updated": v.last_updated,
                 "deleted": False, "patient_key": item[3], "content": v.content,
                 "shard_key": shard_key(v.resource_type, v.id, item[3])}
                for v, item in zip(versions, items, strict=True)]
        try:
            result = await tx.conn.execute(res.insert().returning(res.c.pk, sort_by_parameter_order=True), rows)
        except IntegrityError as exc:
            raise Conflict("A resource in the batch already exists") from exc
        pks = [row.pk for row in result]
        await tx.conn.execute(rv.insert(), [{**row, "method": "POST"} for row in rows])
        await tx._write_indexes([(pk, row["shard_key"], item[0], item[4])
                                 for pk, row, item in zip(pks, rows, items, strict=True) if item[4] is not None])
        types = {v.resource_type for v in versions}
        watched = set((await tx.conn.execute(select(subscription_types.c.resource_type)
                                             .where(subscription_types.c.resource_type.in_(types)))).scalars())
        if watched:
            await tx.conn.execute(subscription_events.insert(), [
                {"resource_type": v.resource_type, "resource_id": v.id, "version_id": 1}
                for v in versions if v.resource_type in watched])

    @staticmethod
    def insert_ignoring_conflict(table):
        """INSERT ... ON CONFLICT DO NOTHING in the backend's dialect."""
        raise NotImplementedError

    def __init__(self, write_engine: AsyncEngine, read_engine: AsyncEngine | None = None):
        self.write_engine = write_engine
        self.read_engine = read_engine or write_engine

    async def close(self) -> None:
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()

    async def ping(self) -> None:
        async with self.read_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def refresh_statistics(self) -> None:
        """After a bulk load: the planner's statistics of the tables just filled (see postgres.py)."""

    async def migrate(self) -> list[int]:
        async with self.write_engine.begin() as conn:
            await self._lock_for_migration(conn)
            async with self.without_timeout(conn):  # a migration may rebuild big tables
                applied = await migrations.migrate(conn, partitions=self.partitions)
            self.claim_ids = await partition_count(conn) > 0
        return applied

    async def learn_layout(self) -> None:
        async with self.write_engine.connect() as conn:
            self.claim_ids = await partition_count(conn) > 0

    @asynccontextmanager
    async def without_timeout(self, conn: AsyncConnection):
        """Lift FHIR_QUERY_TIMEOUT_S for the statements of this connection's transaction."""
        yield

    async def _lock_for_migration(self, conn: AsyncConnection) -> None:
        """Serialise concurrent migrators (several workers starting at once)."""

    async def lock_key(self, conn: AsyncConnection, key: str) -> None:
        """Serialise transactions that name the same key (conditional creates); SQLite writers already are."""
        await self.lock_keys(conn, [key])

    async def lock_keys(self, conn: AsyncConnection, keys: list[str]) -> None:
        """lock_key of several keys at once, in an order that every caller shares (no deadlock)."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlTransaction]:
        if self.claim_ids is None:
            await self.learn_layout()
        async with self.write_engine.begin() as conn:
            yield SqlTransaction(self, conn)

    async def scan(self, resource_types, after_pk: int, limit: int) -> list[tuple[int, str, str, str]]:
        """Current (not deleted) resources of some types in pk order, for re-indexing."""
        query = (select(res.c.pk, res.c.resource_type, res.c.id, res.c.content)
                 .where(res.c.resource_type.in_(resource_types), res.c.deleted == false(),
                        res.c.pk > after_pk).order_by(res.c.pk).limit(limit))
        async with self.read_engine.connect() as conn:
            return [tuple(row) for row in (await conn.execute(query)).all()]

    async def search(self, query, extra=None):
        async with self.read_engine.connect() as conn:
            return await run_search(conn, self.backend, query, extra)

    async def read(self, resource_type, resource_id):
        async with self.read_engine.connect() as conn:
            return await _read(conn, resource_type, resource_id)

    async def vread(self, resource_type, resource_id, version_id):
        query = select(rv.c.last_updated, rv.c.method, rv.c.content).where(
            rv.c.resource_type == resource_type, rv.c.id == resource_id, rv.c.version_id == version_id)
        async with self.read_engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return ResourceVersion(resource_type, resource_id, version_id, row.last_updated,
                               row.method == "DELETE", row.content, row.method)

    async def history(self, resource_type=None, resource_id=None, *, since=None, count=20, cursor=None):
        conditions = []
        if resource_type is not None:
            conditions.append(rv.c.resource_type == resource_type)
        if resource_id is not None:
            conditions.append(rv.c.id == resource_id)
        if since is not None:
            conditions.append(rv.c.last_updated >= since)
        page_conditions = [*conditions, rv.c.seq < cursor] if cursor is not None else conditions
        query = (select(rv.c.seq, rv.c.resource_type, rv.c.id, rv.c.version_id, rv.c.last_updated,
                        rv.c.method, rv.c.content)
                 .where(and_(True, *page_conditions)).order_by(rv.c.seq.desc()).limit(count + 1))
        async with self.read_engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            total = None
            if resource_id is not None:  # cheap for one resource; type/system totals would scan
                total = (await conn.execute(select(func.count()).select_from(rv)
                                            .where(and_(True, *conditions)))).scalar_one()
        entries = [ResourceVersion(r.resource_type, r.id, r.version_id, r.last_updated, r.method == "DELETE",
                                   r.content, r.method) for r in rows[:count]]
        next_cursor = rows[count - 1].seq if len(rows) > count else None
        return HistoryPage(entries, next_cursor, total)
