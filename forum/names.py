"""Names compared by their shape: the look-alike skeleton both bots use (the moderation
bot to resolve a name given to a command, the membership bot to refuse a public name
shaped like someone else's), and the checks on a public name a member chooses. No I/O.

The skeleton is the one of Unicode Technical Standard #39 (section 4, "Confusable
Detection"): NFD, default-ignorable code points removed, each character replaced by its
confusable prototype, NFD again. This forum's is then coarser, on purpose: compatibility
forms, case and accents are folded too, so that "Élodie", "elodie" and "ｅｌｏｄｉｅ"
meet on one skeleton.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from collections.abc import Iterable, Mapping
from importlib import resources

#: Default_Ignorable_Code_Point, from Unicode's DerivedCoreProperties.txt (version 15.1.0;
#: unchanged in 16.0.0): code points that render as nothing unless a font has a glyph
#: for them. Python's :mod:`unicodedata` has no such property, and about half of these
#: are not format characters (Cf): U+034F is Mn, U+115F and U+3164 are Lo, U+FE0F is Mn.
#: The derivation (UAX #44): Other_Default_Ignorable_Code_Point + Cf + Variation_Selector
#: - White_Space - FFF9..FFFB - 13430..1343F - Prepended_Concatenation_Mark.
DEFAULT_IGNORABLE: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),  # Cf SOFT HYPHEN
    (0x034F, 0x034F),  # Mn COMBINING GRAPHEME JOINER
    (0x061C, 0x061C),  # Cf ARABIC LETTER MARK
    (0x115F, 0x1160),  # Lo HANGUL CHOSEONG FILLER..HANGUL JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # Mn KHMER VOWEL INHERENT AQ..KHMER VOWEL INHERENT AA
    (0x180B, 0x180D),  # Mn MONGOLIAN FREE VARIATION SELECTOR ONE..THREE
    (0x180E, 0x180E),  # Cf MONGOLIAN VOWEL SEPARATOR
    (0x180F, 0x180F),  # Mn MONGOLIAN FREE VARIATION SELECTOR FOUR
    (0x200B, 0x200F),  # Cf ZERO WIDTH SPACE..RIGHT-TO-LEFT MARK
    (0x202A, 0x202E),  # Cf LEFT-TO-RIGHT EMBEDDING..RIGHT-TO-LEFT OVERRIDE
    (0x2060, 0x2064),  # Cf WORD JOINER..INVISIBLE PLUS
    (0x2065, 0x2065),  # Cn <reserved-2065>
    (0x2066, 0x206F),  # Cf LEFT-TO-RIGHT ISOLATE..NOMINAL DIGIT SHAPES
    (0x3164, 0x3164),  # Lo HANGUL FILLER
    (0xFE00, 0xFE0F),  # Mn VARIATION SELECTOR-1..VARIATION SELECTOR-16
    (0xFEFF, 0xFEFF),  # Cf ZERO WIDTH NO-BREAK SPACE
    (0xFFA0, 0xFFA0),  # Lo HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),  # Cn <reserved-FFF0>..<reserved-FFF8>
    (0x1BCA0, 0x1BCA3),  # Cf SHORTHAND FORMAT LETTER OVERLAP..SHORTHAND FORMAT UP STEP
    (0x1D173, 0x1D17A),  # Cf MUSICAL SYMBOL BEGIN BEAM..MUSICAL SYMBOL END PHRASE
    (0xE0000, 0xE0000),  # Cn <reserved-E0000>
    (0xE0001, 0xE0001),  # Cf LANGUAGE TAG
    (0xE0002, 0xE001F),  # Cn <reserved-E0002>..<reserved-E001F>
    (0xE0020, 0xE007F),  # Cf TAG SPACE..CANCEL TAG
    (0xE0080, 0xE00FF),  # Cn <reserved-E0080>..<reserved-E00FF>
    (0xE0100, 0xE01EF),  # Mn VARIATION SELECTOR-17..VARIATION SELECTOR-256
    (0xE01F0, 0xE0FFF),  # Cn <reserved-E01F0>..<reserved-E0FFF>
)

#: Characters that show as a blank without being White_Space nor default-ignorable, used
#: to fake an empty or a look-alike name: U+2800 BRAILLE PATTERN BLANK.
BLANKS = frozenset({"\u2800"})

#: Bidirectional controls: they reorder what follows them, so a name holding one can
#: show another name than the one it is.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)

#: The longest public name, in characters (after normalisation).
PUBLIC_NAME_MAX = 48

# Look-alikes beyond what the Unicode confusables data links (digits read as letters).
_EXTRA_LOOKALIKES = {"0": "o"}


def is_default_ignorable(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in DEFAULT_IGNORABLE)


def is_invisible(ch: str) -> bool:
    """Default-ignorable, a blank that is not a space, or a control, private-use,
    surrogate or unassigned code point."""
    return (
        is_default_ignorable(ch)
        or ch in BLANKS
        or unicodedata.category(ch) in {"Cc", "Cf", "Co", "Cs", "Cn"}
    )


def strip_controls(text: str) -> str:
    """Without the characters that show nothing (:func:`is_invisible`): format
    characters (bidi overrides, zero-width joiners, BOM...), the other default-ignorable
    code points, blanks that are not spaces, controls."""
    return "".join(ch for ch in text if not is_invisible(ch) or ch in "\t\n\r")


@functools.cache
def _lookalikes() -> dict[str, str]:
    """Each character of Unicode's confusables data (UTS #39, as shipped by
    ``confusable_homoglyphs``) mapped to one representative of its look-alike class,
    preferring a lowercase ASCII letter: Cyrillic "а", Greek "α" and fullwidth "ａ" all
    become "a"; "I", "1" and "|" become "l". Classes are joined through single
    characters only ("rn" for "m" is left out: too many false matches in real names)."""
    data = json.loads(
        resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text("utf-8")
    )
    parent: dict[str, str] = {}

    def root(ch: str) -> str:
        while parent.get(ch, ch) != ch:
            parent[ch] = parent.get(parent[ch], parent[ch])
            ch = parent[ch]
        return ch

    def rank(ch: str) -> tuple[bool, bool, str]:
        return (not (ch.isascii() and ch.islower()), not ch.isascii(), ch)

    for source, glyphs in data.items():
        source = strip_controls(source)
        if len(source) != 1:
            continue
        for glyph in glyphs:
            other = strip_controls(str(glyph.get("c", "")))
            if len(other) != 1:
                continue
            a, b = root(source), root(other)
            if a != b:
                keep, drop = sorted((a, b), key=rank)
                parent[drop] = keep
    table = {ch: root(ch) for ch in parent}
    table.update(_EXTRA_LOOKALIKES)
    return {ch: rep for ch, rep in table.items() if ch != rep}


def _prototypes(text: str) -> str:
    table = _lookalikes()
    return "".join(table.get(ch, ch) for ch in text)


def skeleton(name: str) -> str:
    """The shape of a name, so that look-alikes compare equal. UTS #39's skeleton (NFD,
    default-ignorable code points removed, confusables mapped to their prototype, NFD
    again), with compatibility decomposition (NFKD, which includes NFD), then case
    folded and mapped again (an uppercase "I" passes for an "l"), accents dropped,
    spaces collapsed."""
    decomposed = unicodedata.normalize("NFKD", name)
    shaped = unicodedata.normalize("NFKD", _prototypes(strip_controls(decomposed)))
    folded = unicodedata.normalize("NFKD", _prototypes(shaped.casefold()))
    bare = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return " ".join(strip_controls(bare).split())


def lookalike(a: str, b: str) -> bool:
    """Do ``a`` and ``b`` look alike (the same :func:`skeleton`, not empty)?"""
    sa = skeleton(a)
    return bool(sa) and sa == skeleton(b)


class NameRefused(ValueError):
    """A public name that cannot be used; ``reason`` says why:

    - ``"empty"``: nothing visible;
    - ``"too_long"``: more than :data:`PUBLIC_NAME_MAX` characters;
    - ``"invisible"``: controls, bidirectional controls, unassigned or private-use code
      points, or only invisible characters;
    - ``"taken"``: equal to, or a look-alike of, someone else's name (``holder``).
    """

    def __init__(self, reason: str, holder: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.holder = holder


def clean_public_name(raw: str) -> str:
    """The public name ``raw`` asks for: NFC, spaces collapsed; or :class:`NameRefused`."""
    name = " ".join(unicodedata.normalize("NFC", raw).split())
    if not name:
        raise NameRefused("empty")
    if len(name) > PUBLIC_NAME_MAX:
        raise NameRefused("too_long")
    bad = {"Cc", "Co", "Cs", "Cn"}
    if any(unicodedata.category(ch) in bad or ch in BIDI_CONTROLS for ch in name):
        raise NameRefused("invisible")
    if not skeleton(name) or not strip_controls(name).strip():
        raise NameRefused("invisible")
    return name


def holder_of(name: str, others: Mapping[str, Iterable[str | None]]) -> str | None:
    """Whose name ``name`` is or looks like: ``others`` maps each other person (user id)
    to the names they go by (public name, display names, the user id's localpart)."""
    wanted = skeleton(name)
    if not wanted:
        return None
    for user_id, names in others.items():
        if any(n and skeleton(n) == wanted for n in names):
            return user_id
    return None


def localpart(user_id: str) -> str:
    return user_id.removeprefix("@").split(":", 1)[0]
