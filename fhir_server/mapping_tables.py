"""Where the declarative tables of `mappings/` are read from, and reading them.

The tables are data beside the code, not inside the package: a source checkout has them at the
repository root, the Docker image copies them to /srv/mappings (its working directory), and
FHIR_MAPPINGS_DIR points anywhere else."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

_CHECKOUT = Path(__file__).resolve().parent.parent


def data_folder(name: str, configured: str | None) -> Path:
    """A folder of data beside the code (mappings/, terminology/): the configured one, else the
    checkout's, else ./name (the Docker image's working directory)."""
    if configured:
        return Path(configured)
    return _CHECKOUT / name if (_CHECKOUT / name).is_dir() else Path.cwd() / name


def mappings_dir() -> Path:
    return data_folder("mappings", os.environ.get("FHIR_MAPPINGS_DIR"))


@cache
def load_table(name: str) -> dict[str, Any]:
    """A JSON table under mappings/, e.g. load_table("ecg/leads.json")."""
    path = mappings_dir() / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise RuntimeError(f"mapping table {path} is missing (set FHIR_MAPPINGS_DIR to the mappings folder)") from exc
