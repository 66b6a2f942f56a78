"""The declarative mapping tables in the repository's `mappings/` folder (DICOM -> FHIR, ECG formats).

A source checkout or editable install reads them beside the package; an installed server (the Docker
image) reads FHIR_MAPPINGS_DIR or ./mappings."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import orjson


def mappings_dir() -> Path:
    configured = os.environ.get("FHIR_MAPPINGS_DIR")
    if configured:
        return Path(configured)
    beside = Path(__file__).resolve().parent.parent / "mappings"
    return beside if beside.is_dir() else Path("mappings").resolve()


@cache
def load_table(name: str) -> Any:
    path = mappings_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"mapping table {path} is missing (set FHIR_MAPPINGS_DIR)")
    return orjson.loads(path.read_bytes())
