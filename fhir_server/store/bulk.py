"""SQL of bulk data jobs: the jobs table (a lease per running job, a checkpoint per page) and the
keyset pages an export reads. Works on both backends through the store's engines."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, false, func, insert, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from ..model.types import RESOURCE_TYPES
from ..search.query import Clause
from .schema import SEARCH_TABLES, bulk_jobs
from .schema import resources as res
from .search_sql import SearchSql
from .sql import SqlResourceStore, now_ms

IN_PROGRESS, COMPLETED, FAILED = "in-progress", "completed", "failed"


@dataclass
class JobRow:
    id: str
    kind: str
    status: str
    request: str
    params: str
    transaction_time: datetime
    owner: str | None
    heartbeat: datetime
    progress: str
    state: str
    manifest: str | None


class JobTable:
    """The bulk_jobs rows. Every change of a running job is conditional on its owner, so a worker
    that lost its lease (or whose job was cancelled, i.e. deleted) learns it from the row count."""

    def __init__(self, store: SqlResourceStore):
        self.store = store

    async def create(self, job: JobRow) -> None:
        async with self.store.write_engine.begin() as conn:
            await conn.execute(insert(bulk_jobs).values(**job.__dict__))

    async def get(self, job_id: str) -> JobRow | None:
        async with self.store.read_engine.connect() as conn:
            row = (await conn.execute(select(bulk_jobs).where(bulk_jobs.c.id == job_id))).first()
        return JobRow(**row._mapping) if row is not None else None

    async def checkpoint(self, job_id: str, owner: str, progress: str, state: str) -> bool:
        """Record progress and renew the lease; False when the job is gone (cancelled) or taken over."""
        return await self._update(job_id, owner, progress=progress, state=state, heartbeat=now_ms())

    async def finish(self, job_id: str, owner: str, status: str, manifest: str, progress: str) -> bool:
        return await self._update(job_id, owner, status=status, manifest=manifest, progress=progress,
                                  heartbeat=now_ms(), owner=None)

    async def _update(self, job_id: str, holder: str, **values: Any) -> bool:
        stmt = update(bulk_jobs).where(bulk_jobs.c.id == job_id, bulk_jobs.c.owner == holder,
                                       bulk_jobs.c.status == IN_PROGRESS).values(**values)
        async with self.store.write_engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount == 1

    async def delete(self, job_id: str) -> bool:
        async with self.store.write_engine.begin() as conn:
            return (await conn.execute(delete(bulk_jobs).where(bulk_jobs.c.id == job_id))).rowcount == 1

    async def claim_orphans(self, owner: str, lease_s: float) -> list[JobRow]:
        """Take over running jobs that nobody holds: released at a shutdown, or whose lease ran out
        (their worker died). One conditional UPDATE per job, so two workers never take the same one."""
        cutoff = now_ms() - timedelta(seconds=lease_s)
        orphaned = and_(bulk_jobs.c.status == IN_PROGRESS,
                        or_(bulk_jobs.c.owner.is_(None), bulk_jobs.c.heartbeat < cutoff))
        async with self.store.read_engine.connect() as conn:
            candidates = (await conn.execute(select(bulk_jobs.c.id).where(orphaned))).all()
        claimed = []
        for (job_id,) in candidates:
            stmt = update(bulk_jobs).where(bulk_jobs.c.id == job_id, orphaned).values(owner=owner, heartbeat=now_ms())
            async with self.store.write_engine.begin() as conn:
                if (await conn.execute(stmt)).rowcount == 1:
                    claimed.append(job_id)
        return [job for job in [await self.get(j) for j in claimed] if job is not None]

    async def release(self, owner: str) -> None:
        """At shutdown: hand this worker's running jobs to whichever worker starts next."""
        stmt = update(bulk_jobs).where(bulk_jobs.c.owner == owner, bulk_jobs.c.status == IN_PROGRESS
                                       ).values(owner=None)
        async with self.store.write_engine.begin() as conn:
            await conn.execute(stmt)

    async def expired(self, older_than: datetime) -> list[str]:
        """Finished jobs last touched before a time, removed from the table (their files go next)."""
        finished = and_(bulk_jobs.c.status != IN_PROGRESS, bulk_jobs.c.heartbeat < older_than)
        async with self.store.write_engine.begin() as conn:
            ids = list((await conn.execute(select(bulk_jobs.c.id).where(finished))).scalars())
            if ids:
                await conn.execute(delete(bulk_jobs).where(bulk_jobs.c.id.in_(ids)))
        return ids


@dataclass
class ExportSelection:
    """What an export reads: types, time window, patient compartments and _typeFilter clauses."""

    types: list[str]
    until: datetime  # the job's transactionTime: later changes are left to the next export
    since: datetime | None = None
    with_deletions: bool = False  # deleted resources (system level with _since)
    compartment: bool = False  # only rows with a patient-compartment key
    patients: list[str] | None = None  # only these patients' compartments
    group_pk: int | None = None  # only the compartments of this Group's Patient members
    type_filters: dict[str, list[list[Clause]]] = field(default_factory=dict)  # type -> ORed clause lists
    access: dict[str, Clause] = field(default_factory=dict)  # type -> what the caller's scopes confine it to


def _selection_conditions(store: SqlResourceStore, sel: ExportSelection) -> list[ColumnElement]:
    r = res
    where = [r.c.last_updated <= sel.until]
    if not RESOURCE_TYPES <= set(sel.types):  # a list of every type only costs time (half of it on SQLite)
        where.append(r.c.resource_type.in_(sel.types))
    if sel.since is not None:
        where.append(r.c.last_updated > sel.since)
    if not sel.with_deletions:
        where.append(r.c.deleted == false())
    if sel.compartment:
        where.append(r.c.patient_key.is_not(None))
    if sel.patients is not None:
        where.append(r.c.patient_key.in_(sel.patients))
    if sel.group_pk is not None:
        ref = SEARCH_TABLES["reference"]
        members = select(ref.c.target_id).where(ref.c.res_pk == sel.group_pk, ref.c.resource_type == "Group",
                                                ref.c.param == "member", ref.c.target_type == "Patient")
        where.append(r.c.patient_key.in_(members))
    sql = SearchSql(store.backend)
    for resource_type, alternatives in sel.type_filters.items():
        types = (resource_type,)
        matches = or_(*(and_(*(sql.condition(c, r, types) for c in clauses)) for clauses in alternatives))
        where.append(or_(r.c.resource_type != resource_type, matches))
    for resource_type, clause in sel.access.items():
        where.append(or_(r.c.resource_type != resource_type, sql.condition(clause, r, (resource_type,))))
    return where


async def export_page(store: SqlResourceStore, sel: ExportSelection, after_pk: int,
                      limit: int) -> list[tuple[int, str, str, bool, str | None]]:
    """(pk, type, id, deleted, JSON) of the next rows after a pk, in pk order."""
    stmt = (select(res.c.pk, res.c.resource_type, res.c.id, res.c.deleted, res.c.content)
            .where(res.c.pk > after_pk, *_selection_conditions(store, sel)).order_by(res.c.pk).limit(limit))
    async with store.read_engine.connect() as conn:
        return [tuple(row) for row in (await conn.execute(stmt)).all()]


async def pk_range(store: SqlResourceStore) -> tuple[int, int]:
    """Smallest and largest row key (two index lookups), to tell how far a pk-ordered scan has come."""
    async with store.read_engine.connect() as conn:
        low, high = (await conn.execute(select(func.min(res.c.pk), func.max(res.c.pk)))).one()
    return low or 0, high or 0


async def resource_pk(store: SqlResourceStore, resource_type: str, resource_id: str) -> int | None:
    """The row key of a live resource, or None."""
    stmt = select(res.c.pk).where(res.c.resource_type == resource_type, res.c.id == resource_id,
                                  res.c.deleted == false())
    async with store.read_engine.connect() as conn:
        return (await conn.execute(stmt)).scalar()


async def scan_type(store: SqlResourceStore, resource_type: str, after_pk: int, limit: int, *,
                    since: datetime | None = None,
                    patients: list[str] | None = None) -> list[tuple[int, str]]:
    """(pk, JSON) of live resources of one type after a pk (view runs)."""
    where = [res.c.resource_type == resource_type, res.c.deleted == false(), res.c.pk > after_pk]
    if since is not None:
        where.append(res.c.last_updated > since)
    if patients is not None:
        where.append(res.c.patient_key.in_(patients))
    stmt = select(res.c.pk, res.c.content).where(*where).order_by(res.c.pk).limit(limit)
    async with store.read_engine.connect() as conn:
        return [tuple(row) for row in (await conn.execute(stmt)).all()]


async def count_type(store: SqlResourceStore, resource_type: str) -> int:
    stmt = select(func.count()).select_from(res).where(res.c.resource_type == resource_type,
                                                       res.c.deleted == false())
    async with store.read_engine.connect() as conn:
        return (await conn.execute(stmt)).scalar_one()
