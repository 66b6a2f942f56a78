"""What a verified access token grants, and the request's grant as a context variable.

The bearer-token middleware sets `current_grant` for the request; the service layer reads it to enforce
scopes (auth/access.py). No grant (None) means the request is not limited: authorization is off, or the
caller is the server itself (DICOM ingest, background tasks), which runs under `system_access()`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Grant:
    scopes: tuple[str, ...]  # the granted scope strings, as in the token's `scope` claim
    client_id: str
    subject: str  # the user's name, or the client id for a backend service
    patient: str | None = None  # launch context: the id of the Patient a patient/ scope is confined to
    fhir_user: str | None = None  # "Practitioner/123", "Patient/9", ... (the user's own resource)
    token_id: str | None = None  # jti of the access token


current_grant: ContextVar[Grant | None] = ContextVar("current_grant", default=None)


@contextmanager
def system_access() -> Iterator[None]:
    """Run server-driven work (side effects the server owes after an authorised request) unrestricted."""
    token = current_grant.set(None)
    try:
        yield
    finally:
        current_grant.reset(token)


@contextmanager
def acting_as(grant: Grant | None) -> Iterator[None]:
    token = current_grant.set(grant)
    try:
        yield
    finally:
        current_grant.reset(token)
