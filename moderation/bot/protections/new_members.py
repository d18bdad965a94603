"""Links and media from people who joined the forum less than the configured hours ago."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from ..text import has_link
from .base import Facts, Finding, Protection, _, body_of, formatted_of

MEDIA = frozenset({"m.image", "m.video", "m.file", "m.audio"})


def carries_link_or_media(content: Mapping[str, Any]) -> bool:
    return content.get("msgtype") in MEDIA or has_link(body_of(content), formatted_of(content))


class NewMemberLinks(Protection):
    kind = "new-member-link"
    label = _("a link or media from a new member")

    def wants_join_time(self, content: Mapping[str, Any]) -> bool:
        return carries_link_or_media(content)

    def decide(self, content: Mapping[str, Any], sender: str, facts: Facts) -> Finding | None:
        hours = facts.settings.new_member_hours
        if hours <= 0 or facts.joined_at is None or not carries_link_or_media(content):
            return None
        if facts.now - facts.joined_at < timedelta(hours=hours):
            return self.found()
        return None
