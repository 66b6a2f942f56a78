"""Tables of the resource store (SQLAlchemy Core), shared by the SQLite and PostgreSQL backends."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
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
    # Surrogate key that the search index tables point at (smaller and faster than type + id).
    Column("pk", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", UtcDateTime, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    # Patient-compartment key: the id of the Patient whose record this is (NULL outside every record).
    Column("patient_key", String(64), nullable=True),
    Column("content", JsonDocument, nullable=True),
    # Distribution value (model/compartment.py shard_key): a hash of the patient, shared by the resource's
    # index rows; in the partitioned layout, the partition (shard) a row lives in, and there never updated
    # in place: a resource that moves to another patient is deleted and inserted again (distribution.py).
    Column("shard_key", BigInteger, nullable=False),
    UniqueConstraint("resource_type", "id", name="uq_resources_type_id"),
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
    Column("shard_key", BigInteger, nullable=False),
    UniqueConstraint("resource_type", "id", "version_id", name="uq_resource_versions_version"),
    Index("ix_resource_versions_type_seq", "resource_type", "seq"),
    Index("ix_resource_versions_last_updated", "last_updated"),
)

# ---- search index tables: one row per indexed value, rewritten with every version ----

# Prefix ("starts with") search compares strings as bytes; PostgreSQL needs the C collation for that.
SearchText = String(200).with_variant(String(200, collation="C"), "postgresql")
UriText = String(1000).with_variant(String(1000, collation="C"), "postgresql")


# The leading columns of every index table; the value columns follow (see value_columns).
INDEX_KEY_COLUMNS = ("res_pk", "resource_type", "param", "shard_key")


def _index_table(name: str, *columns: Column, indexes: list[tuple[str, ...]]) -> Table:
    return Table(
        name, metadata,
        Column("res_pk", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
        Column("resource_type", String(64), nullable=False),
        Column("param", String(100), nullable=False),
        Column("shard_key", BigInteger, nullable=False),  # the resource's (colocation)
        *columns,
        Index(f"ix_{name}_res_pk", "res_pk"),
        *(Index(f"ix_{name}_{'_'.join(cols)}", "resource_type", "param", *cols, "res_pk") for cols in indexes),
    )


search_token = _index_table(
    "search_token", Column("system", UriText), Column("code", SearchText), Column("text", SearchText),
    indexes=[("code", "system"), ("text",)])
search_string = _index_table(
    "search_string", Column("normalized", SearchText), Column("exact", Text), indexes=[("normalized",)])
search_date = _index_table(
    "search_date", Column("low", BigInteger, nullable=False), Column("high", BigInteger, nullable=False),
    indexes=[("low",), ("high",)])
search_number = _index_table("search_number", Column("value", Float, nullable=False), indexes=[("value",)])
search_quantity = _index_table(
    "search_quantity", Column("system", UriText), Column("code", SearchText), Column("value", Float, nullable=False),
    Column("canon_code", SearchText), Column("canon_value", Float), indexes=[("code", "value"), ("canon_code",
                                                                                                  "canon_value")])
search_reference = _index_table(
    "search_reference", Column("target_type", String(64)), Column("target_id", String(64)), Column("url", UriText),
    indexes=[("target_id", "target_type"), ("url",)])
search_uri = _index_table("search_uri", Column("value", UriText), indexes=[("value",)])
search_composite = _index_table(
    "search_composite", Column("c1_system", UriText), Column("c1_code", SearchText), Column("c2_system", UriText),
    Column("c2_code", SearchText), Column("c2_low", Float), Column("c2_high", Float),
    Column("c2_canon_code", SearchText), Column("c2_canon_value", Float),
    indexes=[("c1_code", "c2_code", "c2_low"), ("c1_code", "c2_canon_code", "c2_canon_value")])

def value_columns(table: Table) -> list[Column]:
    """An index table's value columns, in the order of the IndexRows tuples after the param code."""
    return list(table.columns)[len(INDEX_KEY_COLUMNS):]


SEARCH_TABLES = {
    "token": search_token, "string": search_string, "date": search_date, "number": search_number,
    "quantity": search_quantity, "reference": search_reference, "uri": search_uri, "composite": search_composite,
}

# DICOM instances received (C-STORE, STOW-RS): where each Part 10 file lies in the blob store and the
# attributes that C-FIND and QIDO-RS match on. `fhir` holds the instance's ImagingStudy fragments
# (study, series, instance) as the mapping tables produced them; `dicom_json` its DICOM JSON without bulk data.
dicom_instances = Table(
    "dicom_instances",
    metadata,
    Column("pk", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("sop_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("transfer_syntax", String(64), nullable=False),
    Column("patient_id", String(64)),
    Column("issuer", String(64)),
    Column("patient_name", String(200)),
    Column("birth_date", String(8)),
    Column("sex", String(16)),
    Column("study_date", String(8)),
    Column("study_time", String(16)),
    Column("accession", String(64)),
    Column("study_id", String(16)),
    Column("study_description", String(200)),
    Column("referring_physician", String(200)),
    Column("modality", String(16)),
    Column("series_number", Integer),
    Column("series_description", String(200)),
    Column("body_part", String(64)),
    Column("instance_number", Integer),
    Column("blob_key", String(300), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Column("fhir", JsonDocument, nullable=False),
    Column("dicom_json", JsonDocument, nullable=False),
    UniqueConstraint("sop_uid", name="uq_dicom_instances_sop"),
    Index("ix_dicom_instances_study", "study_uid", "series_uid"),
    Index("ix_dicom_instances_series", "series_uid"),
    Index("ix_dicom_instances_patient", "patient_id"),
    Index("ix_dicom_instances_study_date", "study_date"),
    Index("ix_dicom_instances_accession", "accession"),
)

# Asynchronous bulk jobs ($export, $import): kept in the database so that any worker answers a status
# poll and a job outlives a restart. `state` is the job's checkpoint (JSON text), `manifest` the finished
# answer; `owner` and `heartbeat` are the lease of the worker process running it.
bulk_jobs = Table(
    "bulk_jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("request", Text, nullable=False),
    Column("params", Text, nullable=False),
    Column("transaction_time", UtcDateTime, nullable=False),
    Column("owner", String(64), nullable=True),
    Column("heartbeat", UtcDateTime, nullable=False),
    Column("progress", String(200), nullable=False, default=""),
    Column("state", Text, nullable=False, default="{}"),
    Column("manifest", Text, nullable=True),
    Index("ix_bulk_jobs_status_heartbeat", "status", "heartbeat"),
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("description", String(200), nullable=False),
    Column("applied_at", UtcDateTime, nullable=False, default=lambda: datetime.now(UTC)),
)

# ---- subscriptions (R4 Subscription): the change-event outbox and the notifications owed ----

# Subscriptions that are requested, active or in error, by the resource type of their criteria. A write
# of a type listed here records a change event (subscription_events) in its own transaction; with no
# subscription the write path costs one lookup in this small table.
subscription_types = Table(
    "subscription_types",
    metadata,
    Column("subscription_id", String(64), primary_key=True),
    Column("resource_type", String(64), nullable=False),
    Index("ix_subscription_types_type", "resource_type"),
)

# The outbox: one row per written version of a subscribed type, committed with the write itself. The
# dispatcher matches each against the subscriptions' criteria, turns it into deliveries and removes it.
subscription_events = Table(
    "subscription_events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("resource_type", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
)

# Notifications owed to one subscription, removed once delivered. claimed_until is the lease of the
# dispatcher delivering it: past it (a dispatcher that died), another takes the row over.
subscription_deliveries = Table(
    "subscription_deliveries",
    metadata,
    Column("pk", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("subscription_id", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("resource_type", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("claimed_until", UtcDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Index("ix_subscription_deliveries_due", "next_attempt_at"),
    Index("ix_subscription_deliveries_subscription", "subscription_id", "pk"),
)
