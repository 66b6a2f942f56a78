"""String normalisation for search: case- and accent-insensitive, as FHIR string search requires."""

from __future__ import annotations

import unicodedata

INDEXED_LENGTH = 200  # longer values are indexed by their first 200 characters


def normalize(value: str) -> str:
    if value.isascii():  # no accents to strip, and casefold() is lower() for ASCII
        return " ".join(value.lower().split())[:INDEXED_LENGTH]
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.casefold().split())[:INDEXED_LENGTH]
