"""What a Subscription may say, and who sets its status.

Criteria are a search (`Observation?code=http://loinc.org|8884-9&interpretation=critical`) checked
with the search parameters in force; channels are rest-hook (POST to channel.endpoint) and websocket.
A client write of a Subscription stores status `requested` (or `off` if it asks for off, or its end
has passed): only the server sets `active`, once it has checked it, and `error`."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..auth.access import current_access
from ..model.outcome import BadRequest, Unprocessable
from ..model.types import is_resource_type
from ..search.dates import date_range, to_ms
from ..search.query import SearchQuery, parse_search
from ..search.registry import RESULT_PARAMETERS, Registry

CHANNELS = ("rest-hook", "websocket")
PAYLOADS = ("application/fhir+json", "application/json")
WATCHING = ("requested", "active", "error")  # statuses whose criteria's type records change events
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[ \t]*[^\r\n]*$")


def _bad(message: str, expression: str) -> Unprocessable:
    return Unprocessable(message, expression=[expression])


def split_criteria(criteria: str) -> tuple[str, list[tuple[str, str]]]:
    resource_type, _, query = criteria.strip().partition("?")
    return resource_type, parse_qsl(query, keep_blank_values=True)


def criteria_type(resource: dict[str, Any]) -> str:
    return split_criteria(resource.get("criteria") or "")[0]


def criteria_query(registry: Registry, criteria: str, resource_id: str | None = None) -> SearchQuery:
    """The criteria as a search (strict: every parameter must be known and valid), narrowed to one
    resource when resource_id is given. Problems are 422s naming Subscription.criteria."""
    resource_type, params = split_criteria(criteria)
    if not is_resource_type(resource_type):
        raise _bad(f"Subscription.criteria '{criteria[:200]}' does not start with a resource type "
                   f"('{resource_type[:64]}' is not one)", "Subscription.criteria")
    for name, _ in params:
        if name.split(":", 1)[0] in RESULT_PARAMETERS:
            raise _bad(f"Subscription.criteria may not use the result parameter '{name}'", "Subscription.criteria")
    if resource_id is not None:
        params = [*params, ("_id", resource_id)]
    try:
        query = parse_search(registry, (resource_type,), params, base_url="", strict=True, default_count=1,
                             max_count=1)
    except BadRequest as exc:
        raise _bad(f"Subscription.criteria: {exc}", "Subscription.criteria") from exc
    query.total = "none"
    return query


def end_passed(resource: dict[str, Any], now: datetime | None = None) -> bool:
    end = resource.get("end")
    if not end:
        return False
    span = date_range(end)
    return span is not None and span[1] < to_ms(now or datetime.now(UTC))


def check_follower(resource: dict[str, Any], registry: Registry) -> None:
    """Notifications go out past any later check: only a token that may read and search every resource
    of the criteria's type (not a patient-context one) may subscribe, or bind a websocket to follow."""
    query = criteria_query(registry, resource.get("criteria") or "")
    access = current_access()
    if access is not None:
        for action in ("r", "s"):
            access.unrestricted(query.resource_types[0], action)


def check(resource: dict[str, Any], registry: Registry) -> None:
    """The parts a server must understand to honour the subscription (the model has checked the rest)."""
    check_follower(resource, registry)
    channel = resource.get("channel") or {}
    kind = channel.get("type")
    if kind not in CHANNELS:
        raise _bad(f"Subscription.channel.type '{kind}' is not supported here (only {', '.join(CHANNELS)})",
                   "Subscription.channel.type")
    payload = channel.get("payload")
    if payload is not None and payload.split(";", 1)[0].strip().lower() not in PAYLOADS:
        raise _bad(f"Subscription.channel.payload '{payload}' is not supported (only {', '.join(PAYLOADS)}, or "
                   "none for an empty notification)", "Subscription.channel.payload")
    if kind == "rest-hook":
        endpoint = channel.get("endpoint") or ""
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _bad(f"Subscription.channel.endpoint '{endpoint[:200]}' is not an absolute http(s) URL",
                       "Subscription.channel.endpoint")
    for position, header in enumerate(channel.get("header") or []):
        if not _HEADER.match(header):
            raise _bad(f"Subscription.channel.header '{header[:200]}' is not 'Name: value'",
                       f"Subscription.channel.header[{position}]")


def client_status(resource: dict[str, Any]) -> None:
    """A client's write: the server will check it again before it is active; `error` is the server's."""
    asked = resource.get("status")
    resource["status"] = "off" if asked == "off" or end_passed(resource) else "requested"
    resource.pop("error", None)


def watched_type(resource: dict[str, Any] | None) -> str | None:
    """The type whose writes this subscription needs change events for (None: none)."""
    if resource is None or resource.get("status") not in WATCHING:
        return None
    return criteria_type(resource)


def headers(resource: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for header in (resource.get("channel") or {}).get("header") or []:
        name, _, value = header.partition(":")
        out.append((name.strip(), value.strip()))
    return out
