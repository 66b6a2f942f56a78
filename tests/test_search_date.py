"""Date search with the R4 prefixes, comparing RANGES (search.html, "prefixes"):

- every value is a range: its implicit precision (1990 = the whole year) or a Period (open end = infinity);
- eq: the search range fully contains the target range; ne: it does not;
- gt / lt: the range above / below the search value overlaps the target range;
- ge / le: as gt / lt, or eq;
- sa / eb: the target range does not overlap the search range and lies wholly above / below it;
- ap: approximately (asserted only on an unambiguous case).

Observation times are at noon UTC (or well inside a day) so that they fall in the same calendar day whatever
time zone the server would use for a search date without one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from conftest import on_every_layout
from search_data import ids, observation, patient, put_all

pytestmark = on_every_layout("fresh_server")

PATIENTS = [
    patient("b-1950", "Birth", birthDate="1950-03-03"),
    patient("b-1985", "Birth", birthDate="1985-01-01"),
    patient("b-1990a", "Birth", birthDate="1990-05-12"),
    patient("b-1990m", "Birth", birthDate="1990-07"),  # partial date: the whole of July 1990
    patient("b-1990b", "Birth", birthDate="1990-12-31"),
    patient("b-1991", "Birth", birthDate="1991-01-01"),
    patient("b-none", "Birth"),
]
ALL_PATIENTS = {p["id"] for p in PATIENTS}


def _period(start: str, end: str | None = None) -> dict:
    return {"start": start, **({"end": end} if end else {})}


OBSERVATIONS = [
    observation("o-dt1", effectiveDateTime="2026-11-01T12:00:00Z"),
    observation("o-dt2", effectiveDateTime="2026-11-02T12:00:00Z"),
    observation("o-day", effectiveDateTime="2026-11-03"),  # the whole day
    observation("o-tz", effectiveDateTime="2026-11-04T20:00:00+08:00"),  # = 2026-11-04T12:00:00Z
    observation("o-pa", effectivePeriod=_period("2026-10-30T12:00:00Z", "2026-11-05T12:00:00Z")),
    observation("o-pb", effectivePeriod=_period("2026-11-01T10:00:00Z", "2026-11-01T14:00:00Z")),
    observation("o-open", effectivePeriod=_period("2026-11-10T12:00:00Z")),  # no end: ongoing
    observation("o-none"),
]
ALL_OBS = {o["id"] for o in OBSERVATIONS}


@pytest.fixture(scope="module")
def api(fresh_client):
    put_all(fresh_client, PATIENTS + OBSERVATIONS)
    return fresh_client


# ---------------------------------------------------------------- Patient.birthdate (date)


@pytest.mark.parametrize("value, expected", [
    ("1990", {"b-1990a", "b-1990m", "b-1990b"}),
    ("eq1990", {"b-1990a", "b-1990m", "b-1990b"}),
    ("1990-07", {"b-1990m"}),
    ("1990-05-12", {"b-1990a"}),
    ("eq1990-05-12", {"b-1990a"}),
    ("1990-07-15", set()),  # one day does not contain the target's whole month
    ("1990-05", {"b-1990a"}),
    ("1989", set()),
])
def test_birthdate_eq_implicit_precision(api, value, expected):
    assert ids(api, "/Patient", {"birthdate": value}) == expected


@pytest.mark.parametrize("value, expected", [
    ("ne1990", {"b-1950", "b-1985", "b-1991"}),
    ("ne1990-05-12", {"b-1950", "b-1985", "b-1990m", "b-1990b", "b-1991"}),
    ("gt1990", {"b-1991"}),
    ("gt1990-05-12", {"b-1990m", "b-1990b", "b-1991"}),
    ("gt1990-12-31", {"b-1991"}),
    ("ge1990", {"b-1990a", "b-1990m", "b-1990b", "b-1991"}),
    ("ge1990-12-31", {"b-1990b", "b-1991"}),
    ("lt1990", {"b-1950", "b-1985"}),
    ("lt1990-07-15", {"b-1950", "b-1985", "b-1990a", "b-1990m"}),  # July overlaps "before 15 July"
    ("lt1990-05-12", {"b-1950", "b-1985"}),
    ("le1990", {"b-1950", "b-1985", "b-1990a", "b-1990m", "b-1990b"}),
    ("le1990-05-12", {"b-1950", "b-1985", "b-1990a"}),
    ("sa1990", {"b-1991"}),
    ("sa1990-05-12", {"b-1990m", "b-1990b", "b-1991"}),
    ("eb1990", {"b-1950", "b-1985"}),
    ("eb1990-07-15", {"b-1950", "b-1985", "b-1990a"}),  # July does not END before 15 July
])
def test_birthdate_prefixes(api, value, expected):
    assert ids(api, "/Patient", {"birthdate": value}) == expected


def test_birthdate_approximately(api):
    found = ids(api, "/Patient", {"birthdate": "ap1990-05-12"})
    assert "b-1990a" in found
    assert not found & {"b-1950", "b-none"}


def test_birthdate_and_makes_a_range(api):
    assert ids(api, "/Patient", [("birthdate", "ge1990-01-01"), ("birthdate", "le1990-12-31")]) == {
        "b-1990a", "b-1990m", "b-1990b"}


def test_birthdate_or(api):
    assert ids(api, "/Patient", {"birthdate": "1985,1991"}) == {"b-1985", "b-1991"}


def test_birthdate_missing(api):
    assert ids(api, "/Patient", {"birthdate:missing": "true"}) == {"b-none"}
    assert ids(api, "/Patient", {"birthdate:missing": "false"}) == ALL_PATIENTS - {"b-none"}


# ---------------------------------------------------------------- Observation.date (dateTime | Period)


@pytest.mark.parametrize("value, expected", [
    ("2026-11-01", {"o-dt1", "o-pb"}),  # o-pa spans beyond the day, so the day does not contain it
    ("2026-11-02", {"o-dt2"}),
    ("2026-11-03", {"o-day"}),
    ("2026-11-04", {"o-tz"}),
    ("2026-11", {"o-dt1", "o-dt2", "o-day", "o-tz", "o-pb"}),  # o-pa starts in October; o-open never ends
    ("2026-11-01T12:00:00Z", {"o-dt1"}),
    ("2026-11-04T12:00:00Z", {"o-tz"}),
    ("2026-11-04T20:00:00+08:00", {"o-tz"}),
    ("2026-11-04T12:00:00+08:00", set()),
])
def test_date_eq(api, value, expected):
    assert ids(api, "/Observation", {"date": value}) == expected


@pytest.mark.parametrize("value, expected", [
    ("ne2026-11-01", {"o-dt2", "o-day", "o-tz", "o-pa", "o-open"}),
    ("gt2026-11-02", {"o-day", "o-tz", "o-pa", "o-open"}),
    ("gt2026-11-20", {"o-open"}),  # an open-ended Period reaches every later date
    ("ge2026-11-02", {"o-dt2", "o-day", "o-tz", "o-pa", "o-open"}),
    ("lt2026-11-02", {"o-dt1", "o-pb", "o-pa"}),
    ("lt2026-11-01", {"o-pa"}),
    ("le2026-11-02", {"o-dt1", "o-pb", "o-pa", "o-dt2"}),
    ("sa2026-11-02", {"o-day", "o-tz", "o-open"}),  # o-pa started before, so it does not start after
    ("sa2026-11-05", {"o-open"}),
    ("eb2026-11-02", {"o-dt1", "o-pb"}),  # o-pa ends after, so it does not end before
    ("eb2026-11-01", set()),
    ("gt2026-11-01T12:00:00Z", {"o-dt2", "o-day", "o-tz", "o-pa", "o-pb", "o-open"}),
    ("lt2026-11-01T12:00:00Z", {"o-pa", "o-pb"}),
])
def test_date_prefixes_on_datetime_and_period(api, value, expected):
    assert ids(api, "/Observation", {"date": value}) == expected


def test_date_and_makes_a_range(api):
    assert ids(api, "/Observation", [("date", "ge2026-11-01"), ("date", "le2026-11-02")]) == {
        "o-dt1", "o-pb", "o-pa", "o-dt2"}


def test_date_or(api):
    assert ids(api, "/Observation", {"date": "2026-11-02,2026-11-03"}) == {"o-dt2", "o-day"}


def test_date_missing(api):
    assert ids(api, "/Observation", {"date:missing": "true"}) == {"o-none"}
    assert ids(api, "/Observation", {"date:missing": "false"}) == ALL_OBS - {"o-none"}


def test_date_ne_and_lt_do_not_match_resources_without_a_date(api):
    assert "o-none" not in ids(api, "/Observation", {"date": "ne2000-01-01"})
    assert "b-none" not in ids(api, "/Patient", {"birthdate": f"lt{datetime.now(UTC).year + 1}"})
