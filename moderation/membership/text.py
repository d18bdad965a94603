"""Pure text helpers of the membership bot: normalising replies, guessing a language,
reading and rendering the charter. No I/O except reading the charter file."""

from __future__ import annotations

import functools
import hashlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt

_SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}


def normalise(text: str) -> str:
    """Lowercase, accents and punctuation removed, spaces collapsed: "J’accepte !" ->
    "j accepte"."""
    decomposed = unicodedata.normalize("NFKD", text)
    no_marks = "".join(c for c in decomposed if not unicodedata.combining(c))
    cleaned = "".join(c if c.isalnum() else " " for c in no_marks.casefold())
    return " ".join(cleaned.split())


def emoji_key(key: str) -> str:
    """A reaction key without variation selectors and skin tones."""
    return "".join(c for c in key if c not in _SKIN_TONES and c not in "\ufe0e\ufe0f")


ACCEPT_WORDS = frozenset({"j accepte", "jaccepte", "oui", "i accept", "yes", "accept", "accepte"})
YES_WORDS = frozenset({"oui", "yes", "y", "o", "ok", "d accord", "daccord", "i agree", "agree"})
NO_WORDS = frozenset({"non", "no", "n", "nope", "pas d accord", "i refuse", "refuse", "je refuse"})
ACCEPT_REACTIONS = frozenset({"✅", "✔", "☑", "👍"})
"""What accepts the charter: 👍 too, a phone's quickest reaction (👍 and ✅ both mean yes)."""
YES_REACTIONS = frozenset({"👍", "✅"})
NO_REACTIONS = frozenset({"👎", "❌"})
OFFER_ACCEPT = ("✅",)
"""The reaction the bot puts on its charter questions, so that one tap accepts."""
OFFER_YES_NO = ("👍", "👎")
"""The reactions the bot puts on its yes/no questions."""


def is_acceptance(text: str) -> bool:
    return normalise(text) in ACCEPT_WORDS


def yes_no(text: str) -> bool | None:
    """True for yes/oui, False for no/non, None otherwise."""
    n = normalise(text)
    if n in YES_WORDS:
        return True
    if n in NO_WORDS:
        return False
    return None


_WORDS: dict[str, frozenset[str]] = {
    "fr": frozenset(
        [
            "bonjour",
            "salut",
            "bonsoir",
            "je",
            "j",
            "suis",
            "voudrais",
            "veux",
            "merci",
            "oui",
            "non",
            "francais",
            "fr",
            "le",
            "la",
            "les",
            "de",
            "des",
            "du",
            "et",
            "pour",
            "rejoindre",
            "participer",
            "accepte",
            "nous",
            "vous",
            "est",
            "une",
            "un",
            "avec",
            "dans",
            "sur",
            "moi",
            "mon",
            "ma",
            "mes",
            "aimerais",
            "souhaite",
            "svp",
            "plait",
            "cest",
            "qui",
            "quoi",
            "comment",
        ]
    ),
    "en": frozenset(
        [
            "hello",
            "hi",
            "hey",
            "i",
            "am",
            "im",
            "would",
            "like",
            "want",
            "to",
            "join",
            "thanks",
            "thank",
            "yes",
            "no",
            "english",
            "en",
            "the",
            "and",
            "please",
            "accept",
            "we",
            "you",
            "is",
            "a",
            "an",
            "with",
            "in",
            "on",
            "me",
            "my",
            "participate",
            "wish",
            "what",
            "who",
            "how",
            "could",
            "can",
        ]
    ),
}
_STRONG = {
    "francais": "fr",
    "fr": "fr",
    "french": "fr",
    "english": "en",
    "en": "en",
    "anglais": "en",
}


def guess_language(text: str | None, languages: list[str] | tuple[str, ...]) -> str | None:
    """The language of a short text among ``languages`` (French/English word counts),
    or None when it cannot tell."""
    if not text:
        return None
    words = normalise(text).split()
    if not words:
        return None
    if len(words) <= 2:
        for w in words:
            if w in _STRONG and _STRONG[w] in languages:
                return _STRONG[w]
    scores = {lang: sum(w in _WORDS[lang] for w in words) for lang in languages if lang in _WORDS}
    if not scores:
        return None
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    if ranked[0][1] == 0 or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


@dataclass(frozen=True)
class Charter:
    version: int
    lang: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def html(self) -> str:
        return markdown_to_html(self.text)


class CharterMissing(Exception):
    pass


def load_charter(directory: Path, version: int, lang: str, fallback: str) -> Charter:
    """The charter text of ``version`` in ``lang`` (else in ``fallback``)."""
    for candidate in (lang, fallback):
        path = directory / candidate / f"v{version}.md"
        if path.is_file():
            return Charter(version, candidate, path.read_text(encoding="utf-8"))
    raise CharterMissing(f"no charter v{version} in {directory} for {lang!r} or {fallback!r}")


@functools.cache
def _markdown() -> MarkdownIt:
    # CommonMark without raw HTML (it is shown escaped); a line break is kept as <br>.
    return MarkdownIt("commonmark", {"html": False, "breaks": True, "xhtmlOut": False})


def markdown_to_html(text: str) -> str:
    """The charter's Markdown (CommonMark) as HTML for a message's ``formatted_body``. Raw
    HTML in the text does not pass: it is escaped, like every other character."""
    return str(_markdown().render(text))
