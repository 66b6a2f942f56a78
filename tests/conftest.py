"""Fixtures: a real `fhir-server serve` process per backend (SQLite file, throwaway PostgreSQL
cluster), reached over real HTTP. The same API tests run against both backends."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from pgcluster import find_bindir, free_port, postgres_cluster  # noqa: E402

BACKENDS = ["sqlite", "postgresql"]
# PostgreSQL with resources, history and search index hash-partitioned by patient (FHIR_DB_PARTITIONS): the
# distributed layout (store/distribution.py). A module runs on it too with `pytestmark = on_every_layout(...)`.
PARTITIONED = "postgresql-partitioned"
LAYOUTS = [*BACKENDS, PARTITIONED]


def on_every_layout(fixture: str, scope: str = "module"):
    """Parametrize a server fixture (`server`, `fresh_server`, ...) over both backends and the partitioned
    layout, for a module whose behaviour must not depend on how the tables are laid out."""
    return pytest.mark.parametrize(fixture, LAYOUTS, indirect=True, scope=scope)


class RunningServer:
    def __init__(self, base_url: str, process: subprocess.Popen, log_path: Path, data_dir: Path,
                 dicom_port: int = 0):
        self.base_url = base_url
        self.process = process
        self.log_path = log_path
        self.data_dir = data_dir
        self.dicom_port = dicom_port
        self.ae_title = "ALLIANCE"
        self.database_url = ""  # empty: the SQLite file in data_dir

    def log_lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()


def start_server(env_extra: dict[str, str], workers: int = 1, data_dir: Path | None = None) -> RunningServer:
    data_dir = Path(data_dir or tempfile.mkdtemp(prefix="fhir-test-data-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = data_dir / "server.log"
    env = {**os.environ, "FHIR_LOG_LEVEL": "INFO", "FHIR_DICOM_PORT": "0", "FHIR_AUTH": "off",
           **env_extra}
    beside = Path(sys.executable).parent / "fhir-server"
    exe = str(beside) if beside.exists() else shutil.which("fhir-server")
    with open(log_path, "wb") as log:
        process = subprocess.Popen([exe, "serve", "--port", str(port), "--data-dir", str(data_dir),
                                    "--workers", str(workers)], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                return RunningServer(base, process, log_path, data_dir)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not become ready: {log_path.read_text()[-3000:]}")


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
    shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway cluster, or FHIR_TEST_DATABASE_URL. Skipped only where no PostgreSQL exists and
    FHIR_REQUIRE_POSTGRES is unset (CI sets it, so there a missing server fails the run)."""
    if os.environ.get("FHIR_TEST_DATABASE_URL"):
        yield os.environ["FHIR_TEST_DATABASE_URL"]
        return
    if find_bindir() is None:
        if os.environ.get("FHIR_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL server binaries not found and FHIR_REQUIRE_POSTGRES is set")
        pytest.skip("PostgreSQL server binaries (initdb) not installed")
    with postgres_cluster() as url:
        yield url


ECG_CENTRE = "Organization/county-ecg-centre"


@pytest.fixture(scope="session", params=BACKENDS)
def server(request) -> Iterator[RunningServer]:
    env = {"FHIR_DATABASE_URL": "", "FHIR_ECG_REFERRAL_ORGANIZATION": ECG_CENTRE}
    if request.param == "postgresql":
        env["FHIR_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    elif request.param == PARTITIONED:
        env.update(_fresh_database_env(request))
    running = start_server(env)
    running.database_url = env["FHIR_DATABASE_URL"]
    yield running
    stop_server(running)


def _fresh_database_env(request, backend: str | None = None) -> dict[str, str]:
    """Environment for a server with an empty database of its own on the backend (default: the param)."""
    env = {"FHIR_DATABASE_URL": ""}
    if (backend or request.param) in ("postgresql", PARTITIONED):
        base = request.getfixturevalue("postgres_url")
        name = f"fhir_{uuid.uuid4().hex[:12]}"
        asyncio.run(_create_database(base, name))
        env["FHIR_DATABASE_URL"] = base.rsplit("/", 1)[0] + f"/{name}"
    if (backend or request.param) == PARTITIONED:
        env["FHIR_DB_PARTITIONS"] = "4"
    return env


@pytest.fixture(scope="module", params=BACKENDS)
def fresh_server(request) -> Iterator[RunningServer]:
    """A server with an empty store of its own, for a test module that needs exact result sets."""
    database = _fresh_database_env(request)
    running = start_server(database)
    running.database_url = database["FHIR_DATABASE_URL"]
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def dicom_server_env() -> dict[str, str]:
    """Extra environment for the module's dicom_server; a test module overrides it (FHIR_DICOM_PEERS, say)."""
    return {}


@pytest.fixture(scope="module", params=BACKENDS)
def dicom_server(request, dicom_server_env: dict[str, str]) -> Iterator[RunningServer]:
    """A server with an empty store and its DICOM SCP on a port of its own (FHIR_DICOM_PORT)."""
    port = free_port()
    database = _fresh_database_env(request)
    running = start_server({**database, **dicom_server_env, "FHIR_DICOM_PORT": str(port)})
    running.dicom_port = port
    running.database_url = database["FHIR_DATABASE_URL"]
    deadline = time.monotonic() + 30
    while True:  # the SCP is a process of its own: wait until it accepts connections
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                stop_server(running)
                raise RuntimeError(f"DICOM SCP did not start: {running.log_path.read_text()[-3000:]}") from None
            time.sleep(0.1)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def dicom_client(dicom_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dicom_server.base_url, timeout=30,
                      headers={"Content-Type": "application/fhir+json"}) as http:
        yield http


def run_sql(server: RunningServer, sql: str, *params) -> list[tuple]:
    """Rows of `sql` ($1, $2… placeholders) run straight on the server's database, on either backend."""
    if server.database_url:
        import asyncpg

        async def run() -> list[tuple]:
            conn = await asyncpg.connect(server.database_url)
            try:
                return [tuple(row) for row in await conn.fetch(sql, *params)]
            finally:
                await conn.close()
        return asyncio.run(run())
    with sqlite3.connect(server.data_dir / "fhir.sqlite3", timeout=30) as db:
        return db.execute(re.sub(r"\$\d+", "?", sql), params).fetchall()


async def pg_fetch(url: str, sql: str, *args) -> list:
    """Rows of one statement ($1, $2… placeholders) on a PostgreSQL database, on a connection of its own."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _create_database(url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def fresh_client(fresh_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fresh_server.base_url, timeout=30,
                      headers={"Content-Type": "application/fhir+json"}) as http:
        yield http


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30,
                      headers={"Content-Type": "application/fhir+json"}) as http:
        yield http


@pytest.fixture
def unchanged(client):
    """Assert that the test's rejected requests wrote nothing."""
    before = newest_history_entry(client)
    yield
    assert newest_history_entry(client) == before


def newest_history_entry(client: httpx.Client) -> tuple[str, str] | None:
    """(fullUrl, etag) of the newest version in the whole store: a cheap fingerprint of its state."""
    entries = client.get("/_history", params={"_count": 1}).json().get("entry", [])
    return (entries[0]["fullUrl"], entries[0]["response"]["etag"]) if entries else None
