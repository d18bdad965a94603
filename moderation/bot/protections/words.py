"""Banned words, matched as whole words, case- and accent-insensitively, in every text a
client shows: ``body``, ``formatted_body`` and an edit's ``m.new_content``."""

from __future__ import annotations

import re

from forum.events import Message

from ..text import fold, message_texts, word_pattern
from .base import Events, Protection, _


class BannedWords(Protection):
    kind = "word"
    label = _("a banned word")

    _words: tuple[str, ...] | None = None
    _pattern: re.Pattern[str] | None = None

    @property
    def pattern(self) -> re.Pattern[str] | None:
        """The pattern of the configured words (made again when they change)."""
        words = tuple(self.tuning.current.words)
        if words != self._words:
            self._words, self._pattern = words, word_pattern(words)
        return self._pattern

    async def check(self, ev: Message) -> Events | None:
        pattern = self.pattern
        if pattern is not None and any(
            pattern.search(fold(text)) for text in message_texts(ev.content)
        ):
            return [(ev.room_id, ev.event_id)]
        return None
