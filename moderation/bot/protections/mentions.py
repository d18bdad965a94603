"""Mention spam: a message naming more people than the configured limit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..text import mention_count
from .base import Facts, Finding, Protection, _, body_of


class MentionSpam(Protection):
    kind = "mentions"
    label = _("mention spam")

    def decide(self, content: Mapping[str, Any], sender: str, facts: Facts) -> Finding | None:
        if mention_count(dict(content), body_of(content)) > facts.settings.mention_limit:
            return self.found()
        return None
