"""The weekly digest model, built from the store (never from frozen HTML).

:func:`build_week` reads one week's stored messages, highlights and counters and maps
them to a :class:`WeekDigest` with the pure :class:`~bridge.summarize.Summariser`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bridge.sanitize import clean_html
from bridge.store import DigestStore, Highlight, StoredMessage
from bridge.summarize import Summariser
from bridge.weeks import week_bounds
from forum.matrix import matrix_to
from forum.settings import Settings

ANNOUNCEMENTS = "announcements"


@dataclass(frozen=True)
class Quote:
    event_id: str
    author: str
    text: str
    html: str
    url: str
    ts: datetime
    heading: str | None = None


@dataclass(frozen=True)
class KeyPointOut:
    text: str
    author: str
    url: str
    event_id: str


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


def quote_of(m: StoredMessage, heading: str | None = None) -> Quote:
    html = clean_html(m.html) if m.html else ""
    return Quote(
        event_id=m.event_id,
        author=m.display_name,
        text=m.body,
        html=html,
        url=matrix_to(m.room_id, m.event_id),
        ts=m.ts,
        heading=heading,
    )


def topic_rooms(settings: Settings, room_ids: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """(slug, localized names) of every digest section with a known room, in order."""
    out = [(t.slug, dict(t.name)) for t in settings.topics if f"topic:{t.slug}" in room_ids]
    if "announcements" in room_ids:
        out.append((ANNOUNCEMENTS, dict(settings.rooms.announcements.name)))
    return out


async def build_week(
    session: AsyncSession, settings: Settings, room_ids: dict[str, str], week: str
) -> WeekDigest:
    start, end = week_bounds(week, settings.digest.timezone)
    store = DigestStore(session)
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
        if m is None or slug is None:
            continue
        topics[slug].highlights.append(quote_of(m, h.heading))

    # key points: two streaming passes over the consented messages
    count = settings.digest.key_points
    summarisers: dict[str, Summariser[tuple[str, str]]] = {
        slug: Summariser(count) for slug in topics
    }
    reactions = await store.reaction_counts(start, end)
    # One read of the light rows (precomputed keywords): frequencies first, then scores
    # from the rows kept in memory; only the few candidates' bodies are read afterwards.
    # Kept per topic as (event_id, keywords, words): a few tens of MB at 100,000 rows.
    kept: dict[str, list[tuple[str, str, int]]] = {slug: [] for slug in summarisers}
    async for event_id, topic, kw, words in store.stream_keywords(start, end):
        bucket = kept.get(topic)
        if bucket is not None:
            summarisers[topic].observe_keywords(kw)
            bucket.append((event_id, kw, words))
    for slug, bucket in kept.items():
        s, room = summarisers[slug], room_of[slug]
        for event_id, kw, words in bucket:
            if event_id not in hl_ids:
                s.offer_keywords(kw, words, (room, event_id), reactions.get(event_id, 0))
        bucket.clear()
    wanted = [c[1] for s in summarisers.values() for c in s.candidate_sources()]
    found = await store.bodies(wanted)
    for slug, s in summarisers.items():
        texts = {c: found.get(c[1], ("", ""))[0] for c in s.candidate_sources()}
        topics[slug].key_points = [
            KeyPointOut(
                kp.text,
                found.get(kp.source[1], ("", ""))[1],
                matrix_to(kp.source[0], kp.source[1]),
                kp.source[1],
            )
            for kp in s.key_points(texts)
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
