"""What of a message may be published: its words only (issue #10, point 6).

``clean_html`` is the allow-list HTML sanitiser (nh3): harmless formatting, links only
``http(s)``, no spoiler. :func:`publishable` turns a message into the words the digest
stores: text, notices and emotes only; a mention (pill or bare Matrix ID) becomes the
person's name if they consented to publication, else a neutral word.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import unquote

import nh3

from forum.matrix import strip_reply_fallback

#: the message types whose words may be published; every other (location, file, image,
#: audio, video, custom...) is counted but never stored or shown
PUBLISHED_MSGTYPES = frozenset({"m.text", "m.notice", "m.emote"})
ALLOWED_TAGS = frozenset(
    {
        "a",
        "b",
        "blockquote",
        "br",
        "code",
        "del",
        "em",
        "i",
        "li",
        "ol",
        "p",
        "pre",
        "s",
        "strong",
        "sub",
        "sup",
        "u",
        "ul",
    }
)
ALLOWED_ATTRIBUTES = {"a": {"href"}}
URL_SCHEMES = frozenset({"https", "http"})
SPOILER = "data-mx-spoiler"
LINK_REL = "nofollow noopener noreferrer"

# A user ID (https://spec.matrix.org/latest/appendices/#user-identifiers), not preceded
# by a character that would make it part of an e-mail address or a word.
_USER_ID = (
    r"@[a-zA-Z0-9._=\-/+]+:(?:\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9](?:[a-zA-Z0-9.\-]*[a-zA-Z0-9])?)"
    r"(?::[0-9]{1,5})?"
)
USER_ID_RE = re.compile(rf"(?<![\w@.+\-]){_USER_ID}")
#: a link to a person: https://matrix.to/#/@user:server or matrix:u/user:server
_USER_LINK_RE = re.compile(
    r"^(?:https?://matrix\.to/#/(?P<to>@[^?#/]+)|matrix:u/(?P<u>[^?#/]+))(?:[?/#].*)?$"
)


@dataclass(frozen=True)
class Words:
    """The publishable words of a message: plain text and sanitised HTML (if any)."""

    body: str
    html: str | None


def user_of_link(href: str) -> str | None:
    """The user ID a ``matrix.to`` or ``matrix:u/`` link points to, if it does."""
    m = _USER_LINK_RE.match(unquote(href.strip()))
    if m is None:
        return None
    if m["to"]:
        return m["to"]
    return "@" + m["u"]


def _nh3(fragment: str, *, spoilers: bool = False, links: frozenset[str] = URL_SCHEMES) -> str:
    return nh3.clean(
        fragment,
        tags=set(ALLOWED_TAGS | ({"span"} if spoilers else set())),
        clean_content_tags={"script", "style", "mx-reply"},
        attributes={k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()}
        | ({"span": {SPOILER}} if spoilers else {}),
        url_schemes=set(links),
        link_rel=None if spoilers else LINK_REL,
        strip_comments=True,
    )


class _Rewriter(HTMLParser):
    """Rewrites nh3's well-formed output: spoilers dropped with their content, user
    links replaced by ``name[user_id]`` (escaped), other spans and links without an
    http(s) target unwrapped (their text stays)."""

    def __init__(self, name: Mapping[str, str] | None) -> None:
        super().__init__(convert_charrefs=False)
        self.name = name
        self.out: list[str] = []
        self.spans: list[bool] = []  # per open span: is it a spoiler?
        self.hidden = 0  # depth inside spoilers
        # per open <a>: the user it mentions, "" if unwrapped, None if kept as it is
        self.links: list[str | None] = []
        self.pills: list[tuple[str, str]] = []  # (user id, text of the pill)
        self.spoilers: list[str] = []
        self._text: list[str] = []

    def _emit(self, s: str) -> None:
        if self.hidden or _in_pill(self.links):
            self._text.append(s)
        else:
            self.out.append(s)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "span":
            spoiler = SPOILER in a
            self.spans.append(spoiler)
            if spoiler:
                if not self.hidden:
                    self._text = []
                self.hidden += 1
            return
        if tag == "a":
            href = a.get("href") or ""
            user = user_of_link(href)
            if user is not None and not self.hidden and not _in_pill(self.links):
                self._text = []
            if user is None and not re.match(r"(?i)https?:", href):
                user = ""  # no target, or not a web page: the words only
            self.links.append(user)
            if user is not None:
                return
        self._emit(self.get_starttag_text() or "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._emit(self.get_starttag_text() or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            if self.spans and self.spans.pop():
                self.hidden -= 1
                if not self.hidden:
                    self.spoilers.append(html.unescape("".join(self._text)))
                    self._text = []
            return
        if tag == "a" and self.links:
            user = self.links.pop()
            if user == "":
                return
            if user is not None:
                if not self.hidden and not _in_pill(self.links):
                    text = html.unescape(re.sub(r"<[^>]*>", "", "".join(self._text)))
                    self.pills.append((user, text))
                    self._text = []
                    if self.name is not None:
                        self.out.append(html.escape(self.name.get(user, ""), quote=False))
                return
        self._emit(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        self._emit(data)

    def handle_entityref(self, name: str) -> None:
        self._emit(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self._emit(f"&#{name};")


def _in_pill(links: list[str | None]) -> bool:
    return any(u for u in links)


def _rewrite(fragment: str, name: Mapping[str, str] | None) -> _Rewriter:
    r = _Rewriter(name)
    r.feed(_nh3(fragment, spoilers=True, links=URL_SCHEMES | {"matrix"}))
    r.close()
    return r


class _Named(dict[str, str]):
    """user ID -> public name, or the neutral word for anyone not in ``names``."""

    def __init__(self, names: Mapping[str, str], neutral: str) -> None:
        super().__init__(names)
        self.neutral = neutral

    def __missing__(self, key: str) -> str:
        return self.neutral

    def get(self, key: str, default: str | None = None) -> str:  # type: ignore[override]
        return self[key]


def clean_html(fragment: str, names: Mapping[str, str] | None = None, neutral: str = "…") -> str:
    """Keep only harmless formatting: scripts, styles, images, handlers, spoilers (with
    their content) and Matrix reply fallbacks (``<mx-reply>``) are dropped; links only
    ``http(s)`` (the text of any other link stays). A mention pill becomes the person's
    name in ``names``, else ``neutral`` (nothing of the pill remains)."""
    r = _rewrite(fragment, _Named(names or {}, neutral))
    return _nh3("".join(r.out))


def mentioned(body: str, formatted_body: str | None) -> set[str]:
    """The user IDs a message mentions: its pills and the bare IDs of its text."""
    users = set(USER_ID_RE.findall(body))
    if formatted_body:
        r = _rewrite(formatted_body, None)
        users |= {user for user, _ in r.pills}
        users |= set(USER_ID_RE.findall(html.unescape("".join(r.out))))
    return users


def publish_text(
    body: str,
    names: Mapping[str, str],
    neutral: str,
    pills: list[tuple[str, str]] = [],  # noqa: B006 (read only)
    spoilers: list[str] = [],  # noqa: B006 (read only)
) -> str:
    """The plain body with its spoilers dropped, the texts of its pills and its bare user
    IDs replaced by the person's name in ``names`` or by ``neutral``."""
    named = _Named(names, neutral)
    for text in sorted({s for s in spoilers if s.strip()}, key=len, reverse=True):
        body = body.replace(text, "")
    for user, text in sorted(pills, key=lambda p: len(p[1]), reverse=True):
        if text.strip():
            body = body.replace(text, named[user])
    return USER_ID_RE.sub(lambda m: named[m[0]], body)


def publishable(
    msgtype: str,
    body: str,
    formatted_body: str | None,
    names: Mapping[str, str],
    neutral: str,
) -> Words | None:
    """The words of a message that may be published, or None if it has none (not text,
    a notice or an emote). ``names``: user ID -> public name of the people who consented
    to publication; anyone else mentioned becomes ``neutral``."""
    if msgtype not in PUBLISHED_MSGTYPES:
        return None
    body = strip_reply_fallback(body)
    if formatted_body is None:
        return Words(publish_text(body, names, neutral), None)
    named = _Named(names, neutral)
    r = _rewrite(formatted_body, named)
    rich = USER_ID_RE.sub(lambda m: html.escape(named[m[0]], quote=False), "".join(r.out))
    return Words(publish_text(body, names, neutral, r.pills, r.spoilers), _nh3(rich))
