"""Running bulk jobs in the server: each worker process has a BulkRunner that runs the jobs kicked off
through it as background tasks, renews their lease at every checkpoint, takes over jobs whose worker
stopped (released at shutdown, or lease expired after a crash), and removes expired jobs' files."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import orjson

from ..model.outcome import BadRequest, FhirError, Issue, operation_outcome
from ..settings import Settings
from ..store.bulk import COMPLETED, FAILED, IN_PROGRESS, JobRow, JobTable
from ..store.sql import now_ms

log = logging.getLogger("fhir_server.bulk")


class JobGone(Exception):
    """The job was cancelled (its row deleted) or another worker holds it now."""


class JobStopped(Exception):
    """The server is shutting down: the job stops right after a checkpoint and is resumed at the next start."""


def parse_instant(value: str, where: str) -> datetime:
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"'{value[:40]}' is not a FHIR instant such as 2026-01-01T00:00:00Z",
                         expression=[where]) from exc
    if instant.tzinfo is None or "T" not in value:
        raise BadRequest(f"'{value[:40]}' must be an instant with a time and a time zone", expression=[where])
    return instant


def job_directory(settings: Settings, job_id: str) -> Path:
    return settings.data_dir / "bulk" / job_id


@dataclass
class JobContext:
    """What a running job sees: its row, parameters and checkpoint state, the service and its files."""

    runner: BulkRunner
    job: JobRow
    params: dict[str, Any]
    state: dict[str, Any]
    directory: Path

    @property
    def service(self):
        return self.runner.service

    @property
    def store(self):
        return self.runner.service.store

    @property
    def settings(self) -> Settings:
        return self.runner.settings

    async def checkpoint(self, progress: str, state: dict[str, Any]) -> None:
        if not await self.runner.table.checkpoint(self.job.id, self.runner.owner, progress,
                                                  orjson.dumps(state).decode()):
            raise JobGone(self.job.id)
        if self.runner.stopping:
            raise JobStopped(self.job.id)

    def restore_files(self, sizes: dict[str, int], keep: tuple[str, ...] = ()) -> bool:
        """Cut the job's files back to their checkpointed sizes and drop files begun after the checkpoint
        (a resumed job rewrites what came after it). False, with those files removed, when a file is
        shorter than checkpointed (lost in a power cut): the job starts over. `keep`: inputs, untouched."""
        self.directory.mkdir(parents=True, exist_ok=True)
        present = {p.name: p for p in self.directory.iterdir() if p.is_file() and p.name not in keep}
        if any(name not in present or present[name].stat().st_size < size for name, size in sizes.items()):
            for path in present.values():
                path.unlink()
            return False
        for name, path in present.items():
            if name in sizes:
                with open(path, "r+b") as handle:
                    handle.truncate(sizes[name])
            else:
                path.unlink()
        return True

    def page_size(self, default: int) -> int:
        """Smaller pages under a rate limit, so that checkpoints (and cancels) come several times a second."""
        rate = self.settings.bulk_max_rate
        return max(1, min(default, rate // 4)) if rate > 0 else default

    async def pace(self, done: int, started: float) -> None:
        """Sleep as long as FHIR_BULK_MAX_RATE asks after `done` resources since `started`."""
        rate = self.settings.bulk_max_rate
        if rate > 0:
            ahead = done / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)


JobFunction = Callable[[JobContext], Awaitable[dict[str, Any]]]


class BulkRunner:
    def __init__(self, service, settings: Settings, kinds: dict[str, JobFunction]):
        self.service = service
        self.settings = settings
        self.kinds = kinds
        self.table = JobTable(service.store)
        self.owner = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.tasks: dict[str, asyncio.Task] = {}
        self._watch: asyncio.Task | None = None
        self.stopping = False

    async def start(self) -> None:
        self._watch = asyncio.create_task(self._adopt_orphans())

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop this worker's jobs at their next checkpoint (so nothing after it was written) and hand
        them on; a job that does not get there within grace_s is cancelled where it is."""
        self.stopping = True
        if self._watch is not None:
            self._watch.cancel()
        running = list(self.tasks.values())
        if running:
            _, late = await asyncio.wait(running, timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        await self.table.release(self.owner)

    async def submit(self, kind: str, request_url: str, params: dict[str, Any],
                     files: dict[str, bytes] | None = None) -> JobRow:
        """Record a new job (with its input files) and start it in this worker."""
        job = JobRow(id=uuid.uuid4().hex, kind=kind, status=IN_PROGRESS, request=request_url,
                     params=orjson.dumps(params).decode(), transaction_time=now_ms(), owner=self.owner,
                     heartbeat=now_ms(), progress="accepted", state="{}", manifest=None)
        directory = job_directory(self.settings, job.id)
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in (files or {}).items():
            (directory / name).write_bytes(content)
        await self.table.create(job)
        self._run(job)
        return job

    async def cancel(self, job_id: str) -> bool:
        """Delete the job and its files; a worker still running it stops at its next checkpoint."""
        found = await self.table.delete(job_id)
        shutil.rmtree(job_directory(self.settings, job_id), ignore_errors=True)
        return found

    def _run(self, job: JobRow) -> None:
        self.tasks[job.id] = asyncio.create_task(self._execute(job))

    async def _execute(self, job: JobRow) -> None:
        directory = job_directory(self.settings, job.id)
        ctx = JobContext(self, job, orjson.loads(job.params), orjson.loads(job.state), directory)
        try:
            manifest = await self.kinds[job.kind](ctx)
            await self.table.finish(job.id, self.owner, COMPLETED, orjson.dumps(manifest).decode(), "100%")
        except asyncio.CancelledError:
            raise
        except JobStopped:
            log.info("bulk job paused for shutdown", extra={"job": job.id})
        except JobGone:
            self._forget(job.id)
        except Exception as exc:
            if await self.table.get(job.id) is None:  # cancelled under our feet (files removed)
                self._forget(job.id)
                return
            if isinstance(exc, FhirError):
                outcome = exc.outcome()
            else:
                log.exception("bulk job failed", extra={"job": job.id})
                outcome = operation_outcome([Issue("exception", f"The {job.kind} failed: {type(exc).__name__}")])
            await self.table.finish(job.id, self.owner, FAILED, orjson.dumps(outcome).decode(), "failed")
        finally:
            self.tasks.pop(job.id, None)

    def _forget(self, job_id: str) -> None:
        shutil.rmtree(job_directory(self.settings, job_id), ignore_errors=True)

    async def _adopt_orphans(self) -> None:
        lease = self.settings.bulk_lease_s
        while True:
            try:
                for job in await self.table.claim_orphans(self.owner, lease):
                    log.info("bulk job resumed", extra={"job": job.id})
                    self._run(job)
                cutoff = now_ms() - timedelta(hours=self.settings.bulk_retention_h)
                for job_id in await self.table.expired(cutoff):
                    self._forget(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be away for a while; try again next round
                log.exception("bulk job watch failed")
            await asyncio.sleep(max(0.5, min(lease / 2, 5.0)))


def status_of(job: JobRow, retention_h: float) -> tuple[int, Any, dict[str, str]]:
    """HTTP status, body and headers of a status request (Expires: when a finished job is removed)."""
    if job.status == IN_PROGRESS:
        return 202, None, {"X-Progress": job.progress, "Retry-After": "2"}
    expires = {"Expires": format_datetime(job.heartbeat + timedelta(hours=retention_h), usegmt=True)}
    if job.status == COMPLETED:
        return 200, job.manifest, expires
    assert job.status == FAILED
    return 500, job.manifest, expires
