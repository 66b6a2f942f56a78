"""`fhir-server load FILES...`: bulk loading of NDJSON (one resource per line, ids kept) and Bundle
files (transaction/batch processed as such; collection/searchset entries loaded like NDJSON).

Work is split into units (a whole Bundle file, or 1,000 lines of NDJSON) spread over worker
processes. A journal in the data directory records finished units, so a re-run after a crash or
Ctrl-C skips them. Invalid resources are written with their reasons to a rejects file while the
rest loads."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import itertools
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .model.outcome import FhirError, Issue, operation_outcome
from .settings import Settings

CHUNK_LINES = 1000


@dataclass(frozen=True)
class Unit:
    path: str
    kind: str  # "ndjson" or "bundle"
    start: int  # first line (ndjson)
    count: int  # lines (ndjson) or entries (bundle)
    key: str  # journal key: file identity + position
    offset: int = 0  # byte offset of the first line (plain ndjson files)


@dataclass
class UnitResult:
    key: str
    loaded: int
    rejects: list[dict[str, Any]]


def _open(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _file_id(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]


def plan(paths: list[Path], exclude: set[Path] = frozenset()) -> Iterator[Unit]:
    """Units of work for the given files (directories are searched for .ndjson/.json files)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (".json", ".ndjson", ".gz") and p.is_file())
        else:
            files.append(path)
    for path in files:
        if path.resolve() in exclude:
            continue
        file_id = _file_id(path)
        name = path.name.removesuffix(".gz")
        if name.endswith(".ndjson"):
            starts, offset, lines = [], 0, 0
            with _open(str(path)) as handle:
                for line in handle:
                    if lines % CHUNK_LINES == 0:
                        starts.append((lines, offset))
                    offset += len(line)
                    lines += 1
            for start, byte_offset in starts:
                yield Unit(str(path), "ndjson", start, min(CHUNK_LINES, lines - start), f"{file_id}:{start}",
                           byte_offset)
        else:
            with _open(str(path)) as handle:
                try:
                    entries = len(orjson.loads(handle.read()).get("entry") or [])
                except (orjson.JSONDecodeError, AttributeError):
                    entries = 1
            yield Unit(str(path), "bundle", 0, entries, f"{file_id}:bundle")


class Journal:
    """Append-only record of finished units; survives crashes (one line per unit)."""

    def __init__(self, path: Path):
        self.path = path
        self.done: set[str] = set()
        if path.exists():
            self.done = {line.strip() for line in path.read_text().splitlines() if line.strip()}

    def record(self, key: str) -> None:
        with open(self.path, "a") as handle:
            handle.write(key + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.done.add(key)


def _reject(unit: Unit, position: int, reason: FhirError | str) -> dict[str, Any]:
    outcome = reason.outcome() if isinstance(reason, FhirError) else operation_outcome([Issue("invalid", reason)])
    where = {"line": unit.start + position + 1} if unit.kind == "ndjson" else {"entry": position}
    return {"file": unit.path, **where, "outcome": outcome}


class _Worker:
    """One process: its own event loop, store and service."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._open())

    async def _open(self) -> None:
        from .service import ResourceService
        from .store import open_store

        settings = Settings()
        self.store = open_store(settings)
        self.service = ResourceService(self.store, settings)
        await self.service.start()

    def run(self, unit: Unit) -> UnitResult:
        return self.loop.run_until_complete(self._run(unit))

    async def _run(self, unit: Unit) -> UnitResult:
        if unit.kind == "ndjson":
            with _open(unit.path) as handle:
                if unit.path.endswith(".gz"):  # no seeking in a gzip stream: skip lines
                    lines = list(itertools.islice(handle, unit.start, unit.start + unit.count))
                else:
                    handle.seek(unit.offset)
                    lines = list(itertools.islice(handle, unit.count))
            return await self._resources(unit, [(i, line) for i, line in enumerate(lines) if line.strip()])
        with _open(unit.path) as handle:
            raw = handle.read()
        try:
            bundle = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return UnitResult(unit.key, 0, [_reject(unit, 0, f"Malformed JSON: {exc}")])
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            return await self._resources(unit, [(0, raw)])
        if bundle.get("type") in ("transaction", "batch"):
            from .ops.bundle import BundleProcessor

            try:
                response = await BundleProcessor(self.service, "", "minimal").process(bundle)
            except FhirError as exc:
                return UnitResult(unit.key, 0, [_reject(unit, 0, exc)])
            rejects = [_reject(unit, i, e["response"]["status"] + ": " + orjson.dumps(
                e["response"].get("outcome")).decode()) for i, e in enumerate(response.get("entry", []))
                       if not e["response"]["status"].startswith("2")]
            return UnitResult(unit.key, len(response.get("entry", [])) - len(rejects), rejects)
        entries = [(i, e.get("resource")) for i, e in enumerate(bundle.get("entry") or [])]
        return await self._resources(unit, entries)

    async def _resources(self, unit: Unit, items: list[tuple[int, Any]]) -> UnitResult:
        written, errors = await load_resources(self.service, items)
        return UnitResult(unit.key, written, [_reject(unit, position, error) for position, error in errors])


async def load_resources(service, items: list[tuple[int, Any]], expected_type: str | None = None
                         ) -> tuple[int, list[tuple[int, FhirError | str]]]:
    """Parse (position, JSON text or resource) items, reject the bad ones, write the rest (ids kept) in
    one transaction. Returns how many were written and (position, reason) of each rejected item."""
    rejects: list[tuple[int, FhirError | str]] = []
    good, positions = [], []
    for position, item in items:
        try:
            resource = orjson.loads(item) if isinstance(item, bytes | str) else item
        except orjson.JSONDecodeError as exc:
            rejects.append((position, f"Malformed JSON: {exc}"))
            continue
        if not isinstance(resource, dict) or not resource.get("resourceType"):
            rejects.append((position, "not a FHIR resource"))
            continue
        if expected_type is not None and resource["resourceType"] != expected_type:
            rejects.append((position, f"a {resource['resourceType']} in an input of {expected_type} resources"))
            continue
        good.append(resource)
        positions.append(position)
    written, errors = await service.upsert_many(good)
    rejects += [(positions[i], error) for i, error in errors]
    rejects.sort(key=lambda reject: reject[0])
    return written, rejects


_worker: _Worker | None = None


def _init_worker(env: dict[str, str]) -> None:
    global _worker
    os.environ.update(env)
    _worker = _Worker()


def _run_unit(unit: Unit) -> UnitResult:
    try:
        return _worker.run(unit)
    except Exception as exc:  # a unit that fails as a whole is rejected whole; the load goes on
        return UnitResult(unit.key, 0, [{"file": unit.path, "start": unit.start,
                                         "outcome": operation_outcome([Issue("exception", f"{type(exc).__name__}: "
                                                                                          f"{exc}")])}])


def load(paths: list[Path], *, workers: int, rejects_path: Path, journal_path: Path, progress: bool = True,
         env: dict[str, str] | None = None) -> dict[str, int]:
    """Load files; returns counts (loaded, rejected, skipped units)."""
    from tqdm import tqdm

    journal = Journal(journal_path)
    units = list(plan(paths, exclude={rejects_path.resolve(), journal_path.resolve()}))
    todo = [u for u in units if u.key not in journal.done]
    totals = {"units": len(units), "skipped_units": len(units) - len(todo), "loaded": 0, "rejected": 0}
    if not todo:
        return totals
    bar = tqdm(total=sum(u.count for u in todo), unit="res", disable=not progress, dynamic_ncols=True)
    context = multiprocessing.get_context("spawn")
    with open(rejects_path, "ab") as rejects, context.Pool(workers, _init_worker, (env or {},)) as pool:
        for result in pool.imap_unordered(_run_unit, todo):
            for reject in result.rejects:
                rejects.write(orjson.dumps(reject) + b"\n")
            rejects.flush()
            journal.record(result.key)
            totals["loaded"] += result.loaded
            totals["rejected"] += len(result.rejects)
            bar.update(result.loaded + len(result.rejects))
    bar.close()
    return totals
