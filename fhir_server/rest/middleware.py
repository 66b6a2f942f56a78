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
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]
API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")


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
                headers = list(message.get("headers") or [])
                headers.append((b"x-request-id", rid.encode("latin-1")))
                headers.extend(SECURITY_HEADERS)
                if not scope["path"].startswith("/docs") and not any(k == b"content-security-policy"
                                                                     for k, _ in headers):
                    headers.append(API_CSP)  # JSON answers: nothing to load, nothing may frame them
                message["headers"] = headers
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


class RateLimitMiddleware:
    """Per-client token buckets: a client is its bearer token, or its address when it sends none. Over
    the limit it gets 429 with Retry-After. Each worker process keeps its own buckets."""

    def __init__(self, app, per_second: float, burst: int, exempt: tuple[str, ...] = ("/health",)):
        self.app = app
        self.rate = per_second
        self.burst = max(burst, 1)
        self.exempt = exempt
        self.buckets: dict[bytes, tuple[float, float]] = {}  # client -> (tokens, when)

    def _client(self, scope) -> bytes:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return b"t:" + value[-64:]  # the token's signature part is unique to the token
        client = scope.get("client")
        return b"a:" + (client[0].encode() if client else b"?")

    def _take(self, key: bytes) -> float:
        """0 if the request may go, else the seconds until it could."""
        now = time.monotonic()
        tokens, when = self.buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if tokens >= 1:
            self.buckets[key] = (tokens - 1, now)
            if len(self.buckets) > 100_000:  # forget the idle ones (a full bucket is the default anyway)
                self.buckets = {k: v for k, v in self.buckets.items() if now - v[1] < self.burst / self.rate}
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            return await self.app(scope, receive, send)
        wait = self._take(self._client(scope))
        if not wait:
            return await self.app(scope, receive, send)
        retry = str(max(1, round(wait + 0.5)))
        body = orjson.dumps(operation_outcome([Issue("throttled", f"Too many requests: at most {self.rate:g} per "
                                                                  f"second (burst {self.burst}); retry in {retry} s")]))
        await send({"type": "http.response.start", "status": 429,
                    "headers": [(b"content-type", b"application/fhir+json; charset=utf-8"),
                                (b"content-length", str(len(body)).encode()), (b"retry-after", retry.encode())]})
        await send({"type": "http.response.body", "body": body})
