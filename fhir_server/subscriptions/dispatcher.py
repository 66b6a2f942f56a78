"""The dispatcher: one task per worker process that keeps subscriptions' status and delivers their
notifications, at least once, from the outbox the write path fills in the write's own transaction.

A cycle: (1) check `requested` subscriptions (criteria valid with today's search parameters) and make
them `active`, and turn those whose `end` has passed `off`; (2) take a batch of change events, match
each against the watching subscriptions' criteria with the SQL search (the criteria plus `_id`; an
event whose version is no longer current is judged as that version, see search_as_version) and turn
matches into deliveries, in one transaction that also removes the events; (3) deliver due
notifications, and remove each only once its receiver has taken it. A failed rest-hook POST is retried
with exponential back-off, holding back that subscription's later notifications; after
FHIR_SUBSCRIPTION_MAX_ATTEMPTS failures the subscription's status is `error` until a delivery succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from ..model.outcome import FhirError
from ..search.extract import extract
from ..store import subscriptions as outbox
from ..store.subscriptions import Delivery, Event
from . import rules
from .websocket import WebSocketHub

log = logging.getLogger("fhir_server.subscriptions")
_HOUSEKEEPING_S = 60.0


@dataclass
class Subscription:
    id: str
    version_id: int
    resource: dict[str, Any]

    @property
    def status(self) -> str:
        return self.resource.get("status", "")

    @property
    def channel(self) -> dict[str, Any]:
        return self.resource.get("channel") or {}


def _now() -> datetime:
    return datetime.now(UTC)


class Dispatcher:
    def __init__(self, service):
        self.service = service
        self.store = service.store
        self.settings = service.settings
        self.sockets = WebSocketHub()
        self.watched_types: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._http: httpx.AsyncClient | None = None
        self._housekeeping_at = 0.0
        self._in_flight: set[int] = set()  # claimed deliveries, given back if the server stops
        # A claimed delivery's lease: one POST's time and a margin (renewed for a long queue, see _deliver_group)
        self._lease = timedelta(seconds=self.settings.subscription_timeout_s + 5)

    # ---- life cycle ----

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=self.settings.subscription_timeout_s, follow_redirects=False)
        self._task = asyncio.create_task(self._run(), name="subscription-dispatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._in_flight:  # a restart need not wait for the leases to run out
            with contextlib.suppress(Exception):
                await outbox.release(self.store, sorted(self._in_flight))
        if self._http is not None:
            await self._http.aclose()

    def written(self, resource_type: str) -> None:
        """A write committed in this process: look at once if a subscription may care."""
        if resource_type in self.watched_types or resource_type == "Subscription":
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                busy = await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database away, say: log, and try again next cycle
                log.exception("subscription dispatcher cycle failed")
                busy = False
            if not busy:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.settings.subscription_poll_s)
                except TimeoutError:
                    pass

    async def cycle(self) -> bool:
        """One round of the three steps; True when a full batch was taken (more may be waiting)."""
        subscriptions = await self._load()
        await self._manage(subscriptions)
        matched = await self._match()
        delivered = await self._deliver()
        loop = asyncio.get_running_loop()
        if loop.time() >= self._housekeeping_at:
            self._housekeeping_at = loop.time() + _HOUSEKEEPING_S
            before = _now() - timedelta(seconds=self.settings.subscription_websocket_retention_s)
            await outbox.expire_websocket_deliveries(self.store, before)
        return matched or delivered

    # ---- subscriptions and their status ----

    async def _load(self, conn=None) -> dict[str, Subscription]:
        """The watching subscriptions (requested, active, error), read through `conn` when given."""
        if conn is None:
            async with self.store.read_engine.connect() as read:
                rows = await outbox.watched(read)
        else:
            rows = await outbox.watched(conn.conn)
        self.watched_types = {resource_type for _, resource_type in rows}
        found = {}
        for subscription_id, _ in rows:
            version = await (conn or self.store).read("Subscription", subscription_id)
            if version is not None and not version.deleted:
                found[subscription_id] = Subscription(subscription_id, version.version_id,
                                                      orjson.loads(version.content))
        return found

    async def _set_status(self, subscription: Subscription, status: str, error: str | None = None) -> None:
        try:
            result = await self.service.set_subscription_status(subscription.id, subscription.version_id, status,
                                                                error)
        except FhirError:  # a client (or another worker) wrote it since, or deleted it: judge it again
            return
        subscription.version_id = result.version.version_id
        subscription.resource = orjson.loads(result.version.content)
        log.info("subscription status", extra={"subscription": subscription.id, "status": status, "error": error})

    async def _manage(self, subscriptions: dict[str, Subscription]) -> None:
        await self.service.custom.refresh_if_changed()
        for subscription in subscriptions.values():
            if rules.end_passed(subscription.resource):
                await self._set_status(subscription, "off", "The subscription's end has passed")
            elif subscription.status in ("requested", "active"):
                try:  # again for active ones: a SearchParameter the criteria use may have gone
                    rules.criteria_query(self.service.registry, subscription.resource.get("criteria") or "")
                except FhirError as exc:
                    await self._set_status(subscription, "error", str(exc))
                else:
                    if subscription.status == "requested":
                        await self._set_status(subscription, "active")

    # ---- matching change events ----

    async def _match(self) -> bool:
        if not await outbox.has_rows(self.store, "events"):
            return False
        batch = self.settings.subscription_batch
        async with self.store.transaction() as tx:
            events = await outbox.claim_events(tx, batch)
            # read after the claim: a subscription committed before an event's write is seen here
            subscriptions = await self._load(tx)
            by_type = defaultdict(list)
            for subscription in subscriptions.values():
                by_type[rules.criteria_type(subscription.resource)].append(subscription)
            rows = []
            for event in events:
                for subscription in await self._matching(tx, event, by_type.get(event.resource_type, [])):
                    rows.append({"subscription_id": subscription.id, "channel": subscription.channel.get("type"),
                                 "resource_type": event.resource_type, "resource_id": event.resource_id,
                                 "version_id": event.version_id})
            await outbox.add_deliveries(tx, rows, _now())
            await outbox.remove_events(tx, [event.seq for event in events])
        if rows:
            log.info("subscription notifications owed", extra={"events": len(events), "deliveries": len(rows)})
        return len(events) == batch

    async def _matching(self, tx, event: Event, candidates: list[Subscription]) -> list[Subscription]:
        queries, judged = [], []
        for subscription in candidates:
            try:
                queries.append(rules.criteria_query(self.service.registry, subscription.resource["criteria"],
                                                    event.resource_id))
                judged.append(subscription)
            except FhirError:  # criteria no longer valid: activation reports it as an error
                continue
        if not judged:
            return []
        current = await tx.read(event.resource_type, event.resource_id)
        if current is not None and current.version_id == event.version_id and not current.deleted:
            hits = [bool((await tx.search(query)).matches) for query in queries]
        else:  # written again (or deleted) since: judge the version the event is about
            version = await self.store.vread(event.resource_type, event.resource_id, event.version_id)
            if version is None or version.deleted:
                return []
            index = extract(event.resource_type, orjson.loads(version.content), self.service.registry)
            hits = await outbox.search_as_version(tx, queries, version, index)
        return [subscription for subscription, hit in zip(judged, hits, strict=True) if hit]

    # ---- delivering ----

    async def _deliver(self) -> bool:
        if not await outbox.has_rows(self.store, "deliveries"):
            return False
        now = _now()
        batch = self.settings.subscription_batch
        claimed = await outbox.claim_deliveries(self.store, now, now + self._lease, batch, self.sockets.bound_ids())
        groups: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in claimed:
            groups[delivery.subscription_id].append(delivery)
        self._in_flight.update(d.pk for d in claimed)
        try:
            await asyncio.gather(*(self._deliver_group(sub_id, items, now + self._lease)
                                   for sub_id, items in groups.items()))
        finally:
            self._in_flight.difference_update(d.pk for d in claimed)
        return len(claimed) == batch

    async def _deliver_group(self, subscription_id: str, items: list[Delivery], leased_until: datetime) -> None:
        """One subscription's claimed notifications, in order; the first failure holds back the rest."""
        pks = [item.pk for item in items]
        version = await self.store.read("Subscription", subscription_id)
        if version is None or version.deleted:
            await outbox.remove_deliveries(self.store, pks)
            return
        subscription = Subscription(subscription_id, version.version_id, orjson.loads(version.content))
        if subscription.status == "off" or rules.end_passed(subscription.resource):
            await outbox.remove_deliveries(self.store, pks)
            return
        if subscription.status == "requested":  # not checked yet: wait for activation
            await outbox.release(self.store, pks)
            return
        for position, item in enumerate(items):
            if _now() + self._lease > leased_until:  # a slow receiver: keep the rest of the queue ours
                leased_until = _now() + self._lease
                await outbox.renew(self.store, pks[position:], leased_until)
            error = await self._send(subscription, item)
            if error is None:
                await outbox.remove_deliveries(self.store, [item.pk])
                continue
            rest = pks[position + 1:]
            if item.channel == "websocket":  # the client went away: the pings wait for it to bind again
                await outbox.release(self.store, pks[position:])
                return
            attempts = item.attempts + 1
            delay = min(self.settings.subscription_retry_base_s * 2 ** (attempts - 1),
                        self.settings.subscription_retry_max_s)
            await outbox.failed(self.store, item, error, _now() + timedelta(seconds=delay), rest)
            log.warning("subscription notification failed", extra={
                "subscription": subscription_id, "attempts": attempts, "error": error})
            if attempts >= self.settings.subscription_max_attempts and subscription.status != "error":
                await self._set_status(subscription, "error", f"Delivery failed {attempts} times; last: {error}")
            return
        if subscription.status == "error":  # the receiver is back
            await self._set_status(subscription, "active")

    async def _send(self, subscription: Subscription, item: Delivery) -> str | None:
        """Deliver one notification; None on success, else what went wrong."""
        if item.channel == "websocket":
            return None if await self.sockets.ping(subscription.id) else "no websocket client bound"
        channel = subscription.channel
        headers = rules.headers(subscription.resource)
        payload = channel.get("payload")
        body = b""
        if payload:
            version = await self.store.vread(item.resource_type, item.resource_id, item.version_id)
            if version is None or version.deleted:
                return None  # nothing left to send (the resource's history was removed)
            body = version.content.encode()
            headers.append(("Content-Type", payload))
        try:
            async with asyncio.timeout(self.settings.subscription_timeout_s):  # the whole POST, not each step
                response = await self._http.post(channel["endpoint"], content=body, headers=headers)
        except (httpx.HTTPError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code} from {channel['endpoint']}"

    # ---- websocket binding ----

    async def check_bind(self, subscription_id: str) -> str | None:
        version = await self.store.read("Subscription", subscription_id)
        if version is None or version.deleted:
            return "is not a known Subscription"
        resource = orjson.loads(version.content)
        if (resource.get("channel") or {}).get("type") != "websocket":
            return "is not a websocket subscription"
        if resource.get("status") == "off":
            return "is off"
        return None
