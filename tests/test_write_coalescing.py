"""Plain creates that arrive together are written in shared statements (store/coalesce.py): the batching
itself, then on a real PostgreSQL and a real SQLite file that a batch writes every row a lone create
writes, and that one bad item fails alone."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import asyncpg
import pytest
from conftest import _fresh_database_env, pg_fetch

from fhir_server.model.outcome import Conflict
from fhir_server.service import ResourceService
from fhir_server.settings import Settings
from fhir_server.store import open_store
from fhir_server.store.coalesce import Coalescer


class Bad(Exception):
    pass


class Recorder:
    """A flush that records its batches; items named 'bad' make a batch fail with Bad, 'down' with OSError."""

    def __init__(self):
        self.batches: list[list[str]] = []

    async def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        await asyncio.sleep(0.01)
        if "bad" in items:
            raise Bad("bad item")
        if "down" in items:
            raise OSError("connection lost")
        return [item.upper() for item in items]


def coalescer(recorder: Recorder, in_flight: int = 1, **options) -> Coalescer[str, str]:
    return Coalescer(recorder, retry_alone=lambda exc: isinstance(exc, Bad), in_flight=in_flight, max_batch=10,
                     **options)


async def test_an_idle_coalescer_writes_at_once_and_alone():
    recorder = Recorder()
    writes = coalescer(recorder)
    assert await writes.submit("a") == "A"
    assert await writes.submit("b") == "B"
    assert recorder.batches == [["a"], ["b"]]


async def test_what_arrives_during_a_flush_goes_together_into_the_next():
    recorder = Recorder()
    writes = coalescer(recorder)
    first = asyncio.ensure_future(writes.submit("first"))
    await asyncio.sleep(0)  # the first flush is under way
    rest = [f"item{n}" for n in range(25)]
    assert await asyncio.gather(first, *(writes.submit(item) for item in rest)) == [
        "FIRST", *(item.upper() for item in rest)]
    # at most in_flight flushes at a time, at most max_batch items each, in order of arrival
    assert recorder.batches == [["first"], rest[:10], rest[10:20], rest[20:]]


async def test_two_flushes_may_run_at_once():
    recorder = Recorder()
    writes = coalescer(recorder, in_flight=2)
    first = asyncio.ensure_future(writes.submit("i0"))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(writes.submit("i1"))
    await asyncio.sleep(0)  # two flushes under way: the rest waits for the first of them to end
    results = await asyncio.gather(first, second, *(writes.submit(f"i{n}") for n in range(2, 6)))
    assert results == [f"I{n}" for n in range(6)]
    assert recorder.batches == [["i0"], ["i1"], ["i2", "i3", "i4", "i5"]]


async def test_a_batch_holds_at_most_max_weight_but_always_one_item():
    recorder = Recorder()
    writes = coalescer(recorder, weigh=len, max_weight=8)
    first = asyncio.ensure_future(writes.submit("x"))
    await asyncio.sleep(0)
    items = ["aaaa", "bbbb", "cccc", "a-long-item", "dd"]
    assert await asyncio.gather(first, *(writes.submit(item) for item in items)) == ["X", *map(str.upper, items)]
    assert recorder.batches == [["x"], ["aaaa", "bbbb"], ["cccc"], ["a-long-item"], ["dd"]]


async def test_a_request_arriving_as_every_flush_ends_is_still_written():
    """No lost wakeup: a drain counts as running until it has seen nothing left to write."""
    release = asyncio.Event()
    batches = []

    async def flush(items):
        batches.append(items)
        await release.wait()
        return items

    writes = Coalescer(flush, retry_alone=lambda exc: False, in_flight=2)
    running = []
    for n in (1, 2):
        running.append(asyncio.ensure_future(writes.submit(n)))
        for _ in range(3):
            await asyncio.sleep(0)
    assert batches == [[1], [2]]
    release.set()  # both flushes end in the same turn of the loop ...
    late = asyncio.ensure_future(writes.submit(3))  # ... as a request arrives
    assert await asyncio.wait_for(asyncio.gather(*running, late), 2) == [1, 2, 3]


async def test_a_flush_answering_the_wrong_number_of_results_fails_its_requests_rather_than_hanging():
    async def flush(items):
        return items[:-1]

    writes = Coalescer(flush, retry_alone=lambda exc: False, in_flight=1)
    results = await asyncio.wait_for(asyncio.gather(*(writes.submit(n) for n in range(3)),
                                                    return_exceptions=True), 2)
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_a_data_error_is_retried_item_by_item_so_only_its_item_fails():
    recorder = Recorder()
    writes = coalescer(recorder)
    await asyncio.gather(writes.submit("warm"))
    results = await asyncio.gather(*(writes.submit(item) for item in ["a", "bad", "c"]), return_exceptions=True)
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], Bad)
    assert recorder.batches[1:] == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]


async def test_a_connection_error_fails_the_whole_batch_without_retrying():
    recorder = Recorder()
    writes = coalescer(recorder)
    results = await asyncio.gather(*(writes.submit(item) for item in ["a", "down", "c"]), return_exceptions=True)
    assert recorder.batches == [["a", "down", "c"]]
    assert all(isinstance(r, OSError) for r in results)


async def test_a_drain_cancelled_before_it_ran_leaves_nothing_waiting():
    """Shutdown cancels every task, a drain maybe before its first step: what waited is cancelled, and the
    coalescer still works for whoever comes next."""
    recorder = Recorder()
    writes = coalescer(recorder)
    request = asyncio.ensure_future(writes.submit("x"))
    await asyncio.sleep(0)  # the request has queued its item and started a drain, which has not run yet
    (drain,) = writes._tasks
    drain.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(request, 2)
    assert recorder.batches == []
    assert await asyncio.wait_for(writes.submit("y"), 2) == "Y"


async def test_a_cancelled_request_does_not_cancel_the_write():
    recorder = Recorder()
    writes = coalescer(recorder)
    request = asyncio.ensure_future(writes.submit("x"))
    await asyncio.sleep(0.001)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await asyncio.sleep(0.03)
    assert recorder.batches == [["x"]]  # the flush ran to its end


# ---- on PostgreSQL ----

def observation(n: int) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/p{n % 3}"}, "effectiveDateTime": f"2026-01-{n % 28 + 1:02d}",
            "valueQuantity": {"value": 60 + n, "unit": "/min", "system": "http://unitsofmeasure.org",
                              "code": "/min"}}


@pytest.fixture
def database_url(request) -> str:
    return _fresh_database_env(request, "postgresql")["FHIR_DATABASE_URL"]


# (FHIR_DB_CREATE_BATCHES, FHIR_DB_PARTITIONS): partitioned, a batch also locks and looks for its ids first
@pytest.fixture(params=[(0, 0), (1, 0), (2, 0), (0, 4), (2, 4)], ids=lambda p: f"batches={p[0]},partitions={p[1]}")
async def service(request, database_url):
    batches, partitions = request.param
    settings = Settings(database_url=database_url, db_create_batches=batches, db_partitions=partitions,
                        terminology_load=False)
    store = open_store(settings)
    await store.migrate()
    service = ResourceService(store, settings)
    await service.start()
    service.url = database_url
    yield service
    await store.close()


async def index_rows(url: str, ids: list[str]) -> dict[str, int]:
    """Index rows per table of the Observations with these ids."""
    counts = {}
    for table in ("search_token", "search_reference", "search_date", "search_quantity"):
        rows = await pg_fetch(url, f"SELECT count(*) FROM {table} t JOIN resources r ON r.pk = t.res_pk"
                                " WHERE r.resource_type = 'Observation' AND r.id = ANY($1::text[])", ids)
        counts[table] = rows[0][0]
    return counts


def count_flushes(store) -> list[int]:
    """The size of each batch the store's coalescer writes from now on (nothing without one)."""
    sizes: list[int] = []
    if store._creates is not None:
        flush = store._creates._flush

        async def counted(items):
            sizes.append(len(items))
            return await flush(items)
        store._creates._flush = counted
    return sizes


async def test_creates_together_write_what_creates_alone_write(service):
    alone = [(await service.create("Observation", observation(n))).version for n in range(3)]
    await pg_fetch(service.url, "INSERT INTO subscription_types VALUES ('watching', 'Observation')")
    flushes = count_flushes(service.store)
    together = [r.version for r in await asyncio.gather(*(service.create("Observation", observation(n))
                                                           for n in range(40)))]
    if service.settings.db_create_batches:
        assert sum(flushes) == 40 and len(flushes) < 40
    events = await pg_fetch(service.url, "SELECT resource_id, version_id FROM subscription_events")
    assert sorted(events) == sorted((v.id, 1) for v in together)  # one change event per create
    ids = [v.id for v in together]
    assert len(set(ids)) == 40
    rows = await pg_fetch(service.url, "SELECT id, version_id, patient_key, last_updated, content::text FROM resources"
                                    " WHERE id = ANY($1::text[])", ids)
    assert len(rows) == 40
    by_id = {row["id"]: row for row in rows}
    for n, version in enumerate(together):
        row = by_id[version.id]
        assert row["version_id"] == 1 and row["patient_key"] == f"p{n % 3}"
        assert row["last_updated"] == version.last_updated  # each create keeps the time it arrived at
        assert json.loads(row["content"]) == json.loads(version.content)
        assert json.loads(version.content)["meta"]["lastUpdated"] == version.last_updated_instant
    history = await pg_fetch(service.url, "SELECT count(*) FROM resource_versions WHERE id = ANY($1::text[])"
                                       " AND method = 'POST' AND version_id = 1", ids)
    assert history[0][0] == 40
    # every create has as many index rows as a lone create of the same shape
    per_alone = await index_rows(service.url, [alone[0].id])
    assert await index_rows(service.url, ids) == {table: 40 * count for table, count in per_alone.items()}
    _, page = await service.search(("Observation",), [("subject", "Patient/p1"), ("_count", "100")],
                                   base_url="http://x", strict=True)
    assert {v.id for v in page.matches} >= {v.id for n, v in enumerate(together) if n % 3 == 1}
    # written together: fewer transactions than creates (PostgreSQL's xmin is the writing transaction)
    transactions = await pg_fetch(service.url, "SELECT count(DISTINCT xmin::text) FROM resources"
                                            " WHERE id = ANY($1::text[])", ids)
    assert transactions[0][0] == (len(flushes) if service.settings.db_create_batches else 40)


async def test_an_index_row_too_large_fails_its_create_alone(service):
    """An error PostgreSQL reports about one item's data (here a btree row over its size limit) fails
    that create only; the batch is written again item by item."""
    huge = observation(0)
    huge["identifier"] = [{"system": "urn:x:" + "".join(chr(0x10000 + n) for n in range(990)), "value": "v"}]
    results = await asyncio.gather(*(service.create("Observation", body) for body in
                                     [observation(1), observation(2), huge, observation(3)]),
                                   return_exceptions=True)
    assert isinstance(results[2], asyncpg.ProgramLimitExceededError)
    created = [r.version.id for n, r in enumerate(results) if n != 2]
    rows = await pg_fetch(service.url, "SELECT count(*) FROM resources WHERE id = ANY($1::text[])", created)
    assert rows[0][0] == 3
    assert (await pg_fetch(service.url, "SELECT count(*) FROM resources"))[0][0] == 3


async def test_a_taken_id_in_a_batch_fails_alone(service):
    store = service.store
    first = await store.create("Observation", "taken", observation(0))
    results = await asyncio.gather(*(store.create("Observation", rid, observation(n))
                                     for n, rid in enumerate(["new-a", "taken", "new-b", "new-c"])),
                                   return_exceptions=True)
    assert isinstance(results[1], Conflict)
    assert [r.id for n, r in enumerate(results) if n != 1] == ["new-a", "new-b", "new-c"]
    rows = await pg_fetch(service.url, "SELECT id, version_id, content::text FROM resources"
                                    " WHERE id IN ('taken', 'new-a', 'new-b', 'new-c') ORDER BY id")
    assert [(r["id"], r["version_id"]) for r in rows] == [("new-a", 1), ("new-b", 1), ("new-c", 1), ("taken", 1)]
    assert json.loads(rows[3]["content"]) == json.loads(first.content)
    history = await pg_fetch(service.url, "SELECT count(*) FROM resource_versions WHERE id = 'taken'")
    assert history[0][0] == 1


async def test_one_id_twice_among_creates_arriving_together_is_written_once(service):
    """Two creates of one id for two patients: partitioned, their rows would have two shard_keys and no key
    would see the clash; on every layout one is written and the other refused."""
    store = service.store
    results = await asyncio.gather(*(store.create("Observation", rid, observation(n))
                                     for n, rid in enumerate(["one-a", "twice", "one-b", "twice"])),
                                   return_exceptions=True)
    assert [type(r).__name__ for r in results].count("Conflict") == 1
    rows = await pg_fetch(service.url, "SELECT id, count(*) FROM resources GROUP BY id ORDER BY id")
    assert [tuple(r) for r in rows] == [("one-a", 1), ("one-b", 1), ("twice", 1)]
    history = await pg_fetch(service.url, "SELECT count(*) FROM resource_versions WHERE id = 'twice'")
    assert history[0][0] == 1


# ---- on SQLite (one writer: one flush at a time, one transaction and one commit per batch) ----

@pytest.fixture(params=[0, 1], ids=lambda n: f"sqlite-batches={n}")
async def sqlite_service(request, tmp_path):
    settings = Settings(data_dir=tmp_path, database_url="", db_create_batches=request.param, terminology_load=False)
    store = open_store(settings)
    await store.migrate()
    service = ResourceService(store, settings)
    await service.start()
    service.db = tmp_path / "fhir.sqlite3"
    yield service
    await store.close()


def sqlite_rows(path, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql, params).fetchall()


async def test_sqlite_creates_together_write_what_creates_alone_write(sqlite_service):
    service = sqlite_service
    alone = (await service.create("Observation", observation(0))).version
    sqlite_rows(service.db, "INSERT INTO subscription_types VALUES ('watching', 'Observation')")
    flushes = count_flushes(service.store)
    together = [r.version for r in await asyncio.gather(*(service.create("Observation", observation(n))
                                                           for n in range(40)))]
    if service.settings.db_create_batches:
        assert sum(flushes) == 40 and len(flushes) < 40
    events = sqlite_rows(service.db, "SELECT resource_id, version_id FROM subscription_events")
    assert sorted(events) == sorted((v.id, 1) for v in together)
    ids = [v.id for v in together]
    marks = ", ".join("?" * len(ids))
    rows = sqlite_rows(service.db, f"SELECT id, version_id, patient_key, content FROM resources WHERE id IN ({marks})",
                       *ids)
    assert len(rows) == 40
    by_id = {row[0]: row for row in rows}
    for n, version in enumerate(together):
        _, version_id, key, content = by_id[version.id]
        assert version_id == 1 and key == f"p{n % 3}" and json.loads(content) == json.loads(version.content)
    assert sqlite_rows(service.db, f"SELECT count(*) FROM resource_versions WHERE id IN ({marks})", *ids) == [(40,)]
    for table in ("search_token", "search_reference", "search_date", "search_quantity"):
        def count(chosen: list[str], table=table) -> int:
            return sqlite_rows(service.db, f"SELECT count(*) FROM {table} t JOIN resources r ON r.pk = t.res_pk"
                                           f" WHERE r.id IN ({', '.join('?' * len(chosen))})", *chosen)[0][0]
        assert count(ids) == 40 * count([alone.id]) > 0
    _, page = await service.search(("Observation",), [("subject", "Patient/p1"), ("_count", "100")],
                                   base_url="http://x", strict=True)
    assert {v.id for v in page.matches} >= {v.id for n, v in enumerate(together) if n % 3 == 1}
    if service.settings.db_create_batches:  # a batch is stamped at its write: one stamp per batch
        assert len({v.last_updated for v in together}) <= len(flushes)


async def test_sqlite_a_taken_id_in_a_batch_fails_alone(sqlite_service):
    store = sqlite_service.store
    first = await store.create("Observation", "taken", observation(0))
    results = await asyncio.gather(*(store.create("Observation", rid, observation(n))
                                     for n, rid in enumerate(["new-a", "taken", "new-b"])), return_exceptions=True)
    assert isinstance(results[1], Conflict)
    assert [results[0].id, results[2].id] == ["new-a", "new-b"]
    assert sqlite_rows(sqlite_service.db, "SELECT id, version_id, content FROM resources ORDER BY id") == [
        ("new-a", 1, results[0].content), ("new-b", 1, results[2].content), ("taken", 1, first.content)]
    assert sqlite_rows(sqlite_service.db, "SELECT count(*) FROM resource_versions WHERE id = 'taken'") == [(1,)]


async def test_a_closed_store_opens_no_new_pool(service):
    """A create batch still draining at shutdown must not reopen a pool that nothing would close."""
    await service.store.read("Observation", "none")  # the pools exist
    await service.store.close()
    with pytest.raises(ConnectionError, match="closed"):
        await service.store.create("Observation", "late", observation(0))
    assert service.store._read_pool is None and service.store._write_pool is None
