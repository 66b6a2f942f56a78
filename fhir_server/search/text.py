"""String normalisation for search: case- and accent-insensitive, as FHIR string search requires."""

from __future__ import annotations

import unicodedata

INDEXED_LENGTH = 200  # longer values are indexed by their first 200 characters


def normalize(value: str) -> str:
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.casefold().split())[:INDEXED_LENGTH]
