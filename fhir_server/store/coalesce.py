"""Write coalescing: concurrent independent writes of one process gathered into few database statements.

Under load a worker holds many plain creates at once, each of which would be its own statement and its
own commit. A `Coalescer` runs at most `in_flight` flushes at a time; whatever arrives while they run
waits and goes, all together, into the next one. An idle server therefore writes each request at once,
alone (no timer, no added latency), and a busy one pays the statement's and the commit's fixed cost once
per batch instead of once per request.

A flush is all or nothing for its batch. When it fails, `split` decides what the failure means for each
item: errors that depend on the data (a unique key taken) are retried one item at a time so that only
the offending request fails; errors of the connection or the database fail every item of the batch
with the same error, as a lone write would have failed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    def __init__(self, flush: Callable[[list[Item]], Awaitable[list[Result]]], *,
                 retry_alone: Callable[[BaseException], bool], in_flight: int = 2, max_batch: int = 100):
        """flush writes a batch and returns one result per item, in order; retry_alone(error) says whether
        a failed batch of several items is retried item by item."""
        self._flush = flush
        self._retry_alone = retry_alone
        self._in_flight = in_flight
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._running: set[asyncio.Task] = set()

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if len(self._running) < self._in_flight:
            task = asyncio.create_task(self._drain())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        # a cancelled request leaves its write to the flush: it cannot be taken back once sent
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:self._max_batch], self._pending[self._max_batch:]
            await self._write(batch)

    async def _write(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
        except asyncio.CancelledError:  # shutting down: the waiting requests end with it
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the waiting requests, not swallowed
            if len(batch) > 1 and self._retry_alone(exc):
                for one in batch:
                    await self._write([one])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
