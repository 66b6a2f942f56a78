"""HTTP route of SQL on FHIR's $viewdefinition-run (also as $run): a ViewDefinition's rows over the
store, or over resources given inline, answered as CSV, NDJSON, JSON or Parquet. Work in fhir_server.views."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

from ..views.output import FORMATS, ParquetOutput, TextEncoder
from ..views.run import parse_run_parameters, resource_pages, store_pages
from .negotiation import body_media_type, read_json_body

router = APIRouter()


async def _inline(view, resources: list[dict[str, Any]], limit: int | None) -> AsyncIterator[list]:
    produced = 0
    for rows in resource_pages(view, resources):
        rows = rows if limit is None else rows[:limit - produced]
        produced += len(rows)
        yield rows


@router.post("/ViewDefinition/$viewdefinition-run")
@router.post("/ViewDefinition/$run")
async def run_view(request: Request) -> Response:
    body_media_type(request)
    params = parse_run_parameters(await read_json_body(request, dict), request.query_params.get("_format"))
    view, fmt = params["view"], params["format"]
    if params["resources"] is not None:
        pages = _inline(view, params["resources"], params["limit"])
    else:
        pages = store_pages(request.app.state.service.store, view, since=params["since"],
                            patients=params["patients"], limit=params["limit"])
    if fmt == "parquet":
        handle, name = tempfile.mkstemp(suffix=".parquet")
        os.close(handle)
        output = ParquetOutput(view, Path(name))
        try:
            async for rows in pages:
                output.write(rows)
            output.close()
        except BaseException:
            os.unlink(name)
            raise
        return FileResponse(name, media_type=FORMATS[fmt], filename=f"{view.name}.parquet",
                            background=BackgroundTask(os.unlink, name))
    encoder = TextEncoder(view, fmt, params["header"])
    first = await anext(pages, [])  # errors in the first page still get a 400 rather than a cut stream

    async def body() -> AsyncIterator[bytes]:
        yield encoder.start() + encoder.page(first)
        async for rows in pages:
            yield encoder.page(rows)
        yield encoder.end()

    media = FORMATS[fmt] + ("; charset=utf-8" if fmt == "csv" else "")
    return StreamingResponse(body(), media_type=media)
