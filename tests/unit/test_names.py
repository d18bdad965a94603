"""Names compared by their shape (UTS #39 skeleton) and public names: pure code."""

from __future__ import annotations

import unicodedata

import pytest

from forum.names import (
    DEFAULT_IGNORABLE,
    PUBLIC_NAME_MAX,
    NameRefused,
    clean_public_name,
    holder_of,
    is_default_ignorable,
    localpart,
    lookalike,
)
from moderation.bot.text import skeleton

#: Invisible code points outside category Cf (issue #12): combining grapheme joiner,
#: variation selector 16, Hangul filler, Hangul choseong filler, Braille blank, Khmer
#: inherent vowel.
INVISIBLE = ["\u034f", "\ufe0f", "\u3164", "\u115f", "\u2800", "\u17b4"]


@pytest.mark.parametrize("ch", INVISIBLE, ids=[f"U+{ord(c):04X}" for c in INVISIBLE])
def test_invisible_characters_do_not_change_the_skeleton(ch: str) -> None:
    assert skeleton(f"Koffi{ch}") == skeleton("Koffi")
    assert skeleton(f"Ko{ch}ffi") == skeleton("Koffi")


# --- the kernel's skeleton (forum.names), shared by both bots ---------------------------


def test_the_moderation_bot_uses_the_kernels_skeleton() -> None:
    import forum.names
    import moderation.bot.text

    assert moderation.bot.text.skeleton is forum.names.skeleton


def test_default_ignorable_table_agrees_with_unicodedata() -> None:
    """The table holds every format character (Cf) Python's Unicode data knows, less the
    exceptions of UAX #44's derivation, and the named non-Cf invisible characters."""
    visible_cf = {0xFFF9, 0xFFFA, 0xFFFB, *range(0x13430, 0x13440)}
    prepended = {*range(0x0600, 0x0606), 0x06DD, 0x070F, 0x0890, 0x0891, 0x08E2, 0x110BD}
    prepended.add(0x110CD)
    for cp in range(0x110000):
        ch = chr(cp)
        if unicodedata.category(ch) == "Cf" and cp not in visible_cf | prepended:
            assert is_default_ignorable(ch), f"U+{cp:04X}"
    for cp in (0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0, 0xFE0F, 0xE0100):
        assert is_default_ignorable(chr(cp)), f"U+{cp:04X}"
    for ch in "aZ é1 \u00a0\u2800\u0600\ufff9":
        assert not is_default_ignorable(ch), repr(ch)
    assert all(lo <= hi for lo, hi in DEFAULT_IGNORABLE)
    assert all(a[1] < b[0] for a, b in zip(DEFAULT_IGNORABLE, DEFAULT_IGNORABLE[1:], strict=False))


@pytest.mark.parametrize(
    ("real", "fake"),
    [
        ("Koffi", "Кoffі"),  # Cyrillic Ka and i
        ("Koffi", "K\u200boffi\u202e"),  # zero-width space, bidi override
        ("Koffi", "Koffi\u034f\ufe0f"),
        ("Koffi", "\u3164Koffi\u115f"),
        ("Afi", "Αfі"),  # Greek capital alpha, Cyrillic i
        ("Afi", "Ａｆｉ"),  # fullwidth
        ("Élodie", "elodie"),
        ("Élodie", "E\u0301lodie"),  # decomposed accent
        ("Ama Twin", "Ama  Twin "),
    ],
)
def test_lookalikes_share_a_skeleton(real: str, fake: str) -> None:
    assert skeleton(real) == skeleton(fake)
    assert lookalike(real, fake)


def test_different_names_keep_different_skeletons() -> None:
    for a, b in [("Koffi", "Kofi"), ("Afi", "Ami"), ("Ama Twin", "Ama"), ("Yao", "Yawo")]:
        assert skeleton(a) != skeleton(b), (a, b)
        assert not lookalike(a, b)
    assert not lookalike("\u200b", "\u3164")  # nothing visible matches nothing


# --- public names -------------------------------------------------------------------------


def test_a_public_name_is_normalised() -> None:
    assert clean_public_name("  Zoé   Martin ") == "Zoé Martin"
    assert clean_public_name("Zoe\u0301") == "Zoé"  # NFC
    assert clean_public_name("Plume 🌱") == "Plume 🌱"
    assert clean_public_name("x" * PUBLIC_NAME_MAX) == "x" * PUBLIC_NAME_MAX


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("x" * (PUBLIC_NAME_MAX + 1), "too_long"),
        ("\u200b\u200b", "invisible"),
        ("\u3164", "invisible"),
        ("\u2800\u2800", "invisible"),
        ("\u034f", "invisible"),
        ("Zoé\u202eniloK", "invisible"),  # a bidi override shows another name
        ("Zo\x07é", "invisible"),  # a control
        ("Zo\ue000é", "invisible"),  # private use
    ],
)
def test_a_public_name_is_refused(raw: str, reason: str) -> None:
    with pytest.raises(NameRefused) as err:
        clean_public_name(raw)
    assert err.value.reason == reason


def test_the_holder_of_a_lookalike_name() -> None:
    others = {
        "@afi:x": ["Afi", "afi"],  # a moderator: display name and localpart
        "@koffi:x": ["Koffi", None],
        "@zoe:x": ["Plume"],  # a public name
    }
    assert holder_of("Afi", others) == "@afi:x"
    assert holder_of("Аfі", others) == "@afi:x"  # Cyrillic А and і
    assert holder_of("Koffi\u034f", others) == "@koffi:x"
    assert holder_of("P1ume", others) == "@zoe:x"
    assert holder_of("Zoé Martin", others) is None
    assert localpart("@koffi-12:example.org") == "koffi-12"
