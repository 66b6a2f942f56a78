"""Bearer-token middleware: every request but the public ones must carry an access token of this server
(`Authorization: Bearer …`); its verified Grant becomes the request's `current_grant`. A missing, expired,
tampered, revoked or foreign token is a 401 with `WWW-Authenticate: Bearer` (RFC 6750) and an
OperationOutcome."""

from __future__ import annotations

import orjson
from starlette.requests import HTTPConnection

from ..model.outcome import Issue, operation_outcome
from ..rest.middleware import under
from .audit import GRANT_SCOPE_KEY
from .grant import current_grant
from .server import PREFIX
from .tokens import TokenRejected

# Reachable without a token: what a client needs to find and use the authorization server, and health checks.
PUBLIC_PATHS = ("/metadata", "/.well-known", "/health", "/docs", "/openapi.json", PREFIX)
# Under PREFIX, but for an EHR holding a token.
PROTECTED_AUTH_PATHS = (PREFIX + "/launch",)


def is_public(path: str) -> bool:
    if any(under(path, p) for p in PROTECTED_AUTH_PATHS):
        return False
    return any(under(path, p) for p in PUBLIC_PATHS)


def request_base(scope, configured: str) -> str:
    """The base URL requests here are made against: the configured one, else the request's own (for a
    websocket, its http(s) twin: tokens name the FHIR base as their audience)."""
    if configured:
        return configured.rstrip("/")
    url = HTTPConnection(scope).base_url
    return str(url.replace(scheme={"ws": "http", "wss": "https"}.get(url.scheme, url.scheme))).rstrip("/")


def bearer_token(header: str) -> str:
    """The token of an `Authorization: Bearer <token>` value, or ''."""
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class BearerAuthMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or is_public(scope["path"]):
            return await self.app(scope, receive, send)
        state = scope["app"].state
        base = request_base(scope, state.settings.base_url)
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
        token = bearer_token(header)
        if not token:
            return await _unauthorized(send, base, "No access token: send Authorization: Bearer <token>",
                                       error=None, code="login")
        try:
            grant = await state.auth.tokens.verify(token, state.auth.audience(base))
        except TokenRejected as rejected:
            return await _unauthorized(send, base, str(rejected), error="invalid_token",
                                       code="expired" if rejected.expired else "login")
        scope[GRANT_SCOPE_KEY] = grant  # for the audit trail, which answers outside this middleware
        reset = current_grant.set(grant)
        try:
            await self.app(scope, receive, send)
        finally:
            current_grant.reset(reset)


async def _unauthorized(send, realm: str, message: str, *, error: str | None, code: str) -> None:
    # RFC 6750 3.1: a request without credentials gets no error code, only the challenge.
    challenge = f'Bearer realm="{realm}"'
    if error:
        challenge += f', error="{error}", error_description="{message.replace(chr(34), chr(39))}"'
    body = orjson.dumps(operation_outcome([Issue(code, message, expression=["Authorization"])]))
    await send({"type": "http.response.start", "status": 401, "headers": [
        (b"content-type", b"application/fhir+json; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", challenge.encode("latin-1", "replace")), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})
