"""A throwaway PostgreSQL cluster (initdb + pg_ctl) on a free loopback port, for tests and benches.

PostgreSQL refuses to run as root, so when we are root the server runs as the `postgres` user."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def find_bindir() -> str | None:
    """Directory holding initdb/pg_ctl, newest major version first, or None."""
    on_path = shutil.which("initdb")
    if on_path:
        return os.path.dirname(os.path.realpath(on_path))
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0, reverse=True)
    return os.path.dirname(candidates[0]) if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], as_postgres: bool) -> None:
    if as_postgres:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


class Cluster:
    """A running throwaway cluster that a fault test can stop and start again (same port, same data)."""

    def __init__(self, bindir: str, datadir: str, workdir: str, options: str, as_postgres: bool, port: int):
        self.bindir, self.datadir, self.workdir = bindir, datadir, workdir
        self.options, self.as_postgres, self.port = options, as_postgres, port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/fhir"
        # the same database through the cluster's Unix-domain socket (cheaper than loopback TCP)
        self.socket_url = f"postgresql://postgres@/fhir?host={workdir}&port={port}"

    def start(self) -> None:
        _run([f"{self.bindir}/pg_ctl", "-D", self.datadir, "-o", self.options, "-l", f"{self.workdir}/log", "-w",
              "start"], self.as_postgres)

    def stop(self, mode: str = "fast") -> None:
        _run([f"{self.bindir}/pg_ctl", "-D", self.datadir, "-m", mode, "-w", "stop"], self.as_postgres)


@contextmanager
def postgres_cluster(*, durable: bool = False, settings: str = "", keep_log: str | None = None) -> Iterator[str]:
    """Yield a postgresql:// URL of a fresh database; the cluster is removed afterwards.

    durable=False turns off fsync (test speed); benches pass durable=True to measure real commits.
    settings: extra server options (e.g. "-c shared_preload_libraries=auto_explain"); keep_log: a path
    the server log is copied to before the cluster is removed."""
    with controlled_cluster(durable=durable, settings=settings, keep_log=keep_log) as cluster:
        yield cluster.url


@contextmanager
def controlled_cluster(*, durable: bool = False, settings: str = "", keep_log: str | None = None) -> Iterator[Cluster]:
    """Like postgres_cluster, but yields the Cluster itself (stop() and start() for fault tests)."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb) not found; install the postgresql package")
    as_postgres = os.geteuid() == 0
    workdir = tempfile.mkdtemp(prefix="fhir-pg-")
    datadir = os.path.join(workdir, "data")
    if as_postgres:
        shutil.chown(workdir, "postgres", "postgres")
    port = free_port()
    options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c max_connections=200 {settings}"
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    cluster = Cluster(bindir, datadir, workdir, options, as_postgres, port)
    try:
        _run([f"{bindir}/initdb", "-D", datadir, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
             as_postgres)
        cluster.start()
        _run([f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "fhir"], as_postgres)
        yield cluster
    finally:
        subprocess.run((["runuser", "-u", "postgres", "--"] if as_postgres else [])
                       + [f"{bindir}/pg_ctl", "-D", datadir, "-m", "immediate", "-w", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if keep_log and os.path.exists(f"{workdir}/log"):
            shutil.copyfile(f"{workdir}/log", keep_log)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def streaming_replica(primary: Cluster, name: str = "replica1") -> Iterator[Cluster]:
    """A hot standby of `primary` made with pg_basebackup, streaming from it as `name` (the primary must
    allow replication connections, which initdb's trust set-up does on loopback)."""
    workdir = tempfile.mkdtemp(prefix="fhir-pg-replica-")
    datadir = os.path.join(workdir, "data")
    if primary.as_postgres:
        shutil.chown(workdir, "postgres", "postgres")
    port = free_port()
    options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c max_connections=200 -c hot_standby=on"
    replica = Cluster(primary.bindir, datadir, workdir, options, primary.as_postgres, port)
    try:
        _run([f"{primary.bindir}/pg_basebackup", "-D", datadir, "-h", "127.0.0.1", "-p", str(primary.port),
              "-U", "postgres", "-R", "-X", "stream", "--no-sync", "--checkpoint=fast"], primary.as_postgres)
        with open(os.path.join(datadir, "postgresql.auto.conf"), "a") as conf:
            conf.write(f"primary_conninfo = 'host=127.0.0.1 port={primary.port} user=postgres "
                       f"application_name={name}'\n")
        replica.start()
        yield replica
    finally:
        subprocess.run((["runuser", "-u", "postgres", "--"] if primary.as_postgres else [])
                       + [f"{primary.bindir}/pg_ctl", "-D", datadir, "-m", "immediate", "-w", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(workdir, ignore_errors=True)
