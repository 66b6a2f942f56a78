"""SMART scopes over bulk jobs: the one place that decides which resource types (and which resources of
them) a $export may read and a $import may write, with the caller's Grant (auth/access.py).

A job runs after its kick-off request has ended, so the Grant is kept with the job: the export adds
the same conditions a search of that token would run under, the import writes under the same grant
(the service refuses, line by line, what the token may not write). Polls and file downloads are for
the client that started the job."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..auth.access import Access, current_access
from ..auth.grant import Grant, acting_as, current_grant
from ..model.outcome import Forbidden
from ..search.query import Clause


def permitted_types(types: list[str], *, explicit: bool) -> list[str]:
    """The types of an export the caller may read: all of them without authorization. Types the token
    cannot read are left out, or refused (403) when the client named them in _type."""
    access = current_access()
    if access is None:
        return types
    allowed = [t for t in types if access.filters(t, "r") != []]
    refused = [t for t in types if t not in allowed]
    if refused and (explicit or not allowed):
        access.require(refused[0], "r")  # raises 403 naming the type and the granted scopes
    return allowed


def check_import_types(types: list[str]) -> None:
    """A declared input type the token may not write in full is a 403 at kick-off."""
    access = current_access()
    for resource_type in types if access is not None else ():
        access.unrestricted(resource_type, "c")
        access.unrestricted(resource_type, "u")


def job_grant() -> dict[str, Any] | None:
    """The request's Grant as the job keeps it (JSON), or None for an unrestricted caller."""
    grant = current_grant.get()
    return None if grant is None else asdict(grant)


def _grant(kept: dict[str, Any] | None) -> Grant | None:
    return None if kept is None else Grant(**{**kept, "scopes": tuple(kept["scopes"])})


def read_conditions(kept: dict[str, Any] | None, registry, types: list[str]) -> dict[str, Clause]:
    """Per type, the condition the kept grant confines reads to (none where it reads the type in full)."""
    grant = _grant(kept)
    if grant is None:
        return {}
    access = Access(grant)
    conditions = {}
    for resource_type in types:
        found = access.filters(resource_type, "r")
        if found == []:
            raise Forbidden(f"The access token's scopes no longer allow reading {resource_type}")
        if found is not None:
            conditions[resource_type] = access.clause(registry, resource_type, found)
    return conditions


def acting_as_job(kept: dict[str, Any] | None):
    """Run a job's writes under the grant of the request that started it."""
    return acting_as(_grant(kept))


def same_client(kept: dict[str, Any] | None) -> bool:
    """Whether the current caller may see a job: anyone without authorization, else its own client."""
    grant = current_grant.get()
    return grant is None or (kept is not None and kept.get("client_id") == grant.client_id)


def requires_access_token(settings) -> bool:
    """Whether output file requests must carry the kick-off's bearer token (the manifest says so)."""
    return settings.auth_enabled
