"""Rows of a view as CSV, NDJSON, a JSON array or Parquet. Text formats encode page by page (for a
streamed answer or a file); Parquet is written in row groups with pyarrow."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson

from .evaluator import Column, View, ViewError

FORMATS = {"csv": "text/csv", "ndjson": "application/x-ndjson", "json": "application/json",
           "parquet": "application/vnd.apache.parquet"}
_FORMAT_ALIASES = {"text/csv": "csv", "application/x-ndjson": "ndjson", "application/ndjson": "ndjson",
                   "application/fhir+ndjson": "ndjson", "application/json": "json",
                   "application/vnd.apache.parquet": "parquet"}


def output_format(value: str, where: str) -> str:
    fmt = _FORMAT_ALIASES.get(value.strip().lower(), value.strip().lower())
    if fmt not in FORMATS:
        raise ViewError(f"Output format '{value[:40]}' is not one of {', '.join(FORMATS)}", expression=[where])
    return fmt


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


class TextEncoder:
    """bytes of the header (if any), of each page of rows, and of the end."""

    def __init__(self, view: View, fmt: str, header: bool = True):
        self.names, self.fmt, self.header, self.first = view.names, fmt, header, True

    def start(self) -> bytes:
        if self.fmt == "csv" and self.header:
            return self._csv([self.names])
        return b"[" if self.fmt == "json" else b""

    def page(self, rows: list[tuple[Any, ...]]) -> bytes:
        if self.fmt == "csv":
            return self._csv([[_cell(v) for v in row] for row in rows])
        objects = [orjson.dumps(dict(zip(self.names, row, strict=True))) for row in rows]
        if self.fmt == "ndjson":
            return b"".join(o + b"\n" for o in objects)
        if not objects:
            return b""
        text = (b"" if self.first else b",") + b",".join(objects)
        self.first = False
        return text

    def end(self) -> bytes:
        return b"]" if self.fmt == "json" else b""

    @staticmethod
    def _csv(rows: list[list[Any]]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue().encode()


_ARROW_TYPES = {"boolean": "bool_", "integer": "int64", "positiveInt": "int64", "unsignedInt": "int64",
                "integer64": "int64", "decimal": "float64"}


class ParquetOutput:
    """Row groups of a Parquet file; the schema comes from the columns' declared FHIR types (string
    when none is declared and the first rows hold text or nothing, else what they hold)."""

    def __init__(self, view: View, path: Path):
        self.view, self.path, self.writer, self.schema = view, path, None, None

    def _arrow_type(self, column: Column, sample: list[Any]):
        import pyarrow as pa

        name = _ARROW_TYPES.get(column.type or "")
        if name is None and column.type is None:
            values = [v for v in sample if v is not None]
            values = [x for v in values for x in v] if column.collection else values
            kinds = {type(v) for v in values}
            if kinds == {bool}:
                name = "bool_"
            elif kinds and kinds <= {int}:
                name = "int64"
            elif kinds and kinds <= {int, float}:
                name = "float64"
        base = getattr(pa, name)() if name else pa.string()
        return pa.list_(base) if column.collection else base

    def _convert(self, value: Any, arrow_type) -> Any:
        import pyarrow as pa

        if value is None:
            return None
        if pa.types.is_string(arrow_type) and not isinstance(value, str):
            return orjson.dumps(value).decode() if isinstance(value, dict | list) else _cell(value)
        return value

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows and self.writer is not None:
            return
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in self.view.columns]
        if self.schema is None:
            self.schema = pa.schema([(c.name, self._arrow_type(c, list(values)))
                                     for c, values in zip(self.view.columns, columns, strict=True)])
            self.writer = pq.ParquetWriter(self.path, self.schema)
        arrays = []
        for field, values in zip(self.schema, columns, strict=True):
            item_type = field.type.value_type if pa.types.is_list(field.type) else field.type
            converted = [[self._convert(x, item_type) for x in v] if pa.types.is_list(field.type) and v is not None
                         else self._convert(v, item_type) for v in values]
            try:
                arrays.append(pa.array(converted, type=field.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                raise ViewError(f"Column '{field.name}' holds values that are not {field.type}: {exc}",
                                expression=["ViewDefinition.select"]) from exc
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        if self.writer is None:
            self.write([])
        self.writer.close()
