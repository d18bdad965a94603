"""What the digest holds about one person, for the membership bot's ``!mes-donnees`` and
``!statut`` (a provider registered on the service's registrations: the membership bot
never reads the digest's tables), and the withdrawal of one permission to quote
(``PERMISSION_WITHDRAWN``; withdrawing them all is the collector's erasure, an outbox
item of ``ERASE_PERSON_KIND`` the membership bot writes with the withdrawal)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bridge.repositories import DigestStore, StoredMessage
from bridge.site import DigestSite
from bridge.weeks import week_of
from forum.context import HeldPermission, PersonalData
from forum.matrix import matrix_to
from forum.settings import Settings

log = logging.getLogger(__name__)

#: stored messages listed in the readable summary (all of them are in the file)
LISTED = 10
EXCERPT = 80


def excerpt(text: str, limit: int = EXCERPT) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


class PersonalDigest:
    """The digest's part of a person's data, and the withdrawal of one permission."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        site: DigestSite,
        week_url: Callable[[str, str], str],
        on_change: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.site = site
        self.week_url = week_url
        self.on_change = on_change

    async def __call__(self, user_id: str, lang: str) -> PersonalData:
        async with self.sessionmaker() as s:
            store = DigestStore(s)
            permissions = await store.permissions_of(user_id)
            messages = await store.messages_of(user_id)
            published = set(await store.weeks())
        mine = {m.event_id: m for m in messages}
        quotes = await self._published(mine, published, lang)
        t = self.site.gettext(lang)

        held: list[HeldPermission] = []
        lines = [t("Messages stored for the digest: {n}.").format(n=len(messages))]
        for m in messages[-LISTED:]:
            lines.append(f"{m.ts.date().isoformat()}: “{excerpt(m.body)}”")
        if len(messages) > LISTED:
            lines.append(t("… and {n} more, in the file.").format(n=len(messages) - LISTED))
        for p in permissions:
            link = matrix_to(p.room_id, p.target)
            if p.granted:
                stored = mine.get(p.target)
                about = excerpt(stored.body) if stored else link
                held.append(HeldPermission(p.target, about))
                lines.append(t("You allowed us to quote: “{quote}”").format(quote=about))
            elif p.granted is False:
                lines.append(t("You refused to let us quote a message: {link}").format(link=link))
            else:
                lines.append(
                    t("A question about one of your messages waits for your answer: {link}")
                    .format(link=link)
                )  # fmt: skip
        for q in quotes:
            lines.append(
                t("Quoted in the digest of week {week}: “{quote}” {url}").format(
                    week=q["week"], quote=excerpt(q["text"]), url=q["url"]
                )
            )
        data = {
            "quote_permissions": [
                {
                    "event_id": p.target,
                    "room_id": p.room_id,
                    "link": matrix_to(p.room_id, p.target),
                    "granted": p.granted,
                    "asked_at": p.asked_at.isoformat(),
                    "answered_at": p.answered_at.isoformat() if p.answered_at else None,
                }
                for p in permissions
            ],
            "stored_messages": [_message(m) for m in messages],
            "published_quotes": quotes,
        }
        return PersonalData("digest", data, t("Public digest"), tuple(lines), tuple(held))

    async def _published(
        self, mine: dict[str, StoredMessage], published: set[str], lang: str
    ) -> list[dict[str, Any]]:
        """The person's words on the published weeks' pages (highlights, key points)."""
        tz = self.settings.digest.timezone
        weeks = sorted({week_of(m.ts, tz) for m in mine.values()} & published)
        out: list[dict[str, Any]] = []
        for week in weeks:
            digest = await self.site.week(week)
            for topic in digest.topics:
                for kind, items in (
                    ("highlight", topic.highlights),
                    ("key_point", topic.key_points),
                ):
                    for item in items:
                        if item.event_id in mine:
                            out.append(
                                {
                                    "event_id": item.event_id,
                                    "week": week,
                                    "kind": kind,
                                    "text": item.text,
                                    "url": self.week_url(lang, week),
                                }
                            )
        return out

    async def withdraw(self, user_id: str, key: str, **_: Any) -> None:
        """``PERMISSION_WITHDRAWN``: the person withdrew their permission to quote ``key``."""
        async with self.sessionmaker() as s, s.begin():
            done = await DigestStore(s).withdraw_quote(key, user_id)
        if done:
            log.info("digest: a permission to quote was withdrawn")
            self.on_change()


def _message(m: StoredMessage) -> dict[str, Any]:
    return {
        "event_id": m.event_id,
        "room_id": m.room_id,
        "link": matrix_to(m.room_id, m.event_id),
        "topic": m.topic,
        "display_name": m.display_name,
        "body": m.body,
        "html": m.html,
        "ts": m.ts.isoformat(),
        "edited": m.edited,
        "basis": m.basis,
    }
