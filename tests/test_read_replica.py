"""FHIR_DATABASE_READ_URL: reads and searches go to a PostgreSQL streaming replica (built here with
pg_basebackup as a second local cluster), and a client still reads its own writes — from any worker —
because the primary names the replica in synchronous_standby_names and the server commits with
synchronous_commit=remote_apply."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import httpx
import pytest
from conftest import start_server, stop_server
from pgcluster import controlled_cluster, find_bindir, streaming_replica

pytestmark = pytest.mark.skipif(find_bindir() is None and not os.environ.get("FHIR_REQUIRE_POSTGRES"),
                                reason="PostgreSQL server binaries (initdb) not installed")


async def replica_sessions(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = 'fhir' "
                                   "AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
    finally:
        await conn.close()


async def on_replica(url: str, resource_id: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT count(*) FROM resources WHERE id = $1", resource_id) == 1
    finally:
        await conn.close()


def test_reads_go_to_the_replica_and_clients_read_their_own_writes():
    with controlled_cluster(settings="-c wal_level=replica -c max_wal_senders=4 "
                                     "-c synchronous_standby_names=replica1") as primary:
        with streaming_replica(primary, "replica1") as replica:
            server = start_server({"FHIR_DATABASE_URL": primary.url, "FHIR_DATABASE_READ_URL": replica.url},
                                  workers=2)
            try:
                assert "no synchronous_standby_names" not in server.log_path.read_text()
                with httpx.Client(base_url=server.base_url, timeout=30,
                                  headers={"Content-Type": "application/fhir+json"}) as http:
                    for i in range(10):
                        family = f"Replica{i}"
                        created = http.post("/Patient", json={"resourceType": "Patient", "name": [{"family": family}]})
                        assert created.status_code == 201
                        pid = created.json()["id"]
                        # the very next read and search, on whichever worker, see the write
                        assert http.get(f"/Patient/{pid}").status_code == 200
                        assert http.get("/Patient", params={"family": family}).json()["total"] == 1
                        updated = http.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                                                     "active": True, "name": [{"family": family}]})
                        assert updated.status_code == 200
                        assert http.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "2"
                    assert asyncio.run(on_replica(replica.url, pid))  # applied on the replica before the 201
                    assert asyncio.run(replica_sessions(replica.url)) > 0  # the workers read from the replica
            finally:
                stop_server(server)


def test_a_primary_without_synchronous_standby_is_warned_about(postgres_url):
    # the test cluster names no synchronous standby: a read URL (here the same database) draws the warning
    server = start_server({"FHIR_DATABASE_URL": postgres_url, "FHIR_DATABASE_READ_URL": postgres_url})
    try:
        assert "no synchronous_standby_names" in server.log_path.read_text()
    finally:
        stop_server(server)
