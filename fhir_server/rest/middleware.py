"""ASGI middleware (plain ASGI, no per-request task overhead): request ids, access log, body limit."""

from __future__ import annotations

import logging
import time
import uuid

import orjson
from starlette.middleware.cors import CORSMiddleware

from ..logs import request_id
from ..model.outcome import Issue, operation_outcome

access_log = logging.getLogger("fhir_server.access")


def under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


class RequestContextMiddleware:
    """Gives every request an id (X-Request-ID in, or a new one), echoes it, logs one access line."""

    def __init__(self, app, max_body_bytes: int, path_limits: dict[str, int] | None = None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.path_limits = path_limits or {}  # path prefix -> its own body limit (DICOM uploads)

    def body_limit(self, path: str) -> int:
        for prefix, limit in self.path_limits.items():
            if under(path, prefix):
                return limit
        return self.max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = None
        length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")[:128]
            elif name == b"content-length":
                length = value
        rid = rid or uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            limit = self.body_limit(scope["path"])
            if length is not None and (not length.isdigit() or int(length) > limit):
                await self._too_large(send_with_id, limit)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            access_log.info("request", extra={
                "method": scope["method"], "path": scope["path"], "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2)})
            request_id.reset(token)

    async def _too_large(self, send, limit: int) -> None:
        body = orjson.dumps(operation_outcome([Issue("too-costly",
                                                     f"Request body exceeds the limit of {limit} bytes")]))
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/fhir+json; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class PathCorsMiddleware:
    """CORS for one path prefix only (a browser DICOM viewer on /dicomweb); other paths pass untouched."""

    def __init__(self, app, prefix: str, origins: list[str]):
        self.app = app
        self.prefix = prefix
        self.cors = CORSMiddleware(app, allow_origins=origins, allow_methods=["GET", "POST", "OPTIONS"],
                                   allow_headers=["*"], expose_headers=["Warning", "X-Request-ID"], max_age=3600)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and under(scope["path"], self.prefix):
            return await self.cors(scope, receive, send)
        return await self.app(scope, receive, send)
