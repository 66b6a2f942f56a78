"""Write coalescing: concurrent independent writes of one process gathered into few database statements.

Under load a worker holds many plain creates at once, each of which would be its own statement and its
own commit. A `Coalescer` runs at most `in_flight` flushes at a time; whatever arrives while they run
waits and goes, all together, into the next one. An idle server therefore writes each request at once,
alone (no timer, no added latency), and a busy one pays the statement's and the commit's fixed cost once
per batch instead of once per request. A batch holds at most `max_batch` items and, given `weigh`, at
most `max_weight` of their weight (always at least one item).

A flush is all or nothing for its batch. When it fails, `retry_alone` decides what the failure means for
each item: errors that depend on the data (a unique key taken) are retried one item at a time so that
only the offending request fails; errors of the connection or the database fail every item of the batch
with the same error, as a lone write would have failed. Every submitted item is answered: with its
result, its error, or a cancellation when the process shuts down."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

# The stores' cap on a batch of creates: this many characters of resource JSON (a bigger one goes alone).
BATCH_MAX_CHARS = 4 * 1024 * 1024

Item = TypeVar("Item")
Result = TypeVar("Result")
Waiting = tuple[Item, "asyncio.Future[Result]"]


class Coalescer(Generic[Item, Result]):
    def __init__(self, flush: Callable[[list[Item]], Awaitable[list[Result]]], *,
                 retry_alone: Callable[[BaseException], bool], in_flight: int = 2, max_batch: int = 100,
                 weigh: Callable[[Item], int] | None = None, max_weight: int = 0):
        """flush writes a batch and returns one result per item, in order; retry_alone(error) says whether
        a failed batch of several items is retried item by item."""
        self._flush = flush
        self._retry_alone = retry_alone
        self._in_flight = in_flight
        self._max_batch = max_batch
        self._weigh = weigh
        self._max_weight = max_weight
        self._pending: list[Waiting] = []
        self._flushing = 0  # drain tasks started and not yet finished (counted synchronously)
        self._tasks: set[asyncio.Task] = set()  # strong references, so running drains are not collected

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flushing < self._in_flight:
            started = [False]
            task = asyncio.create_task(self._drain(started))
            self._flushing += 1
            self._tasks.add(task)
            task.add_done_callback(lambda done: self._drain_done(done, started))
        # a cancelled request leaves its write to the flush: it cannot be taken back once sent
        return await asyncio.shield(future)

    def _next_batch(self) -> list[Waiting]:
        count, weight = 0, 0
        for item, _ in self._pending[:self._max_batch]:
            if self._weigh is not None:
                weight += self._weigh(item)
                if count and weight > self._max_weight:
                    break
            count += 1
        batch, self._pending = self._pending[:count], self._pending[count:]
        return batch

    async def _drain(self, started: list[bool]) -> None:
        started[0] = True
        try:
            while self._pending:  # from this check to the finally below nothing yields: no wakeup is lost
                await self._write(self._next_batch())
        finally:
            self._flushing -= 1
            if not self._flushing:  # ended early (shutdown, an error) with nobody left to write what waits
                self._abandon()

    def _drain_done(self, task: asyncio.Task, started: list[bool]) -> None:
        self._tasks.discard(task)
        if not started[0]:  # cancelled before its first step: its finally never ran
            self._flushing -= 1
            if not self._flushing:
                self._abandon()

    def _abandon(self) -> None:
        for _, future in self._pending:
            future.cancel()
        self._pending = []

    async def _write(self, batch: list[Waiting]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a flush of {len(batch)} items returned {len(results)} results")
        except Exception as exc:  # noqa: BLE001 - handed to the waiting requests, not swallowed
            if len(batch) > 1 and self._retry_alone(exc):
                for position, one in enumerate(batch):
                    try:
                        await self._write([one])
                    except BaseException:
                        for _, future in batch[position:]:
                            future.cancel()
                        raise
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # shutting down (cancelled): the waiting requests end with it
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
