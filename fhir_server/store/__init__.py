"""Persistence: the ResourceStore interface and its SQLite and PostgreSQL implementations."""

from __future__ import annotations

from ..settings import Settings
from .base import HistoryPage, ResourceStore, ResourceVersion, StoreTransaction, WriteResult


def open_store(settings: Settings) -> ResourceStore:
    """The store the settings ask for: PostgreSQL for postgresql:// URLs, else the SQLite file."""
    if settings.backend == "postgresql":
        from .postgres import PostgresResourceStore

        return PostgresResourceStore.open(settings)
    from .sqlite import SqliteResourceStore

    return SqliteResourceStore.open(settings)


__all__ = ["HistoryPage", "ResourceStore", "ResourceVersion", "StoreTransaction", "WriteResult", "open_store"]
