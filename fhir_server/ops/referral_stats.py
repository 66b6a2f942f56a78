"""$referral-stats: referral Tasks (Task.focus a ServiceRequest) counted by status and category for
each organization, as requester (the referring clinic) and as owner (the one consulted), per month
of Task.authoredOn; with the consultation rate, completed / (all - cancelled)."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import orjson

from ..model.outcome import BadRequest
from ..model.types import is_valid_id
from ..workflow.codes import REFERRAL_CATEGORY
from .parameters import parameter_items, value

NAME = "referral-stats"
PAGE = 1000
_DATE = re.compile(r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?$")


@dataclass
class StatsRequest:
    start: str | None
    end: str | None
    organizations: list[str]


def _period(raw: str, where: str) -> tuple[str, str]:
    """'2026', '2026-05', '2026-05-04' or 'start/end' (either of those precisions) -> (start, end)."""
    start, _, end = raw.partition("/")
    end = end or start
    if not _DATE.match(start) or not _DATE.match(end) or end[:len(start)] < start[:len(end)]:
        raise BadRequest(f"period must be a date (2026, 2026-05, 2026-05-04) or start/end, not {raw[:40]!r}",
                         expression=[where])
    return start, end


def _organization(raw: str, where: str) -> str:
    if not raw.startswith("Organization/") or not is_valid_id(raw.removeprefix("Organization/")):
        raise BadRequest(f"organization must be Organization/[id], not {raw[:60]!r}", expression=[where])
    return raw


def from_query(params: list[tuple[str, str]]) -> StatsRequest:
    start = end = None
    organizations = []
    for name, raw in params:
        if name == "period":
            if start is not None:
                raise BadRequest("period may appear once", expression=["period"])
            start, end = _period(raw, "period")
        elif name == "organization":
            organizations += [_organization(o.strip(), "organization") for o in raw.split(",")]
        elif name not in ("_format", "_pretty"):
            raise BadRequest(f"$referral-stats takes period and organization, not '{name[:60]}'",
                             expression=[name[:60]])
    return StatsRequest(start, end, organizations)


def from_body(body: dict[str, Any]) -> StatsRequest:
    start = end = None
    organizations = []
    for where, item in parameter_items(body, f"${NAME}"):
        if item["name"] == "period":
            if "valuePeriod" in item:
                period = value(where, item, "Period")
                start, end = _period(f"{period.get('start', '')[:10]}/{period.get('end', '')[:10]}",
                                     f"{where}.valuePeriod")
            else:
                start, end = _period(value(where, item, "String"), f"{where}.valueString")
        elif item["name"] == "organization":
            reference = value(where, item, "Reference").get("reference", "")
            organizations.append(_organization(reference, f"{where}.valueReference"))
        else:
            raise BadRequest(f"$referral-stats takes period and organization, not '{item['name'][:60]}'",
                             expression=[where])
    return StatsRequest(start, end, organizations)


def _category(request: dict[str, Any] | None) -> str | None:
    for concept in (request or {}).get("category") or []:
        for coding in concept.get("coding") or []:
            if coding.get("system") == REFERRAL_CATEGORY:
                return coding.get("code")
    return None


async def _referrals(service, request: StatsRequest):
    """(task, its ServiceRequest) of every referral Task authored in the period."""
    params = [("_include", "Task:focus"), ("_count", str(PAGE))]
    if request.start:
        params += [("authored-on", f"ge{request.start}"), ("authored-on", f"le{request.end}")]
    cursor = None
    while True:
        query, page = await service.search(("Task",), params + ([("_cursor", cursor)] if cursor else []),
                                           base_url="", strict=True)
        focus = {f"{v.resource_type}/{v.id}": orjson.loads(v.content) for v in page.included}
        for version in page.matches:
            task = orjson.loads(version.content)
            reference = (task.get("focus") or {}).get("reference", "")
            if reference.startswith("ServiceRequest/"):
                yield task, focus.get(reference)
        cursor = page.next_cursor
        if not cursor:
            return


def _rate(statuses: Counter) -> float | None:
    denominator = sum(statuses.values()) - statuses["cancelled"]
    return round(statuses["completed"] / denominator, 4) if denominator else None


async def referral_stats(service, request: StatsRequest) -> dict[str, Any]:
    overall: Counter = Counter()
    groups: dict[tuple[str, str, str], dict[str, Counter]] = defaultdict(
        lambda: {"status": Counter(), "category": Counter()})
    wanted = set(request.organizations)
    async for task, service_request in _referrals(service, request):
        roles = [(role, (task.get(role) or {}).get("reference")) for role in ("requester", "owner")]
        roles = [(role, ref) for role, ref in roles if ref and (not wanted or ref in wanted)]
        if not roles:
            continue
        status = task.get("status", "unknown")
        overall[status] += 1
        month = (task.get("authoredOn") or task.get("meta", {}).get("lastUpdated", ""))[:7] or "unknown"
        for role, organization in roles:
            group = groups[(organization, month, role)]
            group["status"][status] += 1
            group["category"][_category(service_request) or "unspecified"] += 1
    parameters: list[dict[str, Any]] = []
    if request.start:
        parameters.append({"name": "period", "valuePeriod": {"start": request.start, "end": request.end}})
    parameters.append({"name": "total", "valueInteger": sum(overall.values())})
    parameters += [{"name": "status", "part": [{"name": "code", "valueCode": code},
                                               {"name": "count", "valueInteger": count}]}
                   for code, count in sorted(overall.items())]
    for (organization, month, role), counts in sorted(groups.items()):
        part = [{"name": "organization", "valueReference": {"reference": organization}},
                {"name": "month", "valueString": month}, {"name": "role", "valueCode": role},
                {"name": "total", "valueInteger": sum(counts["status"].values())}]
        part += [{"name": "status", "part": [{"name": "code", "valueCode": code},
                                             {"name": "count", "valueInteger": count}]}
                 for code, count in sorted(counts["status"].items())]
        part += [{"name": "category", "part": [{"name": "code", "valueCode": code},
                                               {"name": "count", "valueInteger": count}]}
                 for code, count in sorted(counts["category"].items())]
        rate = _rate(counts["status"])
        if rate is not None:
            part.append({"name": "consultationRate", "valueDecimal": rate})
        parameters.append({"name": "group", "part": part})
    return {"resourceType": "Parameters", "parameter": parameters}
