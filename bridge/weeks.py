"""ISO weeks in the forum's time zone (``2026-W48``)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

WEEK_RE = re.compile(r"^(\d{4})-W(\d{2})$")


def week_of(moment: datetime, tz: str) -> str:
    year, week, _ = moment.astimezone(ZoneInfo(tz)).isocalendar()
    return f"{year}-W{week:02d}"


def parse_week(week: str) -> tuple[int, int]:
    """``(year, week)``; ValueError with a clear message when malformed or impossible."""
    m = WEEK_RE.match(week)
    if not m:
        raise ValueError(f"expected a week like 2026-W48, found {week!r}")
    year, num = int(m.group(1)), int(m.group(2))
    try:
        date.fromisocalendar(year, num, 1)
    except ValueError as exc:
        raise ValueError(f"{week!r}: year {year} has no week {num}") from exc
    return year, num


def week_bounds(week: str, tz: str) -> tuple[datetime, datetime]:
    """The week's start (Monday 00:00 local) and end, as UTC datetimes."""
    year, num = parse_week(week)
    monday = date.fromisocalendar(year, num, 1)
    zone = ZoneInfo(tz)
    start = datetime(monday.year, monday.month, monday.day, tzinfo=zone)
    end_day = monday + timedelta(days=7)
    end = datetime(end_day.year, end_day.month, end_day.day, tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def previous_week(moment: datetime, tz: str) -> str:
    """The last complete week before ``moment`` (what a Monday-morning build publishes)."""
    return week_of(moment - timedelta(days=7), tz)


def week_monday(week: str) -> date:
    year, num = parse_week(week)
    return date.fromisocalendar(year, num, 1)
