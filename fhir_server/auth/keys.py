"""The server's signing keys: RSA keys in the database (table auth_keys), so that every worker signs and
verifies with the same ones. The newest key signs; a new one is made when it is older than
FHIR_AUTH_KEY_ROTATION_DAYS (or by `fhir-server keys rotate`). A replaced key's public half stays in the
JWKS, and keeps verifying, for as long as a token it signed can live."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from joserfc.jwk import RSAKey
from sqlalchemy import delete, select

from ..settings import Settings
from .secrets import new_token
from .tables import auth_keys

ALG = "RS256"
_ROTATION_LOCK = "auth-key-rotation"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    key: RSAKey
    created_at: datetime
    retired_at: datetime | None  # when a newer key took over signing


def token_lifetime(settings: Settings) -> timedelta:
    """The longest a token signed with a key can be valid (access tokens and id_tokens), plus clock leeway."""
    return timedelta(seconds=settings.auth_access_token_ttl_s + 60)


async def _rows(store, known: dict[str, SigningKey] | None = None) -> list[SigningKey]:
    """Every key, oldest first; keys already in `known` are not parsed again (importing a private RSA
    key checks it, which costs tens of milliseconds)."""
    known = known or {}
    async with store.read_engine.connect() as conn:
        rows = (await conn.execute(select(auth_keys).order_by(auth_keys.c.created_at))).all()
    keys = []
    for i, row in enumerate(rows):
        retired = rows[i + 1].created_at if i + 1 < len(rows) else None
        key = known[row.kid].key if row.kid in known else RSAKey.import_key(orjson.loads(row.private_jwk))
        keys.append(SigningKey(row.kid, key, row.created_at, retired))
    return keys


async def _newest_kid(store) -> str | None:
    async with store.read_engine.connect() as conn:
        return (await conn.execute(select(auth_keys.c.kid).order_by(auth_keys.c.created_at.desc()).limit(1))).scalar()


async def create_key(store, settings: Settings, *, only_if_due: bool) -> str | None:
    """Add a new signing key (under a lock, so that workers that find the key due together add one);
    with only_if_due, only when there is none or the newest is older than the rotation period.
    Keys no token can still need are dropped. Returns the new kid, or None."""
    now = datetime.now(UTC)
    kid = f"{now:%Y%m%d}-{new_token(6)}"
    key = RSAKey.generate_key(2048, parameters={"kid": kid, "alg": ALG, "use": "sig"}, private=True)
    async with store.write_engine.begin() as conn:
        await store.lock_key(conn, _ROTATION_LOCK)
        newest = (await conn.execute(select(auth_keys.c.created_at).order_by(auth_keys.c.created_at.desc())
                                     .limit(1))).scalar()
        if only_if_due and newest is not None and now - newest < timedelta(days=settings.auth_key_rotation_days):
            return None
        await conn.execute(auth_keys.insert().values(kid=kid, alg=ALG, private_jwk=orjson.dumps(
            key.as_dict(private=True)).decode(), created_at=now))
        # A key retired when the next one came; once no token it signed can be valid, it goes.
        created = (await conn.execute(select(auth_keys.c.kid, auth_keys.c.created_at)
                                      .order_by(auth_keys.c.created_at))).all()
        gone = [old.kid for old, successor in zip(created, created[1:], strict=False)
                if successor.created_at + token_lifetime(settings) < now]
        if gone:
            await conn.execute(delete(auth_keys).where(auth_keys.c.kid.in_(gone)))
    return kid


class KeyRing:
    """A worker's view of the keys, reloaded from the database when a kid is unknown or the newest is due."""

    def __init__(self, store, settings: Settings):
        self.store = store
        self.settings = settings
        self.keys: dict[str, SigningKey] = {}
        self.newest: SigningKey | None = None

    async def load(self) -> None:
        keys = await _rows(self.store, self.keys)
        self.keys = {k.kid: k for k in keys}
        self.newest = keys[-1] if keys else None

    def _due(self) -> bool:
        age = timedelta(days=self.settings.auth_key_rotation_days)
        return self.newest is None or datetime.now(UTC) - self.newest.created_at >= age

    async def refresh(self) -> None:
        """Reload when another worker or `fhir-server keys rotate` added a key (one cheap query)."""
        newest = await _newest_kid(self.store)
        if newest is None or self.newest is None or newest != self.newest.kid:
            await self.load()

    async def signing_key(self) -> SigningKey:
        await self.refresh()  # so that a new key signs at once, in every worker
        if self._due():
            await create_key(self.store, self.settings, only_if_due=True)
            await self.load()
        assert self.newest is not None
        return self.newest

    def _valid(self, key: SigningKey, now: datetime) -> bool:
        return key.retired_at is None or now < key.retired_at + token_lifetime(self.settings)

    async def verification_key(self, kid: str) -> RSAKey | None:
        if kid not in self.keys:
            await self.refresh()  # made by another worker (or by `fhir-server keys rotate`) since the last load
        key = self.keys.get(kid)
        return key.key if key is not None and self._valid(key, datetime.now(UTC)) else None

    async def jwks(self) -> dict:
        await self.refresh()
        now = datetime.now(UTC)
        return {"keys": [k.key.as_dict(private=False) for k in reversed(self.keys.values()) if self._valid(k, now)]}


async def list_keys(store, settings: Settings) -> list[tuple[str, datetime, str]]:
    """(kid, created, state) for the CLI: signing, verifying (retired but in the JWKS) or expired."""
    now = datetime.now(UTC)
    out = []
    for key in await _rows(store):
        if key.retired_at is None:
            state = "signing"
        elif now < key.retired_at + token_lifetime(settings):
            state = "verifying"
        else:
            state = "expired"
        out.append((key.kid, key.created_at, state))
    return out
