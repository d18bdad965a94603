"""Durations as commands write them (``30m``, ``2h``, ``7d``, ``1w``). Pure; shared by the
command framework (:mod:`moderation.commands`) and the moderation bot."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"^(\d{1,6})([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(token: str) -> timedelta | None:
    found = _DURATION.match(token.strip().lower())
    if not found:
        return None
    return timedelta(seconds=int(found.group(1)) * _UNITS[found.group(2)])


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"
