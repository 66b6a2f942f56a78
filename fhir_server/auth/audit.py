"""The audit trail: one FHIR AuditEvent per request (access and denial alike), written through the
resource service so it is versioned, indexed and searchable like any resource
(`AuditEvent?agent=…`, `AuditEvent?patient=…`, `AuditEvent?outcome=4`).

Requests do not wait for their AuditEvent: events queue up and a background task writes them in
batches (one transaction per batch), and what is queued is written before the server stops."""

from __future__ import annotations

import asyncio
import base64
import logging
from datetime import UTC, datetime
from typing import Any

from .grant import Grant, current_grant, system_access

log = logging.getLogger("fhir_server.audit")

GRANT_SCOPE_KEY = "fhir.grant"  # the bearer middleware leaves the request's Grant here for the audit
UNAUDITED_PREFIXES = ("/health", "/metadata", "/.well-known/", "/docs", "/openapi.json", "/favicon.ico")
_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_ACTIONS = {"create": "C", "read": "R", "vread": "R", "update": "U", "patch": "U", "delete": "D"}


def interaction(method: str, path: str) -> str:
    """The restful-interaction code of a request (search-type, read, create, operation, ...)."""
    parts = [p for p in path.split("/") if p]
    if any(p.startswith("$") for p in parts):
        return "operation"
    if "_history" in parts:
        position = parts.index("_history")
        if position + 1 < len(parts):
            return "vread"
        return {0: "history-system", 1: "history-type"}.get(position, "history-instance")
    if not parts:
        return "transaction" if method == "POST" else "search-system"
    if parts == ["_search"]:
        return "search-system"
    writes = {"PUT": "update", "DELETE": "delete", "PATCH": "patch"}
    if len(parts) == 1:
        return {"POST": "create", **writes}.get(method, "search-type")
    if len(parts) == 2 and parts[1] != "_search":
        return writes.get(method, "read")
    return "search-type"  # Type/_search and compartment searches


def audit_event(method: str, path: str, query: str, status: int, grant: Grant | None, address: str | None,
                now: datetime | None = None) -> dict[str, Any]:
    code = interaction(method, path)
    parts = [p for p in path.split("/") if p]
    is_auth = bool(parts) and parts[0] == "auth"
    event_type = ({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114",
                   "display": "User Authentication"} if is_auth else
                  {"system": _EVENT_TYPE, "code": "rest", "display": "RESTful Operation"})
    outcome = "0" if status < 400 else ("4" if status < 500 else "8")
    agent: dict[str, Any] = {"requestor": True}
    if grant is not None:
        agent["who"] = ({"reference": grant.fhir_user} if grant.fhir_user
                        else {"identifier": {"system": "urn:alliance:oauth-client", "value": grant.client_id}})
        agent["altId"] = grant.subject
        agent["name"] = f"client {grant.client_id}"
    else:
        agent["name"] = "unauthenticated client"
    if address:
        agent["network"] = {"address": address, "type": "2"}
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": event_type,
        "action": "E" if is_auth else _ACTIONS.get(code, "E" if code in ("operation", "transaction") else "R"),
        "recorded": (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "outcome": outcome,
        "outcomeDesc": f"HTTP {status} {method} {path}"[:1000],
        "agent": [agent],
        "source": {"observer": {"display": "Alliance FHIR server"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                             "display": "Application Server"}]},
    }
    if not is_auth:
        event["subtype"] = [{"system": _INTERACTION, "code": code}]
    entities = []
    if len(parts) >= 2 and parts[0][:1].isupper() and not parts[1].startswith(("$", "_")):
        entities.append({"what": {"reference": f"{parts[0]}/{parts[1]}"}})
    if query:
        entities.append({"query": base64.b64encode(query.encode()).decode()})
    if grant is not None and grant.patient:
        entities.append({"what": {"reference": f"Patient/{grant.patient}"},
                         "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}})
    if entities:
        event["entity"] = entities
    return event


class AuditTrail:
    """Queues AuditEvents and writes them in batches in the background."""

    def __init__(self, service, max_queue: int = 100_000, batch: int = 500):
        self.service = service
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(max_queue)
        self.batch = batch
        self.task: asyncio.Task | None = None
        self.dropped = 0

    def start(self) -> None:
        with system_access():  # the writer task inherits no request's grant
            self.task = asyncio.create_task(self._run(), name="audit-writer")

    def record(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("audit queue full: AuditEvent dropped", extra={"dropped": self.dropped})

    async def _run(self) -> None:
        while True:
            events = [await self.queue.get()]
            while len(events) < self.batch and not self.queue.empty():
                events.append(self.queue.get_nowait())
            await self._write(events)

    async def _write(self, events: list[dict[str, Any]]) -> None:
        try:
            await self.service.create_many(events)
        except Exception:  # noqa: BLE001 — the audit must not stop the server; the log keeps what was lost
            log.exception("could not write AuditEvents", extra={"count": len(events)})

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        pending = []
        while not self.queue.empty():
            pending.append(self.queue.get_nowait())
        if pending:
            await self._write(pending)


class AuditMiddleware:
    """Records every request's outcome; outermost, so that it also sees the bearer check's 401s."""

    def __init__(self, app, trail_of):
        self.app = app
        self.trail_of = trail_of  # () -> AuditTrail | None (the trail is made in the app's lifespan)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(UNAUDITED_PREFIXES) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            trail = self.trail_of()
            if trail is not None:
                grant = scope.get(GRANT_SCOPE_KEY) or current_grant.get()
                client = scope.get("client")
                trail.record(audit_event(scope["method"], scope["path"], scope.get("query_string", b"").decode(
                    "latin-1"), status, grant, client[0] if client else None))
