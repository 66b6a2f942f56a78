"""SQL of the subscription outbox: which types are watched, the change events the write path records
(see RECORD_EVENT in sql.py and the PostgreSQL write statements), and the deliveries the dispatcher owes.

Several dispatchers (one per worker process) may run at once: on PostgreSQL they claim rows with
FOR UPDATE SKIP LOCKED, on SQLite the one writer serialises them; a claimed delivery carries a lease
(claimed_until) so that a dispatcher that dies mid-delivery leaves it to another, never loses it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, or_, select, update

from .base import ResourceVersion
from .schema import resources as res
from .schema import subscription_deliveries as sd
from .schema import subscription_events as se
from .schema import subscription_types as st
from .sql import SqlResourceStore, SqlTransaction


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    resource_type: str
    resource_id: str
    version_id: int


@dataclass(frozen=True, slots=True)
class Delivery:
    pk: int
    subscription_id: str
    channel: str
    resource_type: str
    resource_id: str
    version_id: int
    attempts: int


async def track(tx: SqlTransaction, subscription_id: str, resource_type: str | None) -> None:
    """Watch resource_type for the subscription (None: it is off or deleted, and owed nothing more)."""
    conn = tx.conn
    current = (await conn.execute(select(st.c.resource_type).where(st.c.subscription_id == subscription_id))).first()
    if resource_type is None:
        if current is not None:
            await conn.execute(delete(st).where(st.c.subscription_id == subscription_id))
        await conn.execute(delete(sd).where(sd.c.subscription_id == subscription_id))
    elif current is None:
        await conn.execute(st.insert().values(subscription_id=subscription_id, resource_type=resource_type))
    elif current.resource_type != resource_type:
        await conn.execute(update(st).where(st.c.subscription_id == subscription_id)
                           .values(resource_type=resource_type))


async def watched(conn) -> list[tuple[str, str]]:
    """(subscription id, resource type) of every watching subscription."""
    return [tuple(row) for row in (await conn.execute(select(st.c.subscription_id, st.c.resource_type)
                                                      .order_by(st.c.subscription_id))).all()]


async def has_rows(store: SqlResourceStore, table_name: str) -> bool:
    """A cheap look on the read side, so that an idle dispatcher never takes SQLite's write lock."""
    table = se if table_name == "events" else sd
    async with store.read_engine.connect() as conn:
        return (await conn.execute(select(table.c[0]).limit(1))).first() is not None


async def claim_events(tx: SqlTransaction, limit: int) -> list[Event]:
    query = select(se.c.seq, se.c.resource_type, se.c.resource_id, se.c.version_id).order_by(se.c.seq).limit(limit)
    if tx.store.lock_rows:
        query = query.with_for_update(skip_locked=True)
    return [Event(*row) for row in (await tx.conn.execute(query)).all()]


async def remove_events(tx: SqlTransaction, seqs: list[int]) -> None:
    if seqs:
        await tx.conn.execute(delete(se).where(se.c.seq.in_(seqs)))


async def add_deliveries(tx: SqlTransaction, rows: list[dict], now: datetime) -> None:
    """New deliveries queue behind their subscription's pending ones (which may be backing off)."""
    if not rows:
        return
    ids = sorted({row["subscription_id"] for row in rows})
    waiting = dict((await tx.conn.execute(select(sd.c.subscription_id, func.max(sd.c.next_attempt_at))
                                          .where(sd.c.subscription_id.in_(ids))
                                          .group_by(sd.c.subscription_id))).all())
    await tx.conn.execute(sd.insert(), [
        {**row, "created_at": now, "attempts": 0, "next_attempt_at": max(now, waiting.get(row["subscription_id"], now))}
        for row in rows])


async def claim_deliveries(store: SqlResourceStore, now: datetime, until: datetime, limit: int,
                           websocket_ids: set[str]) -> list[Delivery]:
    """Due deliveries, leased until `until`: rest-hook ones, and websocket ones whose client is bound here."""
    channel = sd.c.channel == "rest-hook"
    if websocket_ids:
        channel = or_(channel, sd.c.subscription_id.in_(sorted(websocket_ids)))
    due = (select(sd.c.pk).where(sd.c.next_attempt_at <= now, or_(sd.c.claimed_until.is_(None),
                                                                   sd.c.claimed_until < now), channel)
           .order_by(sd.c.pk).limit(limit))
    if store.lock_rows:
        due = due.with_for_update(skip_locked=True)
    statement = (update(sd).where(sd.c.pk.in_(due.scalar_subquery())).values(claimed_until=until)
                 .returning(sd.c.pk, sd.c.subscription_id, sd.c.channel, sd.c.resource_type, sd.c.resource_id,
                            sd.c.version_id, sd.c.attempts))
    async with store.transaction() as tx:
        rows = (await tx.conn.execute(statement)).all()
    return sorted((Delivery(*row) for row in rows), key=lambda d: d.pk)


async def remove_deliveries(store: SqlResourceStore, pks: list[int]) -> None:
    """Delivered (or owed no more: the subscription is off, ended or gone)."""
    if pks:
        async with store.transaction() as tx:
            await tx.conn.execute(delete(sd).where(sd.c.pk.in_(pks)))


async def release(store: SqlResourceStore, pks: list[int]) -> None:
    """Give claimed deliveries back untried (their subscription is not active yet, or its socket went)."""
    if pks:
        async with store.transaction() as tx:
            await tx.conn.execute(update(sd).where(sd.c.pk.in_(pks)).values(claimed_until=None))


async def renew(store: SqlResourceStore, pks: list[int], until: datetime) -> None:
    async with store.transaction() as tx:
        await tx.conn.execute(update(sd).where(sd.c.pk.in_(pks)).values(claimed_until=until))


async def failed(store: SqlResourceStore, delivery: Delivery, error: str, retry_at: datetime,
                 claimed: list[int]) -> None:
    """Count a failed attempt and hold back every later delivery of the subscription until the retry
    (the receiver is down: one try per back-off step, and notifications stay in order)."""
    async with store.transaction() as tx:
        await tx.conn.execute(update(sd).where(sd.c.pk == delivery.pk).values(
            attempts=delivery.attempts + 1, next_attempt_at=retry_at, claimed_until=None, last_error=error[:2000]))
        await tx.conn.execute(update(sd).where(
            sd.c.subscription_id == delivery.subscription_id, sd.c.pk != delivery.pk, sd.c.next_attempt_at < retry_at,
            or_(sd.c.claimed_until.is_(None), sd.c.pk.in_(claimed))).values(next_attempt_at=retry_at,
                                                                            claimed_until=None))


async def expire_websocket_deliveries(store: SqlResourceStore, before: datetime) -> int:
    """Pings no client bound for within the retention are dropped (a websocket client that never
    comes back must not make the table grow)."""
    async with store.transaction() as tx:
        result = await tx.conn.execute(delete(sd).where(sd.c.channel == "websocket", sd.c.created_at < before))
    return result.rowcount or 0


async def search_as_version(tx: SqlTransaction, queries: list, version: ResourceVersion, index) -> list[bool]:
    """Does an older version of a resource match each search? Its index rows stand in for the current
    ones inside a savepoint that is rolled back, so the same SQL searches judge it."""
    conn = tx.conn
    row = (await conn.execute(select(res.c.pk, res.c.shard_key).where(res.c.resource_type == version.resource_type,
                                                                      res.c.id == version.id))).first()
    if row is None:
        return [False] * len(queries)
    pk, key = row
    savepoint = await conn.begin_nested()
    try:
        await conn.execute(update(res).where(res.c.shard_key == key, res.c.pk == pk).values(
            version_id=version.version_id, last_updated=version.last_updated, deleted=False))
        await tx.replace_index(pk, key, version.resource_type, index)
        return [bool((await tx.search(query)).matches) for query in queries]
    finally:
        await savepoint.rollback()
