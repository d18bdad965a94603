"""Banned words, matched as whole words, case- and accent-insensitively, in every text a
client shows: ``body``, ``formatted_body`` and an edit's ``m.new_content``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..text import fold, message_texts, word_pattern
from .base import Facts, Finding, Protection, _


class BannedWords(Protection):
    kind = "word"
    label = _("a banned word")

    _words: tuple[str, ...] | None = None
    _pattern: re.Pattern[str] | None = None

    def pattern(self, words: tuple[str, ...]) -> re.Pattern[str] | None:
        """The pattern of ``words`` (made again when they change)."""
        if words != self._words:
            self._words, self._pattern = words, word_pattern(words)
        return self._pattern

    def decide(self, content: Mapping[str, Any], sender: str, facts: Facts) -> Finding | None:
        pattern = self.pattern(tuple(facts.settings.words))
        if pattern is not None and any(
            pattern.search(fold(text)) for text in message_texts(content)
        ):
            return self.found()
        return None
