"""The interface of a protection: it sees every message of the forum rooms and decides
whether one is an offence; what is done about it is not its business."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from forum.events import Message

from ..tuning import Tuning


def _(msg: str) -> str:
    """Marks a label for extraction; translated when shown."""
    return msg


def received_at(raw: Mapping[str, Any], now: float | None = None) -> float:
    """When our homeserver received an event (seconds since the epoch): ``now`` (the time
    it is handled) less the ``unsigned.age`` the homeserver gives, if any. Never
    ``origin_server_ts``: the sending server sets it, and a remote one may set anything."""
    now = time.time() if now is None else now
    unsigned = raw.get("unsigned")
    age = unsigned.get("age") if isinstance(unsigned, Mapping) else None
    if isinstance(age, int | float) and not isinstance(age, bool) and age > 0:
        return now - age / 1000
    return now


#: Events to remove for an offence: (room id, event id).
Events = list[tuple[str, str]]


class Protection(ABC):
    """One protection. ``kind`` names it in the audit log; ``label`` (translated when
    shown) names it for moderators."""

    kind: str
    label: str

    def __init__(self, tuning: Tuning) -> None:
        self.tuning = tuning

    def observe(self, ev: Message) -> None:  # noqa: B027 - most protections need no history
        """See a message, before any protection checks it."""

    @abstractmethod
    async def check(self, ev: Message) -> Events | None:
        """The events to remove if ``ev`` is an offence, else ``None``."""

    def acted(self, ev: Message) -> None:  # noqa: B027 - most protections keep no state
        """The offence this protection found in ``ev`` is being dealt with."""
