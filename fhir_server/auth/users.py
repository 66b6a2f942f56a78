"""Users who log in on the authorization pages, each tied to their FHIR resource (fhirUser)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select

from .secrets import DUMMY_HASH, hash_secret, verify_secret
from .tables import auth_users

FHIR_USER = re.compile(r"^(Practitioner|PractitionerRole|Patient|RelatedPerson|Person)/[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class User:
    username: str
    fhir_user: str

    @property
    def patient_id(self) -> str | None:
        """The user's own Patient id, for a patient logging in to their own record."""
        kind, _, ident = self.fhir_user.partition("/")
        return ident if kind == "Patient" else None


async def add_user(store, username: str, password: str, fhir_user: str) -> User:
    if not FHIR_USER.match(fhir_user):
        raise ValueError(f"--fhir-user {fhir_user!r} must be a reference such as Practitioner/1 or Patient/9")
    if not username or len(username) > 100:
        raise ValueError("the user name must have 1 to 100 characters")
    if len(password) < 8:
        raise ValueError("the password must have at least 8 characters")
    async with store.write_engine.begin() as conn:
        await conn.execute(auth_users.insert().values(username=username, password_hash=hash_secret(password),
                                                      fhir_user=fhir_user, created_at=datetime.now(UTC)))
    return User(username, fhir_user)


async def authenticate(store, username: str, password: str) -> User | None:
    async with store.read_engine.connect() as conn:
        row = (await conn.execute(select(auth_users).where(auth_users.c.username == username))).first()
    stored = row.password_hash if row is not None else DUMMY_HASH
    ok = await asyncio.to_thread(verify_secret, password, stored)  # scrypt is slow on purpose: off the loop
    return User(row.username, row.fhir_user) if ok and row is not None else None


async def get_user(store, username: str) -> User | None:
    async with store.read_engine.connect() as conn:
        row = (await conn.execute(select(auth_users).where(auth_users.c.username == username))).first()
    return User(row.username, row.fhir_user) if row is not None else None


async def list_users(store) -> list[User]:
    async with store.read_engine.connect() as conn:
        rows = (await conn.execute(select(auth_users).order_by(auth_users.c.username))).all()
    return [User(row.username, row.fhir_user) for row in rows]


async def remove_user(store, username: str) -> bool:
    async with store.write_engine.begin() as conn:
        return (await conn.execute(delete(auth_users).where(auth_users.c.username == username))).rowcount > 0
