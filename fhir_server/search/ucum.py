"""UCUM canonical forms for quantity search: 5400 ug and 5.4 mg index to the same canonical value.

Covers metric prefixes on the base units clinical data uses, common time units and simple
ratios (mg/dL, mmol/L, /min); anything else keeps its own code with factor 1."""

from __future__ import annotations

from functools import lru_cache

UCUM_SYSTEM = "http://unitsofmeasure.org"

_PREFIXES = {"Y": 1e24, "Z": 1e21, "E": 1e18, "P": 1e15, "T": 1e12, "G": 1e9, "M": 1e6, "k": 1e3, "h": 1e2,
             "da": 1e1, "d": 1e-1, "c": 1e-2, "m": 1e-3, "u": 1e-6, "n": 1e-9, "p": 1e-12, "f": 1e-15}
# base unit -> (canonical unit, factor)
_BASES = {
    "g": ("g", 1.0), "m": ("m", 1.0), "L": ("L", 1.0), "l": ("L", 1.0), "s": ("s", 1.0), "mol": ("mol", 1.0),
    "eq": ("eq", 1.0), "Pa": ("Pa", 1.0), "U": ("U", 1.0), "[IU]": ("[IU]", 1.0), "[iU]": ("[IU]", 1.0),
    "min": ("s", 60.0), "h": ("s", 3600.0), "d": ("s", 86400.0), "wk": ("s", 604800.0),
    "mo": ("s", 2629800.0), "a": ("s", 31557600.0), "mm[Hg]": ("Pa", 133.322387415),
    "cm[H2O]": ("Pa", 98.0665), "bar": ("Pa", 1e5), "[lb_av]": ("g", 453.59237), "[in_i]": ("m", 0.0254),
    "%": ("%", 1.0), "1": ("1", 1.0), "Cel": ("Cel", 1.0), "[degF]": ("[degF]", 1.0), "{beats}": ("1", 1.0),
}
# Units with no prefix applied, matched before prefix splitting (mm[Hg] is not milli-m[Hg]).
_UNPREFIXED = {"min", "h", "d", "wk", "mo", "a", "mm[Hg]", "cm[H2O]", "%", "1", "Cel", "[degF]", "mol", "Pa"}


@lru_cache(maxsize=4096)
def _unit(code: str) -> tuple[str, float] | None:
    if code in _UNPREFIXED or code in _BASES:
        return _BASES.get(code, (code, 1.0))
    for prefix in sorted(_PREFIXES, key=len, reverse=True):
        if code.startswith(prefix) and code[len(prefix):] in _BASES and code[len(prefix):] not in (
                "min", "h", "d", "wk", "mo", "a", "%", "1", "Cel", "[degF]", "mm[Hg]", "cm[H2O]"):
            unit, factor = _BASES[code[len(prefix):]]
            return unit, factor * _PREFIXES[prefix]
    return None


@lru_cache(maxsize=4096)
def canonical(code: str) -> tuple[str, float]:
    """(canonical code, factor) so that value * factor is in the canonical unit."""
    if "/" in code:
        numerator, _, denominator = code.partition("/")
        num = _unit(numerator) if numerator else ("1", 1.0)
        den = _unit(denominator)
        if num and den:
            return f"{num[0]}/{den[0]}", num[1] / den[1]
        return code, 1.0
    unit = _unit(code)
    return unit if unit else (code, 1.0)
