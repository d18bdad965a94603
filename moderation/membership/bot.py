"""The membership bot: three doors (knock, lobby join, DM) to one consent flow.

Flow per person (state in :mod:`.models`, consent in :mod:`forum.consent`):
language (asked only when it cannot be guessed) -> charter (reply or ✅) -> publication
question (yes/no, 👍/👎) -> invites through the outbox (``approval = "auto"``) or a card
in the management room (``approval = "moderators"``). DM commands let the person see
and change their consents, leave, and download their data.

Test-only hook: when the environment variable ``FORUM_MEMBERSHIP_CRASH_AFTER_CONSENT``
is ``1``, the process kills itself with SIGKILL right after committing the consent
record and its outbox items, before any invite is sent (used by the crash test).
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from forum.consent import ConsentRecords, ConsentRow
from forum.context import Feature, ServiceContext
from forum.errors import Forbidden, MatrixError
from forum.events import Invite, Membership, Message, Reaction
from forum.i18n import I18n
from forum.matrix import server_of
from forum.signals import MEMBER_LEFT, PUBLICATION_GRANTED, PUBLICATION_WITHDRAWN, REPORT
from forum.storage import Outbox, utcnow

from . import messages as msg
from . import models as m
from .models import People, PersonRow
from .text import (
    ACCEPT_REACTIONS,
    NO_REACTIONS,
    YES_REACTIONS,
    Charter,
    emoji_key,
    guess_language,
    is_acceptance,
    load_charter,
    normalise,
    yes_no,
)

log = logging.getLogger(__name__)

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
CRASH_ENV = "FORUM_MEMBERSHIP_CRASH_AFTER_CONSENT"

INVITE = "membership.invite"
KICK = "membership.kick"
NOTIFY = "membership.notify"


@dataclass(frozen=True)
class Options:
    """Tunables of the bot (tests shorten the intervals)."""

    deadline_poll_seconds: float = 30.0
    entry_concurrency: int = 8
    """People whose entry (opening the DM) is handled at the same time."""
    max_chars: int = 4000
    flood_limit: int = 10
    flood_window_seconds: float = 60.0


@dataclass(frozen=True)
class Command:
    names: tuple[str, ...]
    usage: str
    help: str
    run: Callable[[PersonRow, str, Message], Awaitable[None]]


class MembershipBot:
    def __init__(self, ctx: ServiceContext, options: Options | None = None) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.gw = ctx.membership_gateway
        self.mod = ctx.moderation_gateway
        self.options = options or Options()
        self.i18n = I18n(self.settings.forum.languages, locale_dir=LOCALE_DIR)
        self.prefix = self.settings.bots.command_prefix
        self._locks: dict[str, asyncio.Lock] = {}
        self._entries = asyncio.Semaphore(self.options.entry_concurrency)
        self._charters: dict[tuple[int, str], Charter] = {}
        self.commands = [
            Command(("aide", "help"), "", msg.HELP_HELP, self.cmd_help),
            Command(("statut", "status"), "", msg.HELP_STATUS, self.cmd_status),
            Command(
                ("publication",),
                " oui|non",
                msg.HELP_PUBLICATION,
                self.cmd_publication,
            ),
            Command(
                ("retirer", "withdraw"),
                "",
                msg.HELP_WITHDRAW,
                self.cmd_withdraw,
            ),
            Command(
                ("quitter", "leave"),
                "",
                msg.HELP_LEAVE,
                self.cmd_leave,
            ),
            Command(
                ("mes-donnees", "my-data"),
                "",
                msg.HELP_MY_DATA,
                self.cmd_my_data,
            ),
            Command(("signaler", "report"), " …", msg.HELP_REPORT, self.cmd_report),
        ]

    # --- wiring -------------------------------------------------------------------------
    def register(self) -> None:
        self.charter(self.settings.primary_language)  # a missing charter fails at start-up
        self.gw.on(Membership, self.on_membership)
        self.gw.on(Invite, self.on_invite)
        self.gw.on(Message, self.on_message)
        self.gw.on(Reaction, self.on_reaction)
        self.ctx.register.outbox_executor(INVITE, self.exec_invite)
        self.ctx.register.outbox_executor(KICK, self.exec_kick)
        self.ctx.register.outbox_executor(NOTIFY, self.exec_notify)
        self.ctx.tasks.start("membership:charter", self.charter_task())
        self.ctx.tasks.start("membership:pending-knocks", self.recover_pending())

    # --- helpers ------------------------------------------------------------------------
    def lock(self, user_id: str) -> asyncio.Lock:
        return self._locks.setdefault(user_id, asyncio.Lock())

    def ignored(self, user_id: str) -> bool:
        return user_id in self.settings.ignored_user_ids

    @property
    def forum_rooms(self) -> list[str]:
        return self.ctx.rooms.forum_ids

    @property
    def management(self) -> str | None:
        return self.ctx.rooms.get("management")

    def lang_of(self, person: PersonRow | None) -> str:
        if person and person.lang in self.settings.forum.languages:
            return str(person.lang)
        return self.settings.primary_language

    def t(self, lang: str, msgid: str, **kw: Any) -> str:
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
                self.settings.charter_dir(self.ctx.config_dir),
                key[0],
                lang,
                self.settings.primary_language,
            )
        return cached

    async def say(self, room_id: str, text: str, html_body: str | None = None) -> str:
        """A notice with an HTML form (``text`` escaped when no HTML is given)."""
        if html_body is None:
            html_body = html.escape(text).replace("\n", "<br>")
        return await self.gw.send_text(room_id, text, html_body)

    async def session_person(self, user_id: str) -> PersonRow | None:
        async with self.ctx.db.sessionmaker() as s:
            return await People(s).get(user_id)

    async def update_person(self, user_id: str, **values: Any) -> None:
        async with self.ctx.db.sessionmaker() as s, s.begin():
            row = await People(s).get(user_id)
            if row is None:
                return
            for k, v in values.items():
                setattr(row, k, v)
            row.updated_at = utcnow()

    # --- the three doors ----------------------------------------------------------------
    async def on_membership(self, ev: Membership) -> None:
        if self.ignored(ev.target):
            return
        if ev.room_id not in self.forum_rooms:
            if ev.membership == "join":
                await self.on_dm_join(ev)
            return
        if ev.membership == "knock":
            self.start_entry(ev.target, "knock", text=ev.reason, knock_room=ev.room_id)
        elif (
            ev.membership == "join"
            and ev.room_id == self.ctx.rooms.get("lobby")
            and ev.prev_membership != "join"
        ):
            self.start_entry(ev.target, "lobby")
        elif ev.membership in {"leave", "ban"} and ev.prev_membership in {"join", "invite"}:
            await self.check_left_everything(ev.target)

    async def on_invite(self, inv: Invite) -> None:
        sender = inv.sender
        if not sender or self.ignored(sender):
            return
        if not inv.is_direct:
            log.info("declining a non-direct invite to %s from %s", inv.room_id, sender)
            await self._leave_quietly(inv.room_id)
            return
        async with self.lock(sender):
            person = await self.session_person(sender)
            if (
                person
                and person.dm_room_id
                and person.dm_room_id != inv.room_id
                and await self._still_in(person.dm_room_id, sender)
            ):
                await self._leave_quietly(inv.room_id)
                lang = self.lang_of(person)
                await self.say(
                    person.dm_room_id,
                    self.t(lang, msg.ALREADY_DM),
                )
                return
            await self.gw.join(inv.room_id, via=[server_of(sender)] if server_of(sender) else [])
            if person is None:
                async with self.ctx.db.sessionmaker() as s, s.begin():
                    row = await People(s).create(sender, "dm", None)
                    row.dm_room_id = inv.room_id
                await self.ask_language(sender, inv.room_id)
                return
            if person.dm_room_id and person.dm_room_id != inv.room_id:
                # They left the old DM (closed the chat): the new one replaces it, and
                # they find where they were (the pending question, or the commands).
                await self.update_person(sender, dm_room_id=inv.room_id)
                await self._leave_quietly(person.dm_room_id)
                if person.step in {m.LANGUAGE, m.CHARTER}:
                    await self.update_person(sender, charter_event_id=None, question_event_id=None)
                    await self.greet(sender)
                elif person.step == m.PUBLICATION:
                    await self.ask_publication(sender, inv.room_id, self.lang_of(person))
                else:
                    await self.say(inv.room_id, self.help_text(self.lang_of(person)))
            elif not person.dm_room_id:
                await self.update_person(sender, dm_room_id=inv.room_id)
                await self.restart_or_continue(person.user_id)

    async def _still_in(self, room_id: str, user_id: str) -> bool:
        """Whether ``user_id`` is still joined (or invited) in ``room_id``; on an error,
        assume so (the old DM is kept)."""
        try:
            membership = await self.gw.membership(room_id, user_id)
        except MatrixError as exc:
            log.warning("cannot read the membership of %s in %s: %s", user_id, room_id, exc)
            return True
        return membership in {"join", "invite"}

    async def _leave_quietly(self, room_id: str) -> None:
        try:
            await self.gw.leave(room_id)
        except MatrixError as exc:
            log.warning("could not leave %s: %s", room_id, exc)

    def start_entry(
        self,
        user_id: str,
        door: str,
        *,
        text: str | None = None,
        knock_room: str | None = None,
        recovering: bool = False,
    ) -> None:
        """Handle an entry in the background, several people at once (one at a time per
        person: :meth:`enter` holds the person's lock), so that a crowd of knocks does not
        wait in a line. A knock lost to a crash is found again by :meth:`recover_pending`.
        """

        async def run() -> None:
            async with self._entries:
                await self.enter(
                    user_id, door, text=text, knock_room=knock_room, recovering=recovering
                )

        self.ctx.tasks.start(f"membership:enter:{user_id}", run())

    async def recover_pending(self) -> None:
        """At start-up: knocks still pending on forum rooms, and people whose DM was never
        opened, get their flow (each exactly once: :meth:`enter` is idempotent)."""
        for room in self.forum_rooms:
            try:
                knocks = await self.gw.members(room, membership="knock")
            except MatrixError as exc:
                log.warning("cannot list the knocks on %s: %s", room, exc)
                continue
            for user_id, content in knocks.items():
                if not self.ignored(user_id):
                    reason = content.get("reason")
                    self.start_entry(
                        user_id,
                        "knock",
                        text=reason if isinstance(reason, str) else None,
                        knock_room=room,
                        recovering=True,
                    )
        async with self.ctx.db.sessionmaker() as s:
            unopened = [
                p.user_id
                for p in await People(s).all()
                if not p.dm_room_id and p.step in {m.LANGUAGE, m.CHARTER}
            ]
        for user_id in unopened:
            self.start_entry(user_id, "restart", recovering=True)

    async def enter(
        self,
        user_id: str,
        door: str,
        *,
        text: str | None = None,
        knock_room: str | None = None,
        recovering: bool = False,
    ) -> None:
        """One flow per person, whatever the door: opens the DM once, sends the charter.

        ``recovering``: found at start-up rather than received; a member's pending knock
        then waits for the invites already queued for them."""
        async with self.lock(user_id):
            async with self.ctx.db.sessionmaker() as s, s.begin():
                people = People(s)
                person = await people.get(user_id)
                if person is None:
                    lang = guess_language(text, self.settings.forum.languages)
                    person = await people.create(user_id, door, lang)
                if knock_room and knock_room not in (person.knocked_rooms or []):
                    person.knocked_rooms = [*(person.knocked_rooms or []), knock_room]
                step, has_dm = person.step, bool(person.dm_room_id)
                status = await ConsentRecords(s).status(user_id)
            if step == m.MEMBER and status.charter_version is not None:
                if (
                    knock_room and not recovering
                ):  # a member knocking again (after leaving one room)...
                    state = await self.gw.get_state_event(knock_room, "m.room.member", user_id)
                    if state and state.get("membership") == "knock":  # ...not a replay
                        await self.queue_invites(user_id, [knock_room])
                return
            if has_dm and step not in {m.LEFT, m.DENIED}:
                return  # the flow is already under way: one DM, nothing twice
            await self.restart_or_continue(user_id)

    async def restart_or_continue(self, user_id: str) -> None:
        """Open the DM if needed; once the person is in it, ask the language or send the
        charter (a remote server does not backfill what was sent before the join)."""
        person = await self.session_person(user_id)
        if person is None:
            return
        room = person.dm_room_id
        if not room:
            room = await self.open_dm(user_id)
        step = m.CHARTER if person.lang else m.LANGUAGE
        await self.update_person(
            user_id, dm_room_id=room, step=step, charter_event_id=None, question_event_id=None
        )
        state = await self.gw.get_state_event(room, "m.room.member", user_id)
        if state and state.get("membership") == "join":
            await self.greet(user_id)

    async def greet(self, user_id: str) -> None:
        """Send what the person waits for in the DM, unless it was sent already."""
        person = await self.session_person(user_id)
        if person is None or not person.dm_room_id:
            return
        if person.step == m.CHARTER and not person.charter_event_id:
            await self.send_charter(user_id, person.dm_room_id, self.lang_of(person))
        elif person.step == m.LANGUAGE and not person.question_event_id:
            await self.ask_language(user_id, person.dm_room_id)

    async def on_dm_join(self, ev: Membership) -> None:
        async with self.ctx.db.sessionmaker() as s:
            person = await People(s).by_dm_room(ev.room_id)
        if person is None or person.user_id != ev.target:
            return
        async with self.lock(person.user_id):
            await self.greet(person.user_id)

    async def open_dm(self, user_id: str) -> str:
        """A DM with ``user_id``: reuse one recorded in ``m.direct`` (a crash between
        creating it and storing it must not open a second one), else create it."""
        direct = await self.gw.get_account_data("m.direct") or {}
        existing = [r for r in direct.get(user_id, []) if isinstance(r, str)]
        if existing:
            return existing[-1]
        return await self.gw.create_dm(user_id, name=self.forum_name)

    async def ask_language(self, user_id: str, room_id: str) -> None:
        langs = self.settings.forum.languages
        parts = [
            self.t(
                lang,
                msg.ASK_LANGUAGE,
                choices=", ".join(self.i18n.language_name(x) for x in langs),
            )
            for lang in langs
        ]
        event_id = await self.say(room_id, "\n\n".join(parts))
        await self.update_person(user_id, step=m.LANGUAGE, question_event_id=event_id)

    async def send_charter(self, user_id: str, room_id: str, lang: str) -> None:
        charter = self.charter(lang)
        intro = self.t(
            lang,
            msg.CHARTER_INTRO,
            forum=self.forum_name_in(lang),
            version=charter.version,
        )
        body = f"{intro}\n\n{charter.text}"
        html_body = f"<p>{html.escape(intro)}</p>\n{charter.html}"
        event_id = await self.say(room_id, body, html_body)
        await self.update_person(
            user_id,
            step=m.CHARTER,
            lang=lang,
            charter_event_id=event_id,
            charter_version=charter.version,
            question_event_id=None,
        )

    # --- DM messages and reactions --------------------------------------------------------
    async def on_message(self, ev: Message) -> None:
        if ev.room_id == self.management:
            await self.on_management_message(ev)
            return
        if self.ignored(ev.sender) or ev.msgtype == "m.notice":
            return
        async with self.ctx.db.sessionmaker() as s:
            person = await People(s).by_dm_room(ev.room_id)
        if person is None or person.user_id != ev.sender:
            return
        async with self.lock(person.user_id):
            await self._on_dm_message(person.user_id, ev)

    async def _throttled(self, user_id: str, size: int, sent_ms: int) -> str | None:
        """Count a message (at the time it was sent, so a backlog is judged fairly);
        returns "flood", "too-long", "quiet" (ignored) or None (ok)."""
        now = datetime.fromtimestamp(sent_ms / 1000, UTC) if sent_ms > 0 else utcnow()
        window = timedelta(seconds=self.options.flood_window_seconds)
        async with self.ctx.db.sessionmaker() as s, s.begin():
            row = await People(s).get(user_id)
            if row is None:
                return "quiet"
            if row.window_start is None or abs(now - row.window_start) > window:
                row.window_start, row.window_count, row.flood_noticed = now, 0, False
            row.window_count += 1
            if row.window_count > self.options.flood_limit:
                row.window_start = now  # ignored until quiet for a whole window
                if row.flood_noticed:
                    return "quiet"
                row.flood_noticed = True
                return "flood"
            if size > self.options.max_chars:
                return "too-long"
        return None

    async def _on_dm_message(self, user_id: str, ev: Message) -> None:
        async with self.ctx.db.sessionmaker() as s:
            replayed = await s.scalar(
                select(ConsentRow.id).where(ConsentRow.event_id == ev.event_id)
            )
            person = await People(s).get(user_id)
        if person is None:
            return
        lang = self.lang_of(person)
        room = ev.room_id
        if replayed is not None:
            if person.step == m.PUBLICATION and not person.question_event_id:
                await self.ask_publication(person.user_id, room, lang)
            return
        verdict = await self._throttled(user_id, len(ev.body), ev.origin_server_ts)
        if verdict == "quiet":
            return
        if verdict == "flood":
            await self.say(
                room,
                self.t(lang, msg.FLOOD),
            )
            return
        if verdict == "too-long":
            await self.say(
                room,
                self.t(
                    lang,
                    msg.TOO_LONG,
                    limit=self.options.max_chars,
                    prefix=self.prefix,
                ),
            )
            return
        body = ev.body.strip()
        if body.startswith(self.prefix):
            await self.run_command(person, body[len(self.prefix) :], ev)
        elif person.step == m.LANGUAGE:
            chosen = (
                guess_language(body, self.settings.forum.languages)
                or self.settings.primary_language
            )
            await self.send_charter(user_id, room, chosen)
        elif person.step == m.CHARTER:
            if is_acceptance(body):
                await self.accept_charter(user_id, "reply", ev.event_id)
            else:
                await self.say(
                    room,
                    self.t(
                        lang,
                        msg.CHARTER_REMINDER,
                        prefix=self.prefix,
                    ),
                )
        elif person.step == m.PUBLICATION:
            answer = yes_no(body)
            if answer is None:
                await self.say(
                    room,
                    self.t(
                        lang,
                        msg.PUBLICATION_REMINDER,
                    ),
                )
            else:
                await self.answer_publication(user_id, answer, "reply", ev.event_id)
        elif person.step == m.LEFT:
            await self.send_charter(user_id, room, lang)  # coming back
        elif person.reconsent_version and is_acceptance(body):
            await self.accept_reconsent(user_id, "reply", ev.event_id)
        elif await self.ctx.register.claimed(ev):
            return  # an answer to another feature's question (the digest's)
        else:
            await self.say(room, self.t(lang, msg.NOT_UNDERSTOOD) + "\n" + self.help_text(lang))

    async def on_reaction(self, ev: Reaction) -> None:
        if ev.room_id == self.management:
            await self.on_card_reaction(ev)
            return
        if self.ignored(ev.sender):
            return
        async with self.ctx.db.sessionmaker() as s:
            person = await People(s).by_dm_room(ev.room_id)
        if person is None or person.user_id != ev.sender:
            return
        key = emoji_key(ev.key)
        async with self.lock(person.user_id):
            person = await self.session_person(person.user_id)
            if person is None:
                return
            if person.step == m.CHARTER and ev.reacts_to == person.charter_event_id:
                if key in ACCEPT_REACTIONS:
                    await self.accept_charter(person.user_id, "reaction", ev.event_id)
            elif person.step == m.PUBLICATION and ev.reacts_to == person.question_event_id:
                if key in YES_REACTIONS or key in NO_REACTIONS:
                    await self.answer_publication(
                        person.user_id, key in YES_REACTIONS, "reaction", ev.event_id
                    )
            elif (
                person.reconsent_version
                and ev.reacts_to == person.reconsent_event_id
                and key in ACCEPT_REACTIONS
            ):
                await self.accept_reconsent(person.user_id, "reaction", ev.event_id)

    # --- consent ------------------------------------------------------------------------
    async def accept_charter(self, user_id: str, method: str, event_id: str) -> None:
        person = await self.session_person(user_id)
        if person is None or not person.dm_room_id:
            return
        lang = self.lang_of(person)
        charter = self.charter(lang, person.charter_version)
        async with self.ctx.db.sessionmaker() as s, s.begin():
            await record_charter(s, user_id, charter, method, event_id)
            row = await People(s).get(user_id)
            assert row is not None
            row.step, row.question_event_id, row.updated_at = m.PUBLICATION, None, utcnow()
        await self.ask_publication(user_id, person.dm_room_id, lang)

    async def ask_publication(self, user_id: str, room_id: str, lang: str) -> None:
        text = self.t(
            lang,
            msg.PUBLICATION_QUESTION,
            prefix=self.prefix,
        )
        event_id = await self.say(room_id, text)
        await self.update_person(user_id, question_event_id=event_id)

    async def answer_publication(
        self, user_id: str, granted: bool, method: str, event_id: str
    ) -> None:
        person = await self.session_person(user_id)
        if person is None or not person.dm_room_id:
            return
        lang = self.lang_of(person)
        room = person.dm_room_id
        auto = self.settings.membership.approval == "auto"
        async with self.ctx.db.sessionmaker() as s, s.begin():
            await ConsentRecords(s).add(
                user_id,
                "publication",
                granted,
                method=method,
                charter_version=person.charter_version,
                event_id=event_id,
            )
            row = await People(s).get(user_id)
            assert row is not None
            row.updated_at = utcnow()
            if auto:
                row.step = m.MEMBER
                row.entries += 1
                await self._queue_admission(s, row, lang)
            else:
                row.step = m.APPROVAL
                s.add(m.ApprovalRow(user_id=user_id, status="pending", created_at=utcnow()))
        if os.environ.get(CRASH_ENV) == "1":  # test-only: see the module docstring
            os.kill(os.getpid(), signal.SIGKILL)
        self._notify_outbox()
        if granted:
            await self.ctx.signals.emit(PUBLICATION_GRANTED, user_id=user_id)
        recorded = (
            self.t(lang, msg.PUBLICATION_YES) if granted else self.t(lang, msg.PUBLICATION_NO)
        )
        if auto:
            await self.say(room, recorded)
        else:
            await self.say(
                room,
                recorded
                + "\n"
                + self.t(
                    lang,
                    msg.WAITING_APPROVAL,
                ),
            )
            await self.post_card(user_id)

    async def _queue_admission(self, s: Any, row: PersonRow, lang: str) -> None:
        """Invites to every forum room, then a welcome in the DM (same transaction)."""
        outbox = Outbox(s)
        tag = f"{row.user_id}:v{row.charter_version}:{row.entries}"
        for room in self.forum_rooms:
            await outbox.add(
                INVITE, {"user_id": row.user_id, "room_id": room}, f"{INVITE}:{tag}:{room}"
            )
        text = self.t(
            lang,
            msg.WELCOME,
            forum=self.forum_name_in(lang),
            prefix=self.prefix,
        )
        await outbox.add(
            NOTIFY, {"room_id": row.dm_room_id, "body": text}, f"{NOTIFY}:welcome:{tag}"
        )

    async def queue_invites(self, user_id: str, rooms: list[str]) -> None:
        async with self.ctx.db.sessionmaker() as s, s.begin():
            outbox = Outbox(s)
            stamp = utcnow().isoformat()
            for room in rooms:
                await outbox.add(
                    INVITE,
                    {"user_id": user_id, "room_id": room},
                    f"{INVITE}:{user_id}:{room}:{stamp}",
                )
        self._notify_outbox()

    def _notify_outbox(self) -> None:
        self.ctx.outbox.notify()

    # --- outbox executors (idempotent) ----------------------------------------------------
    async def exec_invite(self, payload: dict[str, Any]) -> None:
        room, user = payload["room_id"], payload["user_id"]
        try:
            await self.gw.invite(room, user)
        except Forbidden:
            state = await self.gw.get_state_event(room, "m.room.member", user)
            if state and state.get("membership") in {"invite", "join"}:
                return  # done already (a replay after a crash)
            raise

    async def exec_kick(self, payload: dict[str, Any]) -> None:
        room, user = payload["room_id"], payload["user_id"]
        state = await self.mod.get_state_event(room, "m.room.member", user)
        if not state or state.get("membership") not in {"join", "invite", "knock"}:
            return
        await self.mod.kick(room, user, payload.get("reason") or None)

    async def exec_notify(self, payload: dict[str, Any]) -> None:
        await self.say(payload["room_id"], payload["body"])

    # --- moderator approval ----------------------------------------------------------------
    async def post_card(self, user_id: str) -> None:
        room = self.management
        if room is None:
            log.error("no management room: %s waits for approval", user_id)
            return
        lang = self.settings.primary_language
        text = self.t(
            lang,
            msg.CARD,
            user=user_id,
            prefix=self.prefix,
        )
        event_id = await self.say(room, text)
        async with self.ctx.db.sessionmaker() as s, s.begin():
            approval = await People(s).pending_approval(user_id)
            if approval is not None:
                approval.card_event_id = event_id

    async def is_moderator(self, user_id: str) -> bool:
        room = self.management
        if room is None:
            return False
        pl = await self.gw.power_levels(room)
        return pl.level(user_id) >= self.settings.power_levels.moderator

    async def on_management_message(self, ev: Message) -> None:
        body = ev.body.strip()
        if self.ignored(ev.sender) or not body.startswith(self.prefix):
            return
        parts = body[len(self.prefix) :].split(maxsplit=2)
        if not parts:
            return
        name = normalise(parts[0])
        if name not in {"approve", "approuver", "deny", "refuser"}:
            return  # another bot's command
        lang = self.settings.primary_language
        if not await self.is_moderator(ev.sender):
            await self.say(ev.room_id, self.t(lang, msg.ONLY_MODERATORS))
            return
        if len(parts) < 2 or not parts[1].startswith("@"):
            await self.say(
                ev.room_id,
                self.t(
                    lang,
                    msg.USAGE_DECIDE,
                    prefix=self.prefix,
                ),
            )
            return
        target = parts[1]
        reason = parts[2] if len(parts) > 2 else None
        if name in {"approve", "approuver"}:
            await self.decide(target, True, ev.sender, None)
        else:
            await self.decide(target, False, ev.sender, reason)

    async def on_card_reaction(self, ev: Reaction) -> None:
        key = emoji_key(ev.key)
        if self.ignored(ev.sender) or key not in {"✅", "❌"}:
            return
        async with self.ctx.db.sessionmaker() as s:
            approval = await People(s).approval_by_card(ev.reacts_to)
        if approval is None or approval.status != "pending":
            return
        if not await self.is_moderator(ev.sender):
            return
        await self.decide(approval.user_id, key == "✅", ev.sender, None)

    async def decide(self, user_id: str, approve: bool, moderator: str, reason: str | None) -> None:
        room = self.management
        lang_mod = self.settings.primary_language
        async with self.lock(user_id), self.ctx.db.sessionmaker() as s, s.begin():
            people = People(s)
            approval = await people.pending_approval(user_id)
            row = await people.get(user_id)
            if approval is None or row is None:
                found = False
            else:
                found = True
                lang = self.lang_of(row)
                approval.status = "approved" if approve else "denied"
                approval.decided_by, approval.reason = moderator, reason
                approval.decided_at = utcnow()
                row.updated_at = utcnow()
                if approve:
                    row.step = m.MEMBER
                    row.entries += 1
                    await self._queue_admission(s, row, lang)
                else:
                    row.step = m.DENIED
                    kick_reason = self.t(lang, msg.REQUEST_DECLINED)
                    if reason:
                        kick_reason += f": {reason}"
                    outbox = Outbox(s)
                    stamp = utcnow().isoformat()
                    for knocked in row.knocked_rooms or []:
                        await outbox.add(
                            KICK,
                            {"user_id": user_id, "room_id": knocked, "reason": kick_reason},
                            f"{KICK}:{user_id}:{knocked}:{stamp}",
                        )
                    text = self.t(
                        lang,
                        msg.DENIED,
                        forum=self.forum_name_in(lang),
                    )
                    if reason:
                        text += "\n" + self.t(lang, msg.REASON, reason=reason)
                    await outbox.add(
                        NOTIFY,
                        {"room_id": row.dm_room_id, "body": text},
                        f"{NOTIFY}:denied:{user_id}:{stamp}",
                    )
        self._notify_outbox()
        if room is None:
            return
        if not found:
            await self.say(room, self.t(lang_mod, msg.NO_PENDING, user=user_id))
        elif approve:
            await self.say(
                room,
                self.t(lang_mod, msg.APPROVED_BY, user=user_id, moderator=moderator),
            )
        else:
            await self.say(
                room,
                self.t(lang_mod, msg.DENIED_BY, user=user_id, moderator=moderator),
            )

    # --- DM commands ----------------------------------------------------------------------
    def help_text(self, lang: str) -> str:
        lines = [self.t(lang, msg.COMMANDS)]
        for cmd in self.commands:
            names = " / ".join(f"{self.prefix}{n}{cmd.usage}" for n in cmd.names)
            lines.append(f"• {names}: {self.t(lang, cmd.help)}")
        return "\n".join(lines)

    async def run_command(self, person: PersonRow, text: str, ev: Message) -> None:
        parts = text.split(maxsplit=1)
        name = normalise(parts[0]).replace(" ", "-") if parts else ""
        arg = parts[1].strip() if len(parts) > 1 else ""
        for cmd in self.commands:
            if name in cmd.names:
                await cmd.run(person, arg, ev)
                return
        lang = self.lang_of(person)
        await self.say(ev.room_id, self.t(lang, msg.UNKNOWN_COMMAND) + "\n" + self.help_text(lang))

    async def cmd_help(self, person: PersonRow, arg: str, ev: Message) -> None:
        await self.say(ev.room_id, self.help_text(self.lang_of(person)))

    async def cmd_status(self, person: PersonRow, arg: str, ev: Message) -> None:
        lang = self.lang_of(person)
        async with self.ctx.db.sessionmaker() as s:
            status = await ConsentRecords(s).status(person.user_id)
        charter = (
            self.t(lang, msg.STATUS_CHARTER, version=status.charter_version)
            if status.charter_version
            else self.t(lang, msg.STATUS_NO_CHARTER)
        )
        publication = (
            self.t(lang, msg.STATUS_PUB_YES)
            if status.publication
            else self.t(lang, msg.STATUS_PUB_NO)
        )
        member = (
            self.t(lang, msg.STATUS_MEMBER)
            if person.step == m.MEMBER
            else self.t(lang, msg.STATUS_NOT_MEMBER)
        )
        lines = [charter, publication, member]
        if person.reconsent_version:
            lines.append(
                self.t(
                    lang,
                    msg.STATUS_RECONSENT,
                    version=person.reconsent_version,
                )
            )
        await self.say(ev.room_id, "\n".join(lines))

    async def cmd_publication(self, person: PersonRow, arg: str, ev: Message) -> None:
        lang = self.lang_of(person)
        answer = yes_no(arg)
        if answer is None:
            await self.say(ev.room_id, self.t(lang, msg.USAGE_PUBLICATION, prefix=self.prefix))
            return
        if person.step == m.PUBLICATION:
            await self.answer_publication(person.user_id, answer, "command", ev.event_id)
            return
        async with self.ctx.db.sessionmaker() as s:
            status = await ConsentRecords(s).status(person.user_id)
        if status.charter_version is None:
            await self.say(ev.room_id, self.t(lang, msg.CHARTER_FIRST))
            return
        await self.set_publication(person, answer, "command", ev.event_id, status.publication)

    async def set_publication(
        self, person: PersonRow, granted: bool, method: str, event_id: str, before: bool
    ) -> None:
        lang = self.lang_of(person)
        async with self.ctx.db.sessionmaker() as s, s.begin():
            await ConsentRecords(s).add(
                person.user_id,
                "publication",
                granted,
                method=method,
                charter_version=person.charter_version,
                event_id=event_id,
            )
        if granted and not before:
            await self.ctx.signals.emit(PUBLICATION_GRANTED, user_id=person.user_id)
        if before and not granted:
            await self.ctx.signals.emit(PUBLICATION_WITHDRAWN, user_id=person.user_id)
        assert person.dm_room_id is not None
        await self.say(
            person.dm_room_id,
            self.t(lang, msg.PUBLICATION_YES) if granted else self.t(lang, msg.PUBLICATION_NO),
        )

    async def cmd_withdraw(self, person: PersonRow, arg: str, ev: Message) -> None:
        lang = self.lang_of(person)
        async with self.ctx.db.sessionmaker() as s:
            status = await ConsentRecords(s).status(person.user_id)
        if not status.publication:
            await self.say(
                ev.room_id,
                self.t(lang, msg.NOTHING_TO_WITHDRAW),
            )
            return
        await self.set_publication(person, False, "command", ev.event_id, True)

    async def cmd_leave(self, person: PersonRow, arg: str, ev: Message) -> None:
        lang = self.lang_of(person)
        await self.end_membership(person.user_id, "command", ev.event_id, kick=True)
        await self.say(
            ev.room_id,
            self.t(
                lang,
                msg.LEFT,
                forum=self.forum_name_in(lang),
            ),
        )

    async def cmd_report(self, person: PersonRow, arg: str, ev: Message) -> None:
        """Pass a report to the moderation bot (which opens a case for the moderators)."""
        await self.ctx.signals.emit(
            REPORT,
            reporter=person.user_id,
            body=ev.body,
            formatted_body=ev.formatted_body,
            event_id=ev.event_id,
        )
        await self.say(ev.room_id, self.t(self.lang_of(person), msg.REPORT_THANKS))

    async def cmd_my_data(self, person: PersonRow, arg: str, ev: Message) -> None:
        lang = self.lang_of(person)
        data = await self.export(person.user_id)
        raw = json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8")
        filename = "my-data.json" if lang != "fr" else "mes-donnees.json"
        mxc = await self.gw.upload(raw, "application/json", filename)
        await self.say(ev.room_id, self.t(lang, msg.MY_DATA))
        await self.gw.send_event(
            ev.room_id,
            "m.room.message",
            {
                "msgtype": "m.file",
                "body": filename,
                "filename": filename,
                "url": mxc,
                "info": {"mimetype": "application/json", "size": len(raw)},
            },
        )

    async def export(self, user_id: str) -> dict[str, Any]:
        return await export_person(self.ctx.db.sessionmaker, user_id)

    # --- leaving ---------------------------------------------------------------------------
    async def check_left_everything(self, user_id: str) -> None:
        person = await self.session_person(user_id)
        if person is None or person.step != m.MEMBER:
            return
        for room in self.forum_rooms:
            try:
                state = await self.gw.get_state_event(room, "m.room.member", user_id)
            except MatrixError as exc:
                log.warning("membership of %s in %s unknown: %s", user_id, room, exc)
                return
            if state and state.get("membership") in {"join", "invite", "knock"}:
                return
        async with self.lock(user_id):
            await self.end_membership(user_id, "left-rooms", None, kick=False)

    async def end_membership(
        self, user_id: str, method: str, event_id: str | None, *, kick: bool
    ) -> None:
        """Consent ended: publication withdrawn (if granted), charter ended, removed."""
        async with self.ctx.db.sessionmaker() as s, s.begin():
            records = ConsentRecords(s)
            status = await records.status(user_id)
            if status.publication:
                await records.add(user_id, "publication", False, method=method, event_id=event_id)
            if status.charter_version is not None:
                await records.add(
                    user_id,
                    "charter",
                    False,
                    method=method,
                    charter_version=status.charter_version,
                    event_id=event_id,
                )
            row = await People(s).get(user_id)
            was_muted = False
            if row is not None:
                was_muted = row.muted
                row.step, row.reconsent_version, row.grace_deadline = m.LEFT, None, None
                row.muted, row.updated_at = False, utcnow()
            if kick:
                outbox = Outbox(s)
                stamp = utcnow().isoformat()
                for room in self.forum_rooms:
                    await outbox.add(
                        KICK,
                        {"user_id": user_id, "room_id": room, "reason": method},
                        f"{KICK}:{user_id}:{room}:{stamp}",
                    )
        self._notify_outbox()
        if was_muted:
            await self.set_muted(user_id, False)
        if status.publication:
            await self.ctx.signals.emit(PUBLICATION_WITHDRAWN, user_id=user_id)
        await self.ctx.signals.emit(MEMBER_LEFT, user_id=user_id)

    # --- charter versions --------------------------------------------------------------------
    async def charter_task(self) -> None:
        async with self.ctx.db.sessionmaker() as s:
            muted = [p.user_id for p in await People(s).all() if p.muted]
        for user_id in muted:  # provisioning may have reconciled the power levels
            try:
                await self.set_muted(user_id, True)
            except MatrixError:
                log.exception("could not keep %s muted", user_id)
        await self.ask_reconsent()
        while True:
            await self.check_deadlines()
            await asyncio.sleep(self.options.deadline_poll_seconds)

    async def ask_reconsent(self) -> None:
        current = self.settings.membership.charter.version
        grace = timedelta(days=self.settings.membership.charter.grace_days)
        async with self.ctx.db.sessionmaker() as s:
            statuses = await ConsentRecords(s).statuses()
            people = {p.user_id: p for p in await People(s).all()}
        for user_id, status in sorted(statuses.items()):
            person = people.get(user_id)
            if (
                person is None
                or person.step != m.MEMBER
                or not person.dm_room_id
                or status.charter_version is None
                or status.charter_version >= current
                or person.reconsent_version == current
            ):
                continue
            async with self.lock(user_id):
                lang = self.lang_of(person)
                charter = self.charter(lang, current)
                days = self.settings.membership.charter.grace_days
                consequence = (
                    self.t(lang, msg.CONSEQUENCE_MUTE)
                    if self.settings.membership.charter.on_expiry == "mute"
                    else self.t(lang, msg.CONSEQUENCE_REMOVE)
                )
                intro = self.t(
                    lang,
                    msg.RECONSENT,
                    version=current,
                    days=days,
                    consequence=consequence,
                )
                event_id = await self.say(
                    person.dm_room_id,
                    f"{intro}\n\n{charter.text}",
                    f"<p>{html.escape(intro)}</p>\n{charter.html}",
                )
                await self.update_person(
                    user_id,
                    reconsent_version=current,
                    reconsent_event_id=event_id,
                    grace_deadline=utcnow() + grace,
                )

    async def check_deadlines(self) -> None:
        async with self.ctx.db.sessionmaker() as s:
            due = await People(s).due_deadlines(utcnow())
        for person in due:
            lang = self.lang_of(person)
            try:
                if self.settings.membership.charter.on_expiry == "mute":
                    await self.set_muted(person.user_id, True)
                    await self.update_person(person.user_id, muted=True, grace_deadline=None)
                    if person.dm_room_id:
                        await self.say(
                            person.dm_room_id,
                            self.t(
                                lang,
                                msg.MUTED,
                            ),
                        )
                else:
                    async with self.lock(person.user_id):
                        await self.end_membership(
                            person.user_id, "charter-expired", None, kick=True
                        )
                    if person.dm_room_id:
                        await self.say(
                            person.dm_room_id,
                            self.t(
                                lang,
                                msg.REMOVED,
                            ),
                        )
            except MatrixError:
                log.exception("could not apply the charter deadline of %s", person.user_id)

    async def set_muted(self, user_id: str, muted: bool) -> None:
        """Level -1 in each forum room where members post (events_default 0), or back."""
        for room in self.forum_rooms:
            content = await self.mod.get_state_event(room, "m.room.power_levels")
            if content is None or content.get("events_default", 0) != 0:
                continue
            users = dict(content.get("users") or {})
            if muted and users.get(user_id) != -1:
                users[user_id] = -1
            elif not muted and users.get(user_id) == -1:
                users.pop(user_id)
            else:
                continue
            await self.mod.put_state(room, "m.room.power_levels", {**content, "users": users})

    async def accept_reconsent(self, user_id: str, method: str, event_id: str) -> None:
        person = await self.session_person(user_id)
        if person is None or not person.reconsent_version or not person.dm_room_id:
            return
        lang = self.lang_of(person)
        charter = self.charter(lang, person.reconsent_version)
        async with self.ctx.db.sessionmaker() as s, s.begin():
            await record_charter(s, user_id, charter, method, event_id)
            row = await People(s).get(user_id)
            assert row is not None
            row.charter_version, row.reconsent_version = charter.version, None
            row.reconsent_event_id, row.grace_deadline = None, None
            was_muted, row.muted, row.updated_at = row.muted, False, utcnow()
        if was_muted:
            await self.set_muted(user_id, False)
        await self.say(
            person.dm_room_id,
            self.t(
                lang,
                msg.RECONSENT_THANKS,
                version=charter.version,
            ),
        )


async def record_charter(
    s: AsyncSession, user_id: str, charter: Charter, method: str, event_id: str
) -> None:
    """The append-only record of an accepted charter version (its text's SHA-256)."""
    await ConsentRecords(s).add(
        user_id,
        "charter",
        True,
        method=method,
        charter_version=charter.version,
        text_sha256=charter.sha256,
        event_id=event_id,
    )


async def export_person(sessionmaker: Any, user_id: str) -> dict[str, Any]:
    """Everything stored about one person (flow state, approvals, consent history)."""
    async with sessionmaker() as s:
        people = People(s)
        person = await people.get(user_id)
        approvals = await people.approvals(user_id)
        records = await ConsentRecords(s).history(user_id)
        status = await ConsentRecords(s).status(user_id)
    return {
        "user_id": user_id,
        "exported_at": utcnow().isoformat(),
        "status": {
            "charter_version": status.charter_version,
            "publication": status.publication,
            "step": person.step if person else None,
        },
        "membership": m.person_dict(person) if person else None,
        "approvals": [m.approval_dict(a) for a in approvals],
        "consent_records": [
            {
                "scope": r.scope,
                "granted": r.granted,
                "charter_version": r.charter_version,
                "text_sha256": r.text_sha256,
                "method": r.method,
                "event_id": r.event_id,
                "created_at": r.created_at.isoformat(),
            }
            for r in records
        ],
    }


def feature(**options: Any) -> Feature:
    """The membership bot as a feature of the service, with tuned :class:`Options` (tests
    shorten intervals)."""
    opts = Options(**options)

    async def setup(ctx: ServiceContext) -> MembershipBot:
        bot = MembershipBot(ctx, opts)
        bot.register()
        return bot

    from .cli import add_commands

    return Feature("membership", setup, add_commands)
