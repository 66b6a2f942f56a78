"""The `fhir-server` command."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import click

from .settings import Settings


@click.group()
@click.version_option(package_name="alliance-fhir-server")
def main() -> None:
    """County medical alliance FHIR R4 server."""


@main.command()
@click.option("--host", default=None, help="Interface to listen on (default 127.0.0.1, env FHIR_HOST).")
@click.option("--port", type=int, default=None, help="HTTP port (default 8080, env FHIR_PORT).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the embedded database and blobs live (default ./data, env FHIR_DATA_DIR).")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes.")
def serve(host: str | None, port: int | None, data_dir: Path | None, workers: int) -> None:
    """Run the FHIR server (SQLite in the data dir unless FHIR_DATABASE_URL is set)."""
    import uvicorn

    # Workers are separate processes that build their own Settings: pass choices via the environment.
    for key, value in (("FHIR_HOST", host), ("FHIR_PORT", port), ("FHIR_DATA_DIR", data_dir)):
        if value is not None:
            os.environ[key] = str(value.resolve() if isinstance(value, Path) else value)
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(_migrate(settings))  # once, before workers start
    base = settings.base_url or f"http://{settings.host}:{settings.port}"
    click.echo(f"FHIR server ({settings.backend}) at {base}  (metadata: {base}/metadata)", err=True)
    uvicorn.run("fhir_server.app:create_app", factory=True, host=settings.host, port=settings.port,
                workers=workers, log_config=None, access_log=False, proxy_headers=True,
                server_header=False)


async def _migrate(settings: Settings) -> None:
    from .store import open_store

    store = open_store(settings)
    try:
        await store.migrate()
    finally:
        await store.close()


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema, then exit."""
    asyncio.run(_migrate(Settings()))
    click.echo("schema up to date")
