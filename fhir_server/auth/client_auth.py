"""Client authentication at the token, introspection and revocation endpoints (RFC 6749 2.3):
client_secret_basic, client_secret_post, private_key_jwt (RFC 7523, as SMART Backend Services profiles
it: RS384 or ES384, iss = sub = client_id, aud = the token URL, exp at most five minutes ahead, a jti
used once) and none for public clients."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from datetime import UTC, datetime
from urllib.parse import unquote_plus

import httpx
import orjson
from authlib.oauth2.rfc6749.errors import InvalidClientError
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy.exc import IntegrityError

from .clients import ASYMMETRIC, PUBLIC, SYMMETRIC, Client, get_client
from .secrets import verify_secret
from .tables import auth_assertions

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGS = ["RS384", "ES384"]
MAX_ASSERTION_LIFETIME_S = 300
_JWKS_CACHE_S = 300


def _refused(description: str) -> InvalidClientError:
    # RFC 6749 5.2 allows only printable ASCII without " and \ in error_description.
    clean = "".join(c if " " <= c <= "~" and c not in '"\\' else " " for c in description)
    return InvalidClientError(description=" ".join(clean.split()), status_code=401)


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, sep, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise _refused("The Basic credentials are not base64 of client_id:client_secret") from exc
    if not sep:
        raise _refused("The Basic credentials are not base64 of client_id:client_secret")
    return unquote_plus(client_id), unquote_plus(secret)


class ClientAuthenticator:
    def __init__(self, store):
        self.store = store
        self._jwks: dict[str, tuple[float, KeySet]] = {}  # jwks_uri -> (fetched at, keys)

    async def _known(self, client_id: str) -> Client:
        client = await get_client(self.store, client_id) if client_id else None
        if client is None:
            raise _refused(f"Client {client_id!r} is not registered")
        return client

    async def authenticate(self, form: dict[str, str], authorization: str | None, token_url: str) -> Client:
        """The client a request comes from, proven as its registration requires; else invalid_client (401)."""
        basic = _basic(authorization) if authorization else None
        if basic is not None:
            client = await self._known(basic[0])
            return await self._secret(client, basic[1])
        if form.get("client_assertion_type") or form.get("client_assertion"):
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise _refused(f"client_assertion_type must be {ASSERTION_TYPE}")
            return await self._assertion(form.get("client_assertion", ""), form.get("client_id"), token_url)
        client = await self._known(form.get("client_id", ""))
        if "client_secret" in form:
            return await self._secret(client, form["client_secret"])
        if client.kind != PUBLIC:
            raise _refused("This client must authenticate (client_secret_basic, client_secret_post or "
                           "private_key_jwt, as registered)")
        return client

    async def _secret(self, client: Client, secret: str) -> Client:
        if client.kind != SYMMETRIC or client.secret_hash is None:
            raise _refused("This client is not registered with a client secret")
        if not await asyncio.to_thread(verify_secret, secret, client.secret_hash):
            raise _refused("The client secret is wrong")
        return client

    async def _keys(self, client: Client, kid: str | None) -> KeySet:
        if client.jwks is not None:
            return KeySet.import_key_set(client.jwks)
        assert client.jwks_uri is not None
        cached = self._jwks.get(client.jwks_uri)
        fresh = cached is not None and time.monotonic() - cached[0] < _JWKS_CACHE_S
        if fresh and (kid is None or any(k.kid == kid for k in cached[1])):
            return cached[1]
        try:  # fetched again when stale or when it lacks the kid (the client rotated its keys)
            async with httpx.AsyncClient(timeout=10, follow_redirects=False) as http:
                answer = await http.get(client.jwks_uri)
                answer.raise_for_status()
                keys = KeySet.import_key_set(answer.json())
        except (httpx.HTTPError, ValueError, JoseError) as exc:
            status = isinstance(exc, httpx.HTTPStatusError)
            reason = f"HTTP {exc.response.status_code}" if status else type(exc).__name__
            raise _refused(f"The client's key set could not be read from {client.jwks_uri} ({reason})") from exc
        self._jwks[client.jwks_uri] = (time.monotonic(), keys)
        return keys

    async def _assertion(self, assertion: str, client_id: str | None, token_url: str) -> Client:
        try:
            compact = jws.extract_compact(assertion.encode())
            header = compact.headers()
            unverified = orjson.loads(compact.payload)  # only to find the client whose keys verify it
        except (JoseError, ValueError) as exc:
            raise _refused("client_assertion is not a well-formed JWT") from exc
        if header.get("alg") not in ASSERTION_ALGS:
            raise _refused(f"client_assertion must be signed with one of {', '.join(ASSERTION_ALGS)}")
        issuer = unverified.get("iss") if isinstance(unverified, dict) else None
        if not isinstance(issuer, str) or (client_id and client_id != issuer):
            raise _refused("client_assertion's iss must be the client_id")
        client = await self._known(issuer)
        if client.kind != ASYMMETRIC:
            raise _refused("This client is not registered for private_key_jwt")
        keys = await self._keys(client, header.get("kid"))
        try:
            claims = jwt.decode(assertion, keys, algorithms=ASSERTION_ALGS).claims
        except (JoseError, ValueError) as exc:
            raise _refused("client_assertion's signature does not verify with the client's registered keys") from exc
        now = time.time()
        if claims.get("sub") != client.client_id:
            raise _refused("client_assertion's sub must be the client_id")
        aud = claims.get("aud")
        if token_url not in (aud if isinstance(aud, list) else [aud]):
            raise _refused(f"client_assertion's aud must be the token URL {token_url}")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= now - 5:
            raise _refused("client_assertion has expired (or has no exp)")
        if exp > now + MAX_ASSERTION_LIFETIME_S + 5:
            raise _refused(f"client_assertion's exp is more than {MAX_ASSERTION_LIFETIME_S} s ahead")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 255:
            raise _refused("client_assertion needs a jti")
        try:
            async with self.store.write_engine.begin() as conn:
                await conn.execute(auth_assertions.delete().where(
                    auth_assertions.c.expires_at < datetime.fromtimestamp(now - 60, UTC)))
                await conn.execute(auth_assertions.insert().values(client_id=client.client_id, jti=jti,
                                                                   expires_at=datetime.fromtimestamp(exp, UTC)))
        except IntegrityError as exc:
            raise _refused("client_assertion's jti was used before") from exc
        return client
