"""All configuration, read from environment variables prefixed ``FHIR_``."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIR_", extra="ignore")

    data_dir: Path = Path("./data")
    # Empty means the embedded default: a SQLite file in data_dir.
    database_url: str = ""
    # A PostgreSQL streaming replica that reads and searches go to (writes and their own reads stay on
    # the primary, which must list the replica in synchronous_standby_names: see README).
    database_read_url: str = ""
    # Public base URL used in Location, fullUrl and Bundle links; empty means "derive from the request".
    base_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "INFO"
    # Page sizes for history (and later search) bundles.
    default_page_size: int = 20
    max_page_size: int = 1000
    # SQLite durability: FULL survives power loss in WAL mode, NORMAL only process crashes.
    sqlite_synchronous: str = "FULL"
    sqlite_busy_timeout_ms: int = 30000
    db_pool_size: int = 10
    # Plain creates of one worker arriving together are written in shared statements, at most this many
    # at a time on PostgreSQL, one at a time on SQLite (0: each create its own statement). store/coalesce.py.
    db_create_batches: int = 2
    # A new PostgreSQL database gets resources, history and search index hash-partitioned by patient, this
    # many partitions a table: the layout a Citus deployment distributes (store/distribution.py). 0: plain.
    db_partitions: int = 0
    max_body_bytes: int = 16 * 1024 * 1024
    # A database statement running longer is cancelled and the request answered 503 (0: no limit).
    query_timeout_s: float = 60
    # Per-client rate limit (requests per second, per worker process; 0: none) and burst (0: twice the rate).
    rate_limit_per_s: float = 0
    rate_limit_burst: int = 0
    # Deepest JSON nesting accepted in a request body (a FHIR resource is rarely deeper than 20).
    max_json_depth: int = 64
    # FastAPI's native OpenTelemetry instrumentation (traces, metrics); off unless an exporter is wanted.
    otel: bool = False
    # A conditional delete that matches more resources than this is refused with 412.
    conditional_delete_max: int = 100
    max_bundle_entries: int = 10000
    # DICOM bridge: the SCP's port (0 turns it off), interface (default: FHIR_HOST) and AE title.
    dicom_port: int = 11112
    dicom_host: str = ""
    dicom_ae_title: str = "ALLIANCE"
    # Peers that C-MOVE may send to: "AE1=host:port,AE2=host:port".
    dicom_peers: str = ""
    # DICOM dates and times are local to the device; FHIR wants a zone with every time.
    dicom_timezone: str = "+08:00"
    # An ImagingStudy is rewritten once a study has been quiet this long (or, under a steady stream,
    # at least this often), and at once when the sending association ends.
    dicom_flush_quiet_s: float = 0.5
    dicom_flush_max_delay_s: float = 2.0
    # Processes the SCP parses instances in (0: a thread of its own process). Parsing is most of an
    # instance's CPU; in a process it runs beside pynetdicom instead of taking turns on one core.
    dicom_parser_processes: int = 1
    # Organization reference of the county ECG centre that critical ECG referrals (ServiceRequest) go to.
    ecg_referral_organization: str = ""
    # DICOMweb: a STOW-RS upload carries whole studies, far more than any FHIR resource; it is held in memory.
    dicomweb_max_body_bytes: int = 512 * 1024 * 1024
    # Most QIDO-RS matches in one answer (a Warning header says when more matched).
    dicomweb_max_results: int = 1000
    # Browser origins (a web viewer such as OHIF) allowed to call /dicomweb: "*", or a comma-separated list;
    # empty sends no CORS headers. The FHIR API is not affected.
    dicomweb_cors_origins: str = "*"
    # SMART on FHIR authorization: "on" (default) or "off" (development only: the server then refuses to
    # listen on anything but loopback).
    auth: str = "on"
    # With authorization on, every request (access or denial) is recorded as an AuditEvent.
    audit: bool = True
    # CodeSystems, ValueSets, ConceptMaps, NamingSystems and profiles loaded into the store on start-up
    # (empty: the checkout's terminology/, else ./terminology); FHIR_TERMINOLOGY_LOAD=false loads nothing.
    terminology_dir: str = ""
    terminology_load: bool = True
    # Most codes one ValueSet expansion may hold (more is refused as too costly).
    terminology_max_expansion: int = 10000
    # Subscriptions: how often each worker's dispatcher looks for change events written by other processes
    # (its own writes wake it at once), and how many events or notifications it takes at a time.
    subscription_poll_s: float = 1.0
    subscription_batch: int = 100
    # A rest-hook notification that fails is retried after base, 2 x base, 4 x base ... seconds (at most
    # max); after this many failed attempts the subscription's status becomes error (retries go on at the
    # longest interval, and a later success makes it active again).
    subscription_max_attempts: int = 5
    subscription_retry_base_s: float = 2.0
    subscription_retry_max_s: float = 300.0
    # Time allowed for one rest-hook POST (connect and answer).
    subscription_timeout_s: float = 10.0
    # Pings owed to a websocket subscription wait this long for a client to bind.
    subscription_websocket_retention_s: float = 86400.0
    # Lifetimes of what the authorization server issues. Access tokens and id_tokens are signed JWTs
    # (a signing key's public half stays in the JWKS this long after it stops signing).
    auth_access_token_ttl_s: int = 3600
    auth_code_ttl_s: int = 60
    # Refresh tokens: offline_access ones live this long; online_access ones only for the login's lifetime.
    auth_refresh_token_ttl_days: int = 90
    auth_online_ttl_s: int = 12 * 3600
    # A new signing key is made when the newest is older than this (also: `fhir-server keys rotate`).
    auth_key_rotation_days: int = 30
    # EHR launch contexts (`fhir-server launch`, POST /auth/launch) must be used within this time.
    auth_launch_ttl_s: int = 600
    # Login and consent pages must be finished within this time of the authorization request.
    auth_request_ttl_s: int = 900
    # Bulk data ($export, $import): resources per second one job may read or write (0: as fast as it
    # can; a limit leaves the database to the clinics' own traffic), output resources per file, how long
    # a worker's hold on a running job lasts without a checkpoint before another worker takes it over,
    # and how long finished jobs and their files are kept.
    bulk_max_rate: int = 0
    bulk_file_max_resources: int = 100_000
    bulk_lease_s: float = 60.0
    bulk_retention_h: float = 24.0
    # URL prefixes $import may fetch NDJSON from (comma-separated); empty: uploads only.
    import_url_prefixes: str = ""

    @cached_property
    def effective_database_url(self) -> str:
        """SQLAlchemy async URL for the configured database."""
        url = self.database_url.strip()
        if not url:
            return f"sqlite+aiosqlite:///{(self.data_dir / 'fhir.sqlite3').resolve()}"
        return _async_driver(url)

    @cached_property
    def effective_read_url(self) -> str:
        """SQLAlchemy async URL of the PostgreSQL streaming replica for reads and searches; empty: none."""
        url = self.database_read_url.strip()
        return _async_driver(url) if url and self.backend == "postgresql" else ""

    @property
    def public_base_url(self) -> str:
        return (self.base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def dicom_peer_table(self) -> dict[str, tuple[str, int]]:
        peers = {}
        for item in filter(None, (p.strip() for p in self.dicom_peers.split(","))):
            title, _, address = item.partition("=")
            host, _, port = address.rpartition(":")
            if not title or not host or not port.isdigit():
                raise ValueError(f"FHIR_DICOM_PEERS entry {item!r} is not AE=host:port")
            peers[title.strip()] = (host.strip(), int(port))
        return peers

    @property
    def backend(self) -> str:
        return "postgresql" if self.effective_database_url.startswith("postgresql") else "sqlite"

    @property
    def auth_enabled(self) -> bool:
        """Authorization is on unless FHIR_AUTH is exactly "off" (a typo never opens the server)."""
        return self.auth.strip().lower() != "off"


def _async_driver(url: str) -> str:
    for plain, driver in (("postgresql://", "postgresql+asyncpg://"), ("postgres://", "postgresql+asyncpg://"),
                          ("sqlite://", "sqlite+aiosqlite://")):
        if url.startswith(plain):
            return driver + url[len(plain):]
    return url
