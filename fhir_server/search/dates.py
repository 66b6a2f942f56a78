"""FHIR date/dateTime/instant values as ranges of epoch milliseconds (implicit precision)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

MIN_MS = -62135596800000  # 0001-01-01T00:00:00Z
MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z

_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2})(?::(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _add_months(ts: datetime, months: int) -> datetime:
    month = ts.month - 1 + months
    return ts.replace(year=ts.year + month // 12, month=month % 12 + 1)


def date_range(value: str) -> tuple[int, int] | None:
    """[low, high] in epoch ms, both inclusive, for a FHIR date/dateTime/instant; None if malformed.

    Values without a time zone are taken as UTC."""
    match = _DATE_RE.match(value.strip())
    if not match:
        return None
    g = match.groupdict()
    try:
        tz = UTC
        if g["tz"] and g["tz"] != "Z":
            offset = timedelta(hours=int(g["tz"][1:3]), minutes=int(g["tz"][4:6]))
            tz = timezone(offset if g["tz"][0] == "+" else -offset)
        start = datetime(int(g["y"]), int(g["m"] or 1), int(g["d"] or 1), int(g["H"] or 0), int(g["M"] or 0),
                         int(g["S"] or 0), int(float(g["f"]) * 1_000_000) if g["f"] else 0, tzinfo=tz)
        if g["f"]:
            end = start + timedelta(microseconds=10 ** max(6 - (len(g["f"]) - 1), 0))
        elif g["S"]:
            end = start + timedelta(seconds=1)
        elif g["M"]:
            end = start + timedelta(minutes=1)
        elif g["H"]:
            end = start + timedelta(hours=1)
        elif g["d"]:
            end = start + timedelta(days=1)
        elif g["m"]:
            end = _add_months(start, 1)
        else:
            end = start.replace(year=start.year + 1)
        high = to_ms(end) - 1
    except (ValueError, OverflowError):
        if g["y"] != "9999" or "start" not in locals():
            return None
        high = MAX_MS
    low = to_ms(start)
    return max(low, MIN_MS), min(max(high, low), MAX_MS)


def parse_since(raw: str) -> datetime:
    """The instant of a _since parameter (history, $everything); 400 naming _since when it is not one."""
    from ..model.outcome import BadRequest

    try:
        since = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"_since must be a FHIR instant such as 2026-01-01T00:00:00Z, not {raw[:40]!r}",
                         expression=["_since"]) from exc
    if since.tzinfo is None or "T" not in raw:
        raise BadRequest("_since must be an instant with a time zone", expression=["_since"])
    return since
