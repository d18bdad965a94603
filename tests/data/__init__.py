"""Event fixtures as the homeserver sends them (``events/*.json``), for unit tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EVENTS = Path(__file__).parent / "events"


def event(name: str) -> dict[str, Any]:
    """The raw event ``events/<name>.json``."""
    data: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text(encoding="utf-8"))
    return data
