"""Flooding: too many messages from one person within the configured seconds (counted
from when our homeserver received them); all of them are removed."""

from __future__ import annotations

from collections import deque

from forum.bounded import LRUDict
from forum.events import Message

from ..tuning import Tuning
from .base import Events, Protection, _, received_at


class Flood(Protection):
    kind = "flood"
    label = _("flooding")

    def __init__(self, tuning: Tuning) -> None:
        super().__init__(tuning)
        #: Each person's recent messages: (when, room id, event id), oldest first; the
        #: people who posted least recently are forgotten past the bound.
        self.recent: LRUDict[str, deque[tuple[float, str, str]]] = LRUDict()

    def observe(self, ev: Message) -> None:
        now = received_at(ev.raw)
        window = self.recent.get(ev.sender)
        if window is None:
            window = self.recent[ev.sender] = deque()
        window.append((now, ev.room_id, ev.event_id))
        while window and window[0][0] < now - self.tuning.current.flood_seconds:
            window.popleft()
        if not window:
            del self.recent[ev.sender]

    async def check(self, ev: Message) -> Events | None:
        window = self.recent.get(ev.sender)
        if window and len(window) >= self.tuning.current.flood_messages:
            return [(r, e) for _, r, e in window]
        return None

    def acted(self, ev: Message) -> None:
        window = self.recent.get(ev.sender)
        if window is not None:
            window.clear()
