"""FHIR date/dateTime/instant parsing into OMOP's date + UTC datetime, keeping track of partial dates."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, NamedTuple


class FhirDate(NamedTuple):
    date: str  # ISO date (first day of the period for partial dates)
    datetime: str | None  # ISO UTC datetime without zone, None when only a date was given
    partial: bool  # year or year-month only


def parse(value: Any) -> FhirDate | None:
    """None when absent or unparseable (the caller decides whether that is a flag or a dead letter)."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    v = value.strip()
    try:
        if len(v) == 4:
            return FhirDate(date(int(v), 1, 1).isoformat(), None, True)
        if len(v) == 7:
            return FhirDate(date(int(v[:4]), int(v[5:7]), 1).isoformat(), None, True)
        if len(v) == 10:
            return FhirDate(date.fromisoformat(v).isoformat(), None, False)
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        if dt.tzinfo is not None:
            dt = dt.astimezone(UTC).replace(tzinfo=None)
        return FhirDate(dt.date().isoformat(), dt.isoformat(sep=" "), False)
    except ValueError:
        return None


def first(resource: dict[str, Any], *fields: str) -> FhirDate | None:
    """The first present date among `fields`; `xPeriod` fields use their start (or end)."""
    for f in fields:
        v = resource.get(f)
        if isinstance(v, dict):
            v = v.get("start") or v.get("end")
        d = parse(v)
        if d is not None:
            return d
    return None


def period_end(resource: dict[str, Any], *fields: str) -> FhirDate | None:
    for f in fields:
        v = resource.get(f)
        if isinstance(v, dict):
            v = v.get("end")
        d = parse(v)
        if d is not None:
            return d
    return None
