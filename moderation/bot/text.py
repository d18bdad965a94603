"""Pure text helpers: display-name normalisation, accent-insensitive word matching, globs,
durations, mentions and links. No I/O. The look-alike skeleton is the kernel's
(:mod:`forum.names`), shared with the membership bot."""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

import nh3

from forum.names import skeleton as skeleton  # the kernel's, shared with the membership bot
from forum.names import strip_controls

from ..durations import format_duration as format_duration
from ..durations import parse_duration as parse_duration

URL_RE = re.compile(
    r"(?i)\b(?:https?://|www\.)\S+|\b[a-z0-9-]+\.(?:com|net|org|io|xyz|ru|top|info|link|click|ly)\b(?:/\S*)?"
)
USER_ID_RE = re.compile(r"@[a-z0-9._=\-/+]+:[A-Za-z0-9.\-]+(?::\d{1,5})?")


def normalize_name(name: str) -> str:
    """NFKC, controls stripped, case-folded, whitespace collapsed."""
    clean = strip_controls(unicodedata.normalize("NFKC", name))
    return " ".join(clean.casefold().split())


def fold(text: str) -> str:
    """Case- and accent-insensitive form (NFKD without combining marks, case-folded)."""
    decomposed = unicodedata.normalize("NFKD", strip_controls(text))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


#: tags after which a reader sees a break between words
_BREAK_TAGS = re.compile(r"(?i)(<br\b[^>]*>|</(?:p|div|li|h[1-6]|blockquote|pre|td|th|tr)\s*>)")


def html_text(fragment: str) -> str:
    """The text a client shows for an HTML ``formatted_body``: tags removed by the
    sanitiser (their text kept, scripts and styles dropped), entities decoded; a line
    or block break stays a break between words."""
    return html.unescape(nh3.clean(_BREAK_TAGS.sub(r"\1 ", fragment), tags=set()))


def message_texts(content: Mapping[str, Any]) -> list[str]:
    """Every text a client may show for a message: ``body``, ``formatted_body`` (as
    text) and, for an edit, the same of ``m.new_content``."""
    out: list[str] = []
    parts: list[Any] = [content]
    new = content.get("m.new_content")
    if isinstance(new, Mapping):
        parts.append(new)
    for part in parts:
        body, formatted = part.get("body"), part.get("formatted_body")
        if isinstance(body, str):
            out.append(body)
        if isinstance(formatted, str):
            out.append(html_text(formatted))
    return out


def word_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    """One regex matching any of ``words`` as whole words in :func:`fold` ed text."""
    parts = [re.escape(fold(w).strip()) for w in words if w.strip()]
    if not parts:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(sorted(parts, key=len, reverse=True)) + r")(?!\w)")


def is_glob(entity: str) -> bool:
    return "*" in entity or "?" in entity


def glob_match(pattern: str, value: str) -> bool:
    return fnmatchcase(value, pattern)


def mention_count(content: dict[str, object], body: str) -> int:
    """People a message mentions: ``m.mentions`` or user ids / matrix.to links in the text."""
    found: set[str] = set()
    mentions = content.get("m.mentions")
    if isinstance(mentions, dict):
        ids = mentions.get("user_ids")
        if isinstance(ids, list):
            found.update(u for u in ids if isinstance(u, str))
    found.update(USER_ID_RE.findall(body))
    formatted = content.get("formatted_body")
    if isinstance(formatted, str):
        found.update(re.findall(r"matrix\.to/#/(@[^\"'>?/]+)", html.unescape(formatted)))
    return len(found)


def has_link(body: str, formatted: str | None) -> bool:
    return bool(URL_RE.search(body) or (formatted and "<a " in formatted.lower()))


def quote_html(text: str, limit: int = 500) -> str:
    short = text if len(text) <= limit else text[:limit] + "…"
    return "<blockquote>" + html.escape(short).replace("\n", "<br/>") + "</blockquote>"


def quote_plain(text: str, limit: int = 500) -> str:
    short = text if len(text) <= limit else text[:limit] + "…"
    return "\n".join("> " + line for line in short.splitlines() or [""])
