"""What every part of the membership bot shares: its settings and tunables, the rooms, the
two gateways, the per-person locks, the translated texts, the charter cache, and the few
actions all parts use (send a notice, ask a question, read and update a person, mute)."""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.bounded import LockTable
from forum.context import Rooms
from forum.errors import MatrixError
from forum.gateway import Gateway
from forum.i18n import I18n
from forum.settings import Settings
from forum.signals import ERASE_PERSON_KIND
from forum.storage import Outbox, OutboxWorker, utcnow

from ..powers import Powers
from .models import PersonRow
from .repositories import People
from .text import Charter, load_charter

LOCALE_DIR = Path(__file__).resolve().parent / "locale"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """Tunables of the bot (tests shorten the intervals)."""

    deadline_poll_seconds: float = 30.0
    entry_concurrency: int = 8
    """People whose entry (opening the DM) is handled at the same time."""
    max_chars: int = 4000
    flood_limit: int = 10
    flood_window_seconds: float = 60.0


@dataclass(eq=False)
class Shared:
    """The state and helpers the parts of the bot (entry, conversation, commands, approval,
    re-consent, leaving, outbox executors) have in common; built once by the bot."""

    settings: Settings
    config_dir: Path
    membership_gateway: Gateway
    moderation_gateway: Gateway
    sessionmaker: async_sessionmaker[AsyncSession]
    rooms: Rooms
    outbox: OutboxWorker
    options: Options
    i18n: I18n = field(init=False)
    prefix: str = field(init=False)
    _locks: LockTable = field(init=False, default_factory=LockTable)
    _charters: dict[tuple[int, str], Charter] = field(init=False, default_factory=dict)
    powers: Powers = field(init=False)

    def __post_init__(self) -> None:
        self.powers = Powers(self.moderation_gateway.powers, self.settings.power_levels.moderator)
        self.i18n = I18n(self.settings.forum.languages, locale_dir=LOCALE_DIR)
        self.prefix = self.settings.bots.command_prefix

    def lock(self, user_id: str) -> asyncio.Lock:
        """One flow step at a time per person."""
        return self._locks(user_id)

    def ignored(self, user_id: str) -> bool:
        return user_id in self.settings.ignored_user_ids

    @property
    def forum_rooms(self) -> list[str]:
        return self.rooms.forum_ids

    @property
    def management(self) -> str | None:
        return self.rooms.get("management")

    def lang_of(self, person: PersonRow | None) -> str:
        if person and person.lang in self.settings.forum.languages:
            return str(person.lang)
        return self.settings.primary_language

    def t(self, lang: str, msgid: str, **kw: Any) -> str:
        """The text of ``msgid`` (:mod:`.messages`) in ``lang``, its placeholders filled."""
        text = self.i18n.gettext(lang)(msgid)
        return text.format(**kw) if kw else text

    @property
    def forum_name(self) -> str:
        return self.settings.text(self.settings.forum.name)

    def forum_name_in(self, lang: str) -> str:
        return self.settings.text(self.settings.forum.name, lang)

    def charter(self, lang: str, version: int | None = None) -> Charter:
        """The charter text (read once per version and language, then cached)."""
        key = (version or self.settings.membership.charter.version, lang)
        cached = self._charters.get(key)
        if cached is None:
            cached = self._charters[key] = load_charter(
                self.settings.charter_dir(self.config_dir),
                key[0],
                lang,
                self.settings.primary_language,
            )
        return cached

    async def say(
        self, room_id: str, text: str, html_body: str | None = None, *, txn_id: str | None = None
    ) -> str:
        """A notice with an HTML form (``text`` escaped when no HTML is given); ``txn_id``
        makes sending it again after a crash show it once (see ``send_event``)."""
        if html_body is None:
            html_body = html.escape(text).replace("\n", "<br>")
        return await self.membership_gateway.send_text(room_id, text, html_body, txn_id=txn_id)

    async def ask(
        self,
        room_id: str,
        text: str,
        html_body: str | None = None,
        *,
        of: Iterable[str],
        reply_to: str | None = None,
        txn_id: str | None = None,
    ) -> str:
        """A question for the people ``of``: an ``m.text`` naming them in ``m.mentions``,
        so that it notifies them (Element's default push rule ``.m.rule.suppress_notices``
        silences notices, which stay for what only informs: :meth:`say`)."""
        if html_body is None:
            html_body = html.escape(text).replace("\n", "<br>")
        return await self.membership_gateway.send_text(
            room_id,
            text,
            html_body,
            notice=False,
            mentions=list(of),
            reply_to=reply_to,
            txn_id=txn_id,
        )

    async def offer(self, room_id: str, event_id: str, keys: Iterable[str]) -> None:
        """Put the reactions ``keys`` on the question ``event_id``: a tap on one (the same
        key, sent by the person's client) answers. The bot's own reactions are never
        answers (its gateway skips its own events). A failure loses no answer: the question
        is asked already, and a reply or any reaction still answers it."""
        for key in keys:
            try:
                await self.membership_gateway.react(room_id, event_id, key)
            except MatrixError as exc:
                log.warning("could not react %s to a question in %s: %s", key, room_id, exc)
                return

    async def ask_charter(
        self, room_id: str, intro: str, charter: Charter, *, of: str, txn_id: str | None = None
    ) -> str:
        """``intro``, then the charter (its Markdown rendered in the HTML form), asked of
        ``of``."""
        return await self.ask(
            room_id,
            f"{intro}\n\n{charter.text}",
            f"<p>{html.escape(intro)}</p>\n{charter.html}",
            of=[of],
            txn_id=txn_id,
        )

    async def person(self, user_id: str) -> PersonRow | None:
        async with self.sessionmaker() as s:
            return await People(s).get(user_id)

    async def update_person(self, user_id: str, *, touch: bool = True, **values: Any) -> None:
        """Set ``values`` on the person's row; ``touch=False`` keeps its ``updated_at``
        (recording a question's event id is not a change of the person's state: the
        questions' replay-safe transaction ids are derived from that moment)."""
        async with self.sessionmaker() as s, s.begin():
            row = await People(s).get(user_id)
            if row is None:
                return
            for k, v in values.items():
                setattr(row, k, v)
            if touch:
                row.updated_at = utcnow()

    async def add_erasure(self, session: AsyncSession, user_id: str) -> None:
        """In the caller's transaction (a withdrawal, a leaving): the erasure of every
        stored word of ``user_id``, carried out by whichever feature keeps words (the
        digest registers the executor of :data:`~forum.signals.ERASE_PERSON_KIND`) and
        retried until done. Nothing is written when no feature keeps words."""
        if ERASE_PERSON_KIND in self.outbox.executors:
            await Outbox(session).add(ERASE_PERSON_KIND, {"user_id": user_id})

    def notify_outbox(self) -> None:
        """Items were committed to the outbox: the worker runs them now."""
        self.outbox.notify()

    async def set_muted(self, user_id: str, muted: bool) -> None:
        """Level -1 in each forum room where members post (events_default 0), or back;
        through the moderation account's one power-level editor, which the moderation bot
        edits through too (:mod:`moderation.powers`)."""
        for room in self.forum_rooms:
            await self.powers.set_muted(user_id, muted, room, open_rooms_only=True)
