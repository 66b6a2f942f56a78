"""Which resource types a bulk request may touch. The one place where the caller's SMART scopes will
narrow a $export or $import (system/*.read, patient/Observation.read, ...) once authorization exists;
today every type is allowed and output files need no token."""

from __future__ import annotations

from starlette.requests import Request


def permitted_types(request: Request, types: list[str] | None, *, write: bool = False) -> list[str] | None:
    """The requested types the caller may read (write: import) — None means every type. A scope check
    removes the types the token does not grant (and refuses the request if it grants none of them)."""
    return types


def requires_access_token(request: Request) -> bool:
    """Whether output file requests must carry the kick-off's bearer token (the manifest says so)."""
    return False
