"""The weekly digest model, built from the store (never from frozen HTML).

:func:`build_week` reads one week's stored messages, highlights and counters and maps
them to a :class:`WeekDigest` with the pure :class:`~bridge.summarize.Summariser`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bridge.repositories import DigestStore, Highlight, StoredMessage
from bridge.sanitize import clean_html
from bridge.summarize import STOP_EN, STOP_FR, Summariser
from bridge.weeks import week_bounds
from forum.matrix import matrix_to
from forum.settings import Settings

ANNOUNCEMENTS = "announcements"
_WORDS = re.compile(r"\w+")


@dataclass(frozen=True)
class Quote:
    event_id: str
    author: str
    text: str
    html: str
    url: str
    ts: datetime
    heading: str | None = None
    #: the language it was written in (detected from its words, see :func:`language_of`)
    lang: str = ""


@dataclass(frozen=True)
class KeyPointOut:
    text: str
    author: str
    url: str
    event_id: str
    lang: str = ""


@dataclass
class TopicDigest:
    slug: str
    names: dict[str, str]
    highlights: list[Quote] = field(default_factory=list)
    key_points: list[KeyPointOut] = field(default_factory=list)
    messages: int = 0
    participants: int = 0
    new_members: int = 0

    @property
    def empty(self) -> bool:
        return not (self.highlights or self.key_points or self.messages or self.new_members)


@dataclass
class WeekDigest:
    week: str
    start: datetime
    end: datetime
    topics: list[TopicDigest]

    @property
    def messages(self) -> int:
        return sum(t.messages for t in self.topics)

    def to_json(self) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if isinstance(v, datetime):
                return v.isoformat()
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, list):
                return [conv(x) for x in v]
            return v

        return {
            "week": self.week,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "messages": self.messages,
            "topics": [conv(asdict(t)) for t in self.topics],
        }


def language_of(text: str, default: str) -> str:
    """The language ``text`` was written in, from its French and English function words;
    ``default`` (the forum's primary language) when they do not tell."""
    words = _WORDS.findall(text.lower())
    fr = sum(1 for w in words if w in STOP_FR)
    en = sum(1 for w in words if w in STOP_EN)
    if fr == en:
        return default
    return "fr" if fr > en else "en"


def quote_of(m: StoredMessage, heading: str | None = None, default_lang: str = "") -> Quote:
    html = clean_html(m.html) if m.html else ""
    return Quote(
        event_id=m.event_id,
        author=m.display_name,
        text=m.body,
        html=html,
        url=matrix_to(m.room_id, m.event_id),
        ts=m.ts,
        heading=heading,
        lang=language_of(m.body, default_lang),
    )


def topic_rooms(
    settings: Settings, room_ids: Mapping[str, str]
) -> list[tuple[str, dict[str, str]]]:
    """(slug, localized names) of every digest section with a known room, in order."""
    out = [(t.slug, dict(t.name)) for t in settings.topics if f"topic:{t.slug}" in room_ids]
    if "announcements" in room_ids:
        out.append((ANNOUNCEMENTS, dict(settings.rooms.announcements.name)))
    return out


async def build_week(
    session: AsyncSession,
    settings: Settings,
    room_ids: Mapping[str, str],
    week: str,
    *,
    reviewing: bool = False,
) -> WeekDigest:
    """The week as the public sees it: what moderators removed (for good) or held out of
    this week is left out, and a reviewed week (its preview was posted) shows only the
    key points its preview showed, as they were shown: a key point that appeared later
    (the week went on, a message was edited) was seen by no one. ``reviewing``: the
    candidates for a preview (only removals are left out)."""
    start, end = week_bounds(week, settings.digest.timezone)
    store = DigestStore(session)
    removed = await store.removed_targets()
    review = None if reviewing else await store.review(week)
    items = await store.review_items(week) if review is not None else []
    held_quotes = {i.target for i in items if i.kind == "quote" and i.status != "shown"}
    seen_points = {
        (i.target, i.text) for i in items if i.kind == "key_point" and i.status == "shown"
    }
    sections = topic_rooms(settings, room_ids)
    room_of = {
        slug: room_ids["announcements" if slug == ANNOUNCEMENTS else f"topic:{slug}"]
        for slug, _ in sections
    }
    slug_of_room = {room: slug for slug, room in room_of.items()}
    topics = {slug: TopicDigest(slug, names) for slug, names in sections}

    # highlights first
    highlights: list[Highlight] = await store.highlights_between(start, end)
    hl_ids = {h.target for h in highlights}
    stored = await store.messages(hl_ids)
    for h in sorted(highlights, key=lambda h: stored[h.target].ts if h.target in stored else end):
        m = stored.get(h.target)
        slug = slug_of_room.get(h.room_id)
        if m is None or slug is None or h.target in removed or h.target in held_quotes:
            continue
        topics[slug].highlights.append(quote_of(m, h.heading, settings.primary_language))

    # key points: two streaming passes over the light rows of the consented messages
    # (precomputed keywords), a partition at a time; what stays in memory is bounded per
    # topic (keyword frequencies, a few candidates), whatever the size of the week
    count = settings.digest.key_points
    summarisers: dict[str, Summariser[str]] = {slug: Summariser(count) for slug in topics}
    # 1. document frequencies
    async for pairs in store.topic_keywords(start, end):
        texts: dict[str, list[str]] = defaultdict(list)
        for topic, kw in pairs:
            texts[topic].append(kw)
        for topic, kws in texts.items():
            if topic in summarisers:
                summarisers[topic].observe_keywords(kws)
    # 2. scores against the week's frequencies; the best few candidates are kept
    reactions = await store.reaction_counts(start, end)
    async for rows in store.keyword_rows(start, end):
        light: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
        for event_id, topic, kw, words in rows:
            light[topic].append((event_id, kw, words))
        for topic, batch in light.items():
            if topic in summarisers:
                summarisers[topic].offer_keywords(batch, reactions, hl_ids)
    # only the candidates' bodies are read, and split into sentences
    wanted = [c for s in summarisers.values() for c in s.candidate_sources()]
    found = await store.bodies(wanted)
    for slug, s in summarisers.items():
        bodies = {c: found[c][0] for c in s.candidate_sources() if c in found}
        topics[slug].key_points = [
            KeyPointOut(
                kp.text,
                found[kp.source][1],
                matrix_to(room_of[slug], kp.source),
                kp.source,
                language_of(bodies.get(kp.source, kp.text), settings.primary_language),
            )
            for kp in s.key_points(bodies)
            if kp.source not in removed and (review is None or (kp.source, kp.text) in seen_points)
        ]

    # figures: everyone, as numbers
    for room, (msgs, people, joins) in (await store.activity(start, end)).items():
        slug = slug_of_room.get(room)
        if slug is not None:
            t = topics[slug]
            t.messages, t.participants, t.new_members = msgs, people, joins

    ordered = [topics[slug] for slug, _ in sections]
    if ANNOUNCEMENTS in topics and topics[ANNOUNCEMENTS].empty:
        ordered = [t for t in ordered if t.slug != ANNOUNCEMENTS]
    return WeekDigest(week, start, end, ordered)
