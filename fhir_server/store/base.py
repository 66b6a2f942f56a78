"""The one persistence interface every part of the server writes and reads through."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any


def format_instant(ts: datetime) -> str:
    """FHIR instant with millisecond precision in UTC, e.g. 2026-01-02T03:04:05.678+00:00."""
    return ts.isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class ResourceVersion:
    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    content: str | None  # the resource as JSON text (meta included); None for a deletion
    method: str = ""  # POST / PUT / DELETE: how this version was written (history)

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'

    @property
    def last_updated_instant(self) -> str:
        return format_instant(self.last_updated)


@dataclass(frozen=True, slots=True)
class WriteResult:
    version: ResourceVersion
    created: bool  # True when this write brought the resource into existence (201)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    entries: list[ResourceVersion]
    next_cursor: int | None  # pass back as `cursor` to get the following (older) page
    total: int | None = None


class StoreTransaction(ABC):
    """Writes (and the reads they depend on) that commit or roll back together."""

    @abstractmethod
    async def read(self, resource_type: str, resource_id: str) -> ResourceVersion | None: ...

    @abstractmethod
    async def search(self, query: Any, extra: list[Any] | None = None) -> Any: ...

    @abstractmethod
    async def lock(self, key: str) -> None:
        """Hold a lock on `key` until the transaction ends (conditional create/update races)."""

    @abstractmethod
    async def create(self, resource_type: str, resource_id: str, resource: dict[str, Any],
                     patient_key: str | None = None, index: Any = None) -> ResourceVersion:
        """index: the search index rows (search.extract.IndexRows) written in the same transaction."""

    @abstractmethod
    async def update(self, resource_type: str, resource_id: str, resource: dict[str, Any], *,
                     if_match: int | None = None, patient_key: str | None = None,
                     index: Any = None) -> WriteResult: ...

    @abstractmethod
    async def delete(self, resource_type: str, resource_id: str, *,
                     if_match: int | None = None) -> ResourceVersion | None:
        """Logically delete; return the deletion version, or None if it was already deleted."""

    @abstractmethod
    async def create_many(self, items: list[tuple[str, str, dict[str, Any], str | None, Any]]) -> list[ResourceVersion]:
        """Bulk create of (type, id, resource, patient_key, index) in this transaction."""

    @abstractmethod
    async def replace_index(self, pk: int, key: int, resource_type: str, index: Any) -> None:
        """Rewrite the search index rows of one resource, the row `pk` with shard_key `key`."""

    @abstractmethod
    async def reindex(self, resource_type: str, resource_id: str, make_index: Any) -> bool:
        """Rewrite one resource's index rows with make_index(JSON) of its current version, read under its
        lock in this transaction (after a parameter change); False if it is gone or deleted."""

    @abstractmethod
    async def track_subscription(self, subscription_id: str, resource_type: str | None) -> None:
        """Writes of resource_type record change events for this subscription from now on (None: no
        more, and its undelivered notifications are dropped)."""


class ResourceStore(ABC):
    backend: str

    @abstractmethod
    async def migrate(self) -> list[int]: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the database cannot be reached."""

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[StoreTransaction]: ...

    @abstractmethod
    async def read(self, resource_type: str, resource_id: str) -> ResourceVersion | None:
        """The current version (possibly a deletion), or None if the resource never existed."""

    @abstractmethod
    async def vread(self, resource_type: str, resource_id: str, version_id: int) -> ResourceVersion | None: ...

    @abstractmethod
    async def history(self, resource_type: str | None = None, resource_id: str | None = None, *,
                      since: datetime | None = None, count: int = 20,
                      cursor: int | None = None) -> HistoryPage: ...

    @abstractmethod
    async def scan(self, resource_types: list[str], after_pk: int, limit: int) -> list[tuple[int, str, str, str]]:
        """(pk, type, id, JSON) of current resources after a pk, in pk order."""

    @abstractmethod
    async def search(self, query: Any, extra: list[Any] | None = None) -> Any:
        """Run a search.query.SearchQuery (plus extra clauses, e.g. a compartment); a SearchPage."""

    # Single writes, each in its own transaction.
    async def create(self, resource_type: str, resource_id: str, resource: dict[str, Any],
                     patient_key: str | None = None, index: Any = None) -> ResourceVersion:
        async with self.transaction() as tx:
            return await tx.create(resource_type, resource_id, resource, patient_key, index)

    async def update(self, resource_type: str, resource_id: str, resource: dict[str, Any], *,
                     if_match: int | None = None, patient_key: str | None = None, index: Any = None) -> WriteResult:
        async with self.transaction() as tx:
            return await tx.update(resource_type, resource_id, resource, if_match=if_match,
                                   patient_key=patient_key, index=index)

    async def delete(self, resource_type: str, resource_id: str, *,
                     if_match: int | None = None) -> ResourceVersion | None:
        async with self.transaction() as tx:
            return await tx.delete(resource_type, resource_id, if_match=if_match)

