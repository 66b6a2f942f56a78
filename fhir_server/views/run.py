"""Running a view over the store (keyset pages of its resource type) or over given resources, page by
page, so that neither the CLI nor the operation holds more than a page of resources and rows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any

import orjson

from ..model.outcome import BadRequest
from ..store.bulk import scan_type
from .evaluator import View, ViewError
from .output import output_format

PAGE = 500


async def store_pages(store, view: View, *, since: datetime | None = None, patients: list[str] | None = None,
                      limit: int | None = None, page: int = PAGE,
                      progress=None) -> AsyncIterator[list[tuple[Any, ...]]]:
    """Rows of the view per page of stored resources (evaluated off the event loop)."""
    after, produced = 0, 0
    while limit is None or produced < limit:
        batch = await scan_type(store, view.resource, after, page, since=since, patients=patients)
        if not batch:
            return
        after = batch[-1][0]
        rows = await asyncio.to_thread(_evaluate, view, [content for _, content in batch])
        if limit is not None:
            rows = rows[:limit - produced]
        produced += len(rows)
        if progress is not None:
            progress(len(batch))
        yield rows
        if len(batch) < page:
            return


def _evaluate(view: View, contents: Iterable[str | bytes | dict]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for content in contents:
        rows += view.rows(orjson.loads(content) if isinstance(content, str | bytes) else content)
    return rows


def resource_pages(view: View, resources: Iterable[Any], page: int = PAGE) -> Iterable[list[tuple[Any, ...]]]:
    chunk: list[Any] = []
    for resource in resources:
        chunk.append(resource)
        if len(chunk) >= page:
            yield _evaluate(view, chunk)
            chunk = []
    yield _evaluate(view, chunk)


def parse_run_parameters(body: dict[str, Any], query_format: str | None) -> dict[str, Any]:
    """$viewdefinition-run's Parameters: viewResource, _format, header, _limit, _since, patient, resource."""
    if body.get("resourceType") == "ViewDefinition":  # the view itself as the body
        body = {"resourceType": "Parameters", "parameter": [{"name": "viewResource", "resource": body}]}
    if body.get("resourceType") != "Parameters":
        raise BadRequest("$viewdefinition-run takes a Parameters resource", expression=["resourceType"])
    out: dict[str, Any] = {"format": output_format(query_format, "_format") if query_format else None,
                           "header": True, "limit": None, "since": None, "patients": None, "resources": None}
    for i, param in enumerate(body.get("parameter") or []):
        where = f"Parameters.parameter[{i}]"
        name = param.get("name") if isinstance(param, dict) else None
        if name == "viewResource":
            out["view"] = View(param.get("resource"))
        elif name == "_format":
            out["format"] = output_format(str(param.get("valueCode") or param.get("valueString") or ""),
                                          f"{where}.value")
        elif name == "header":
            if not isinstance(param.get("valueBoolean"), bool):
                raise BadRequest("header takes a valueBoolean", expression=[f"{where}.value"])
            out["header"] = param["valueBoolean"]
        elif name == "_limit":
            limit = param.get("valueInteger", param.get("valuePositiveInt"))
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise BadRequest("_limit takes a positive valueInteger", expression=[f"{where}.value"])
            out["limit"] = limit
        elif name == "_since":
            from ..bulk.jobs import parse_instant

            out["since"] = parse_instant(str(param.get("valueInstant") or param.get("valueDateTime") or ""),
                                         f"{where}.value")
        elif name == "patient":
            reference = str((param.get("valueReference") or {}).get("reference") or "")
            if not reference.startswith("Patient/") or reference.count("/") != 1:
                raise BadRequest("patient takes a valueReference to Patient/id", expression=[f"{where}.value"])
            out["patients"] = [*(out["patients"] or []), reference.removeprefix("Patient/")]
        elif name == "resource":
            if not isinstance(param.get("resource"), dict):
                raise BadRequest("resource takes a resource", expression=[f"{where}.resource"])
            out["resources"] = [*(out["resources"] or []), param["resource"]]
        else:
            raise BadRequest(f"Parameter '{str(name)[:40]}' is not supported by $viewdefinition-run",
                             expression=[where])
    if "view" not in out:
        raise ViewError("viewResource (the ViewDefinition to run) is missing", expression=["Parameters.parameter"])
    out["format"] = out["format"] or "csv"
    return out
