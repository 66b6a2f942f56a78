"""Persistence: the ResourceStore interface and its SQLite and PostgreSQL implementations."""

from __future__ import annotations

from ..settings import Settings
from .base import HistoryPage, ResourceStore, ResourceVersion, StoreTransaction, WriteResult

MAX_PARTITIONS = 1024  # per table; each is a table of its own with its own indexes


def open_store(settings: Settings) -> ResourceStore:
    """The store the settings ask for: PostgreSQL for postgresql:// URLs, else the SQLite file."""
    if not 0 <= settings.db_partitions <= MAX_PARTITIONS:
        raise ValueError(f"FHIR_DB_PARTITIONS must be between 0 and {MAX_PARTITIONS}, not {settings.db_partitions}")
    if settings.db_partitions and settings.backend != "postgresql":
        raise ValueError("FHIR_DB_PARTITIONS needs PostgreSQL (FHIR_DATABASE_URL); SQLite has no partitions")
    if settings.backend == "postgresql":
        from .postgres import PostgresResourceStore

        return PostgresResourceStore.open(settings)
    from .sqlite import SqliteResourceStore

    return SqliteResourceStore.open(settings)


__all__ = ["HistoryPage", "ResourceStore", "ResourceVersion", "StoreTransaction", "WriteResult", "open_store"]
