"""Tables of the resource store (SQLAlchemy Core), shared by the SQLite and PostgreSQL backends."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator


class JsonDocument(TypeDecorator):
    """A resource as JSON text in Python; JSONB on PostgreSQL, TEXT on SQLite.

    The engines are built with identity JSON (de)serialisers, so values pass as already-encoded
    text both ways and a read never parses the document."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(Text())


class UtcDateTime(TypeDecorator):
    """Aware UTC datetimes in Python; timestamptz on PostgreSQL, naive UTC text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


metadata = MetaData()

# The current state of every resource: one row per (type, id), the read path is a primary-key lookup.
resources = Table(
    "resources",
    metadata,
    Column("resource_type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", UtcDateTime, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    # Patient-compartment key: the distribution column for a sharded (Citus) deployment.
    Column("patient_key", String(64), nullable=True),
    Column("content", JsonDocument, nullable=True),
)

# Every version ever written, including deletions; seq is a global, monotonic history cursor.
resource_versions = Table(
    "resource_versions",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", UtcDateTime, nullable=False),
    Column("method", String(8), nullable=False),
    Column("patient_key", String(64), nullable=True),
    Column("content", JsonDocument, nullable=True),
    UniqueConstraint("resource_type", "id", "version_id", name="uq_resource_versions_version"),
    Index("ix_resource_versions_type_seq", "resource_type", "seq"),
    Index("ix_resource_versions_last_updated", "last_updated"),
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("description", String(200), nullable=False),
    Column("applied_at", UtcDateTime, nullable=False, default=lambda: datetime.now(UTC)),
)
