"""Mention spam: a message naming more people than the configured limit."""

from __future__ import annotations

from forum.events import Message

from ..text import mention_count
from .base import Events, Protection, _


class MentionSpam(Protection):
    kind = "mentions"
    label = _("mention spam")

    async def check(self, ev: Message) -> Events | None:
        if mention_count(ev.content, ev.body) > self.tuning.current.mention_limit:
            return [(ev.room_id, ev.event_id)]
        return None
