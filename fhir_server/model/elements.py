"""Element definitions of R4 resources and data types: each child's type and whether it repeats.

Used where the JSON alone cannot tell, e.g. whether a FHIRPath Patch `add` starts a list."""

from __future__ import annotations

import json
from importlib import resources

# path -> [type, repeats]; type "" means a nested (backbone) element, "#Path" a content reference.
_ELEMENTS: dict[str, list] = json.loads(resources.files("fhir_server.model").joinpath(
    "data/r4-elements.json").read_text())


def child(context: str, name: str) -> tuple[str, bool] | None:
    """(definition context of the child, repeats) for element `name` under `context`, or None if unknown.

    context is a resource or data type name, or a backbone path such as Observation.component."""
    path = f"{context}.{name}"
    info = _ELEMENTS.get(path) or _ELEMENTS.get(f"{path}[x]")
    if info is None:
        for suffix_start in range(len(name) - 1, 0, -1):  # valueQuantity -> value[x] with type Quantity
            if name[suffix_start].isupper() and f"{context}.{name[:suffix_start]}[x]" in _ELEMENTS:
                base = _ELEMENTS[f"{context}.{name[:suffix_start]}[x]"]
                return name[suffix_start:], bool(base[1])
        return None
    kind, repeats = info
    if kind == "":
        return path, bool(repeats)
    if kind.startswith("#"):
        return kind[1:], bool(repeats)
    return kind, bool(repeats)
