"""Flooding: too many messages from one person within the configured seconds (counted
from when our homeserver received them); all of them are removed. :class:`Flood` decides
from :attr:`~.base.Facts.recent`; :class:`FloodWindows` keeps each person's recent
messages for it."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from forum.bounded import LRUDict
from forum.events import Message

from .base import Facts, Finding, Protection, Sent, _, received_at


class Flood(Protection):
    kind = "flood"
    label = _("flooding")

    def decide(self, content: Mapping[str, Any], sender: str, facts: Facts) -> Finding | None:
        recent = facts.recent
        if recent and len(recent) >= facts.settings.flood_messages:
            return self.found([(s.room_id, s.event_id) for s in recent])
        return None


class FloodWindows:
    """Each person's messages within the flood window, oldest first; the people who
    posted least recently are forgotten past the bound."""

    def __init__(self) -> None:
        self.recent: LRUDict[str, deque[Sent]] = LRUDict()

    def observe(self, ev: Message, seconds: float) -> tuple[Sent, ...]:
        """Add ``ev``, dated by when our homeserver received it (never by its
        ``origin_server_ts``, which a remote server sets); its sender's window now."""
        sent = Sent(received_at(ev.raw), ev.room_id, ev.event_id)
        return self.record(ev.sender, sent, seconds)

    def record(self, sender: str, sent: Sent, seconds: float) -> tuple[Sent, ...]:
        """Add ``sent`` to ``sender``'s window of ``seconds``; the window now."""
        window = self.recent.get(sender)
        if window is None:
            window = self.recent[sender] = deque()
        window.append(sent)
        while window and window[0].at < sent.at - seconds:
            window.popleft()
        if not window:
            del self.recent[sender]
            return ()
        return tuple(window)

    def clear(self, sender: str) -> None:
        """The window's messages were dealt with: counting starts again."""
        window = self.recent.get(sender)
        if window is not None:
            window.clear()
