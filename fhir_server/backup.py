"""`fhir-server backup` and `restore`: the database and the DICOM blob store, as one directory.

- SQLite: the online backup API (a consistent copy while the server keeps writing).
- PostgreSQL: `pg_dump --format=custom`, restored with `pg_restore` into an empty database.
- Blobs: the DICOM Part 10 files, copied after the database, so every file the database names is in
  the backup (a file received meanwhile may be there too, unnamed and harmless).

A backup directory holds `manifest.json` (backend, time, schema version, row counts), the database
(`fhir.sqlite3` or `database.dump`) and `dicom/`. Restore refuses a target that already holds data."""

from __future__ import annotations

import glob
import json
import os
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from tqdm import tqdm

from . import __version__
from .settings import Settings

MANIFEST = "manifest.json"
SQLITE_FILE = "fhir.sqlite3"
PG_DUMP_FILE = "database.dump"
BLOB_DIR = "dicom"
COUNTED_TABLES = ("resources", "resource_versions", "dicom_instances")


class BackupError(RuntimeError):
    """A backup or restore that cannot be done; the message says why."""


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0, reverse=True)
    if not candidates:
        raise BackupError(f"{name} not found: install the PostgreSQL client (Debian package postgresql-client)")
    return candidates[0]


def _libpq_url(settings: Settings) -> str:
    """The database URL as libpq tools take it (no SQLAlchemy driver name)."""
    return make_url(settings.effective_database_url).set(drivername="postgresql").render_as_string(
        hide_password=False)


def _sqlite_path(settings: Settings) -> Path:
    return Path(make_url(settings.effective_database_url).database)


def _counts_sqlite(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COUNTED_TABLES if t in tables}
        version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] \
            if "schema_migrations" in tables else None
    return {**counts, "schema_version": version}


def _psql(settings: Settings, sql: str) -> str:
    result = subprocess.run([_pg_tool("psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", _libpq_url(settings),
                             "-c", sql], capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupError(f"psql failed: {result.stderr.strip()[-500:]}")
    return result.stdout.strip()


def _counts_postgres(settings: Settings) -> dict[str, int]:
    present = set(_psql(settings, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").split())
    counts = {t: int(_psql(settings, f"SELECT count(*) FROM {t}")) for t in COUNTED_TABLES if t in present}
    version = _psql(settings, "SELECT max(version) FROM schema_migrations") if "schema_migrations" in present else ""
    return {**counts, "schema_version": int(version) if version else None}


def _copy_blobs(source: Path, target: Path, progress: bool) -> int:
    files = [p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".incoming-")] \
        if source.is_dir() else []
    for path in tqdm(files, desc="DICOM files", unit="file", disable=not progress or not files):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)
    return len(files)


def backup(settings: Settings, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Write a backup of the configured store into the new directory `out`; returns the manifest."""
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty; a backup goes into a new directory")
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    if settings.backend == "sqlite":
        source_path = _sqlite_path(settings)
        if not source_path.exists():
            raise BackupError(f"no database at {source_path}")
        source = sqlite3.connect(source_path)
        target = sqlite3.connect(out / SQLITE_FILE)
        try:
            with tqdm(total=1, desc="database", unit="page", disable=not progress) as bar:
                def step(_status, remaining, total):
                    bar.total = total
                    bar.n = total - remaining
                    bar.refresh()
                source.backup(target, pages=1024, progress=step)
        finally:
            target.close()
            source.close()
        counts = _counts_sqlite(out / SQLITE_FILE)
    else:
        counts = _counts_postgres(settings)
        result = subprocess.run([_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
                                 "--file", str(out / PG_DUMP_FILE), _libpq_url(settings)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise BackupError(f"pg_dump failed: {result.stderr.strip()[-800:]}")
    blobs = _copy_blobs(settings.data_dir / BLOB_DIR, out / BLOB_DIR, progress)
    manifest = {"format": 1, "server_version": __version__, "backend": settings.backend,
                "started": started.isoformat(), "finished": datetime.now(UTC).isoformat(),
                "counts": counts, "dicom_files": blobs}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(source: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise BackupError(f"{source} is not a backup: it has no {MANIFEST}") from exc
    except json.JSONDecodeError as exc:
        raise BackupError(f"{source / MANIFEST} is not valid JSON: {exc}") from exc
    if manifest.get("format") != 1 or manifest.get("backend") not in ("sqlite", "postgresql"):
        raise BackupError(f"{source / MANIFEST} is not a backup manifest this server reads")
    return manifest


def restore(settings: Settings, source: Path, *, progress: bool = True) -> dict[str, Any]:
    """Restore the backup in `source` into the configured, empty store and data directory."""
    manifest = read_manifest(source)
    if manifest["backend"] != settings.backend:
        raise BackupError(f"the backup is of a {manifest['backend']} store; the configured one is {settings.backend}")
    blob_target = settings.data_dir / BLOB_DIR
    if blob_target.exists() and any(blob_target.iterdir()):
        raise BackupError(f"{blob_target} already holds DICOM files; restore into an empty data directory")
    if settings.backend == "sqlite":
        target = _sqlite_path(settings)
        if target.exists() and _counts_sqlite(target).get("resources"):
            raise BackupError(f"{target} already holds resources; restore into an empty data directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        partial = target.with_name(target.name + ".restoring")
        shutil.copyfile(source / SQLITE_FILE, partial)
        os.replace(partial, target)  # the database appears whole or not at all
        counts = _counts_sqlite(target)
    else:
        present = set(_psql(settings, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").split())
        if "resources" in present and int(_psql(settings, "SELECT count(*) FROM resources")):
            raise BackupError("the configured PostgreSQL database already holds resources; restore into an empty one")
        # An empty schema a server start may have made would collide with the dump's tables.
        result = subprocess.run([_pg_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--no-privileges",
                                 "--single-transaction", "--exit-on-error", "-d", _libpq_url(settings),
                                 str(source / PG_DUMP_FILE)], capture_output=True, text=True)
        if result.returncode != 0:
            raise BackupError(f"pg_restore failed: {result.stderr.strip()[-800:]}")
        counts = _counts_postgres(settings)
    files = _copy_blobs(source / BLOB_DIR, blob_target, progress)
    expected = {k: v for k, v in manifest["counts"].items()}
    if counts != expected or files < manifest["dicom_files"]:
        raise BackupError(f"restored counts {counts} ({files} DICOM files) differ from the backup's {expected} "
                          f"({manifest['dicom_files']} files)")
    return {"counts": counts, "dicom_files": files}
