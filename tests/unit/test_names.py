"""Names compared by their shape (UTS #39 skeleton) and public names: pure code."""

from __future__ import annotations

import pytest

from moderation.bot.text import skeleton

#: Invisible code points outside category Cf (issue #12): combining grapheme joiner,
#: variation selector 16, Hangul filler, Hangul choseong filler, Braille blank, Khmer
#: inherent vowel.
INVISIBLE = ["\u034f", "\ufe0f", "\u3164", "\u115f", "\u2800", "\u17b4"]


@pytest.mark.parametrize("ch", INVISIBLE, ids=[f"U+{ord(c):04X}" for c in INVISIBLE])
def test_invisible_characters_do_not_change_the_skeleton(ch: str) -> None:
    assert skeleton(f"Koffi{ch}") == skeleton("Koffi")
    assert skeleton(f"Ko{ch}ffi") == skeleton("Koffi")
