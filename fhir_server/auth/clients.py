"""Registered clients (apps and backend services), and which scopes a registration allows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import orjson
from joserfc.jwk import KeySet
from sqlalchemy import delete, select

from .secrets import hash_secret, new_client_id, new_token
from .tables import auth_clients

PUBLIC = "public"
SYMMETRIC = "confidential-symmetric"
ASYMMETRIC = "confidential-asymmetric"

# SMART clinical scopes, v1 (read/write/*) and v2 (cruds letters, optional ?query).
_CLINICAL = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(read|write|\*|c?r?u?d?s?)(\?.*)?$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    kind: str
    secret_hash: str | None
    redirect_uris: tuple[str, ...]
    scopes: tuple[str, ...]
    jwks: dict | None
    jwks_uri: str | None

    @property
    def public(self) -> bool:
        return self.kind == PUBLIC

    def allows(self, scope: str) -> bool:
        return any(covers(registered, scope) for registered in self.scopes)


def _clinical(scope: str) -> tuple[str, str, set[str], str] | None:
    m = _CLINICAL.match(scope)
    if m is None or not m.group(3):
        return None
    context, resource_type, permissions, query = m.groups()
    return context, resource_type, set(_V1.get(permissions, permissions)), query or ""


def covers(registered: str, requested: str) -> bool:
    """Whether a registered scope allows a requested one: the same, or a clinical scope of the same
    context (patient/user/system) for a type it includes (`*`), with no permission it lacks and no
    looser query (`patient/*.cruds` covers `patient/Observation.rs?category=laboratory`)."""
    if registered == requested:
        return True
    reg, req = _clinical(registered), _clinical(requested)
    if reg is None or req is None:
        return False
    return (reg[0] == req[0] and reg[1] in ("*", req[1]) and req[2] <= reg[2]
            and (not reg[3] or reg[3] == req[3]))


def check_registration(redirect_uris: list[str], scopes: list[str], jwks: dict | None) -> None:
    """Refuse what cannot work: relative or fragment redirect URIs, malformed clinical scopes, bad key sets."""
    for uri in redirect_uris:
        parts = urlsplit(uri)
        if not parts.scheme or not parts.netloc or parts.fragment:
            raise ValueError(f"redirect URI {uri!r} must be absolute and have no fragment")
    for scope in scopes:
        if "/" in scope and scope.split("/")[0] in ("patient", "user", "system") and _clinical(scope) is None:
            raise ValueError(f"scope {scope!r} is not a SMART clinical scope (e.g. patient/Observation.rs)")
    if jwks is not None:
        keys = KeySet.import_key_set(jwks)
        if any(key.is_private for key in keys):
            raise ValueError("the key set holds private keys: register only the public keys")


def _client(row) -> Client:
    return Client(row.client_id, row.name, row.kind, row.secret_hash, tuple(orjson.loads(row.redirect_uris)),
                  tuple(row.scope.split()), orjson.loads(row.jwks) if row.jwks else None, row.jwks_uri)


async def add_client(store, name: str, redirect_uris: list[str], scopes: list[str], kind: str,
                     jwks: dict | None = None, jwks_uri: str | None = None) -> tuple[Client, str | None]:
    """Register a client; returns it and, for a symmetric client, its secret (shown once, stored hashed)."""
    check_registration(redirect_uris, scopes, jwks)
    if kind == ASYMMETRIC and not (jwks or jwks_uri):
        raise ValueError("a private_key_jwt client needs a key set (--jwks-file) or its URL (--jwks-uri)")
    secret = new_token(32) if kind == SYMMETRIC else None
    values = dict(client_id=new_client_id(), name=name, kind=kind, secret_hash=hash_secret(secret) if secret else None,
                  redirect_uris=orjson.dumps(redirect_uris).decode(), scope=" ".join(scopes),
                  jwks=orjson.dumps(jwks).decode() if jwks else None, jwks_uri=jwks_uri,
                  created_at=datetime.now(UTC))
    async with store.write_engine.begin() as conn:
        await conn.execute(auth_clients.insert().values(**values))
    return await get_client(store, values["client_id"]), secret


async def get_client(store, client_id: str) -> Client | None:
    async with store.read_engine.connect() as conn:
        row = (await conn.execute(select(auth_clients).where(auth_clients.c.client_id == client_id))).first()
    return _client(row) if row is not None else None


async def list_clients(store) -> list[Client]:
    async with store.read_engine.connect() as conn:
        rows = (await conn.execute(select(auth_clients).order_by(auth_clients.c.created_at))).all()
    return [_client(row) for row in rows]


async def remove_client(store, client_id: str) -> bool:
    async with store.write_engine.begin() as conn:
        return (await conn.execute(delete(auth_clients).where(auth_clients.c.client_id == client_id))).rowcount > 0
