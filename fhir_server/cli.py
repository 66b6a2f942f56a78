"""The `fhir-server` command."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import click

from .auth.commands import COMMANDS as AUTH_COMMANDS
from .auth.commands import check_auth_setting
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
@click.option("--dicom-port", type=int, default=None,
              help="DICOM SCP port (default 11112, env FHIR_DICOM_PORT; 0 runs no SCP).")
def serve(host: str | None, port: int | None, data_dir: Path | None, workers: int, dicom_port: int | None) -> None:
    """Run the FHIR server (SQLite in the data dir unless FHIR_DATABASE_URL is set) and its DICOM SCP."""
    import subprocess

    import uvicorn

    # Workers are separate processes that build their own Settings: pass choices via the environment.
    for key, value in (("FHIR_HOST", host), ("FHIR_PORT", port), ("FHIR_DATA_DIR", data_dir),
                       ("FHIR_DICOM_PORT", dicom_port)):
        if value is not None:
            os.environ[key] = str(value.resolve() if isinstance(value, Path) else value)
    settings = Settings()
    check_auth_setting(settings)
    if settings.dicom_port:
        _check_dicom_peers(settings)
    if settings.terminology_load:
        _check_terminology(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(_on_store(settings, "migrate"))  # once, before workers start
    base = settings.public_base_url
    click.echo(f"FHIR server ({settings.backend}) at {base}  (metadata: {base}/metadata)", err=True)
    scp = None
    if settings.dicom_port:
        # One SCP process for all HTTP workers; it exits when this process does.
        scp = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "dicom", "--parent-pid", str(os.getpid())])
        click.echo(f"DICOM SCP {settings.dicom_ae_title} on port {settings.dicom_port}", err=True)
    try:
        uvicorn.run("fhir_server.app:create_app", factory=True, host=settings.host, port=settings.port,
                    workers=workers, log_config=None, access_log=False, proxy_headers=True,
                    server_header=False)
    finally:
        if scp is not None:
            scp.terminate()
            try:
                scp.wait(timeout=15)
            except subprocess.TimeoutExpired:
                scp.kill()


@main.command()
@click.option("--host", default=None, help="Interface (default FHIR_DICOM_HOST, else FHIR_HOST).")
@click.option("--port", type=int, default=None, help="DICOM port (default 11112, env FHIR_DICOM_PORT).")
@click.option("--ae-title", default=None, help="AE title (default ALLIANCE, env FHIR_DICOM_AE_TITLE).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory (env FHIR_DATA_DIR).")
@click.option("--parent-pid", type=int, default=None, hidden=True)
def dicom(host: str | None, port: int | None, ae_title: str | None, data_dir: Path | None,
          parent_pid: int | None) -> None:
    """Run the DICOM SCP alone (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET).

    \b
    C-FIND, C-MOVE and C-GET serve the Patient Root and Study Root
    Query/Retrieve models. C-MOVE sends only to the peers named in
    FHIR_DICOM_PEERS ("AE1=host:port,AE2=host:port"); C-GET sends back
    over the requesting association."""
    from .dicom.scp import run
    from .logs import configure_logging

    for key, value in (("FHIR_DICOM_HOST", host), ("FHIR_DICOM_PORT", port), ("FHIR_DICOM_AE_TITLE", ae_title),
                       ("FHIR_DATA_DIR", data_dir)):
        if value is not None:
            os.environ[key] = str(value.resolve() if isinstance(value, Path) else value)
    settings = Settings()
    _check_dicom_peers(settings)
    configure_logging(settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    run(settings, parent_pid=parent_pid)


def _check_dicom_peers(settings: Settings) -> None:
    """A mistyped FHIR_DICOM_PEERS stops the start, rather than failing the first C-MOVE."""
    try:
        _ = settings.dicom_peer_table
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def _check_terminology(settings: Settings) -> None:
    """A missing terminology folder or a broken file in it stops the start, before any worker runs."""
    from .terminology.loading import read_definitions, terminology_dir

    try:
        read_definitions(terminology_dir(settings))
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc


async def _on_store(settings: Settings, method: str) -> None:
    """Open the store, call one of its maintenance methods (migrate, refresh_statistics), close it."""
    from .store import open_store

    store = open_store(settings)
    try:
        await getattr(store, method)()
    finally:
        await store.close()


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--workers", type=int, default=os.cpu_count() or 2, show_default=True, help="Loader processes.")
@click.option("--rejects", type=click.Path(dir_okay=False, path_type=Path), default=Path("rejects.ndjson"),
              show_default=True, help="Where rejected resources are written with their reasons (appended).")
@click.option("--journal", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Progress journal for resuming (default: load-journal.txt in the data dir).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory of the embedded database (env FHIR_DATA_DIR).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def load(files: tuple[Path, ...], workers: int, rejects: Path, journal: Path | None, data_dir: Path | None,
         quiet: bool) -> None:
    """Load NDJSON and Bundle files (e.g. Synthea output) into the store, in parallel and resumably."""
    from .loader import load as run_load

    if data_dir is not None:
        os.environ["FHIR_DATA_DIR"] = str(data_dir.resolve())
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(_on_store(settings, "migrate"))
    started = time.perf_counter()
    totals = run_load(list(files), workers=max(workers, 1), rejects_path=rejects,
                      journal_path=journal or settings.data_dir / "load-journal.txt", progress=not quiet)
    if totals["loaded"]:
        asyncio.run(_on_store(settings, "refresh_statistics"))
    elapsed = time.perf_counter() - started
    rate = totals["loaded"] / elapsed if elapsed > 0 else 0.0
    click.echo(f"loaded {totals['loaded']} resources, rejected {totals['rejected']} (see {rejects}), "
               f"skipped {totals['skipped_units']} of {totals['units']} units already loaded; "
               f"{elapsed:.1f} s, {rate:.0f} resources/s", err=True)
    if totals["rejected"]:
        sys.exit(3)


@main.command()
@click.argument("records", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record instead of the report.")
def ecg(records: tuple[str, ...], as_json: bool) -> None:
    """Triage WFDB ECG records (RECORDS: `mitdb/100`, `mitdb/100.hea` or `mitdb/100.dat`).

    Long records are judged in 10-second windows; the report names the worst finding and when it was."""
    import json

    from .ecg.derived import rhythm_concept
    from .ecg.rhythm import clock
    from .ecg.triage import analyse, summary
    from .ecg.wfdb_record import read_record, record_base

    failed = False
    for record in records:
        try:
            waveform = read_record(record)
        except (OSError, ValueError) as exc:
            click.echo(f"{record}: cannot read the WFDB record: {exc}", err=True)
            failed = True
            continue
        result = analyse(waveform)
        if as_json:
            click.echo(json.dumps({"record": str(record_base(record)), **summary(result)}))
            continue
        long = result.duration > 60
        click.echo(f"{record_base(record)}: {len(waveform.names)} lead(s) {', '.join(waveform.names)}, "
                   f"{waveform.fs:g} Hz, {clock(result.duration, long)}")
        click.echo(f"  triage      {result.level.upper()}")
        click.echo(f"  rhythm      {rhythm_concept(result.rhythm)['text']}")
        rr = result.rr
        if rr is not None and rr.rate_mean is not None:
            click.echo(f"  heart rate  mean {rr.rate_mean:.0f}/min, min {rr.rate_min:.0f}/min, "
                       f"max {rr.rate_max:.0f}/min (min/max beat to beat)")
        click.echo(f"  beats       {result.beats.size}")
        if result.qrs_width is not None:
            click.echo(f"  QRS width   {1000 * result.qrs_width:.0f} ms (median estimate)")
        worst = result.worst
        when = f" at {clock(worst.start, long)}" if worst.start is not None else ""
        click.echo(f"  worst       {worst.reason}{when}")
        click.echo("  reasons")
        for finding in result.findings:
            click.echo(f"    [{finding.level}] {finding.reason}")
    if failed:
        sys.exit(1)


@main.command()
@click.argument("definition", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "ndjson", "json"]), default="csv",
              show_default=True, help="Output format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="File to write ('-' for standard output, text formats only).")
@click.option("--input", "inputs", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Run over these NDJSON files (e.g. a $export's output) instead of the store; repeatable.")
@click.option("--no-header", is_flag=True, help="CSV without the header line.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory of the embedded database (env FHIR_DATA_DIR).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def view(definition: Path, fmt: str, output: Path, inputs: tuple[Path, ...], no_header: bool,
         data_dir: Path | None, quiet: bool) -> None:
    """Run a SQL on FHIR ViewDefinition (JSON file) over the store and write its rows."""
    import orjson

    from .model.outcome import FhirError
    from .views.evaluator import View

    if data_dir is not None:
        os.environ["FHIR_DATA_DIR"] = str(data_dir.resolve())
    if fmt == "parquet" and str(output) == "-":
        raise click.UsageError("Parquet needs a file (-o FILE)")
    try:
        compiled = View(orjson.loads(definition.read_bytes()))
        written = asyncio.run(_run_view(compiled, fmt, output, list(inputs), not no_header, quiet))
    except orjson.JSONDecodeError as exc:
        raise click.ClickException(f"{definition}: not JSON: {exc}") from exc
    except FhirError as exc:
        where = ", ".join(i for issue in exc.issues for i in issue.expression)
        raise click.ClickException(f"{definition}: {exc}" + (f" (at {where})" if where else "")) from exc
    click.echo(f"{written} rows of {compiled.name} written to {output}", err=True)


async def _run_view(compiled, fmt: str, output: Path, inputs: list[Path], header: bool, quiet: bool) -> int:
    from tqdm import tqdm

    from .store import open_store
    from .store.bulk import count_type
    from .views.output import ParquetOutput, TextEncoder
    from .views.run import store_pages

    store = open_store(Settings()) if not inputs else None
    try:
        total = await count_type(store, compiled.resource) if store else None
        bar = tqdm(total=total, unit="res", disable=quiet, dynamic_ncols=True, file=sys.stderr)
        if store is not None:
            pages = store_pages(store, compiled, progress=bar.update)
        else:
            pages = _file_pages(compiled, inputs, bar)
        written = 0
        if fmt == "parquet":
            out = ParquetOutput(compiled, output)
            async for rows in pages:
                out.write(rows)
                written += len(rows)
            out.close()
        else:
            encoder = TextEncoder(compiled, fmt, header)
            with (sys.stdout.buffer if str(output) == "-" else open(output, "wb")) as handle:  # noqa: ASYNC230
                handle.write(encoder.start())
                async for rows in pages:
                    handle.write(encoder.page(rows))
                    written += len(rows)
                handle.write(encoder.end())
        bar.close()
        return written
    finally:
        if store is not None:
            await store.close()


async def _file_pages(compiled, inputs: list[Path], bar):
    from .views.run import resource_pages

    def lines():
        for path in inputs:
            with open(path, "rb") as handle:
                for line in handle:
                    if line.strip():
                        bar.update(1)
                        yield line

    for rows in resource_pages(compiled, lines()):
        yield rows


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema, then exit."""
    asyncio.run(_on_store(Settings(), "migrate"))
    click.echo("schema up to date")


def _settings_for(data_dir: Path | None) -> Settings:
    if data_dir is not None:
        os.environ["FHIR_DATA_DIR"] = str(data_dir.resolve())
    return Settings()


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory (env FHIR_DATA_DIR); the database is FHIR_DATABASE_URL or the SQLite file there.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def backup(out: Path, data_dir: Path | None, quiet: bool) -> None:
    """Back up the database and the DICOM files into the new directory OUT (the server may keep running)."""
    from .backup import BackupError
    from .backup import backup as run_backup

    try:
        manifest = run_backup(_settings_for(data_dir), out, progress=not quiet)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    counts = manifest["counts"]
    click.echo(f"backed up {counts.get('resources', 0)} resources ({counts.get('resource_versions', 0)} versions) "
               f"and {manifest['dicom_files']} DICOM files to {out}", err=True)


@main.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory to restore into (env FHIR_DATA_DIR); it must hold no data yet.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def restore(source: Path, data_dir: Path | None, quiet: bool) -> None:
    """Restore a backup made by `fhir-server backup` into an empty store (stop the server first)."""
    from .backup import BackupError
    from .backup import restore as run_restore

    try:
        result = run_restore(_settings_for(data_dir), source, progress=not quiet)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"restored {result['counts'].get('resources', 0)} resources and {result['dicom_files']} DICOM files",
               err=True)


for _command in AUTH_COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":
    main()
