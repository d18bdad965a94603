"""The membership bot: three doors (knock, lobby join, DM) to one consent flow.

Flow per person (state in :mod:`.models`, consent in :mod:`forum.consent`):
language (asked only when it cannot be guessed) -> charter (reply or ✅) -> publication
question (yes/no, 👍/👎) -> invites through the outbox (``approval = "auto"``) or a card
in the management room (``approval = "moderators"``). DM commands let the person see
and change their consents, leave, and download their data.

The flow itself is one pure function, :func:`.flow.advance`; :mod:`.effects` derives a
person's state from what is stored and carries out what the flow returns. This module
builds the bot's parts and routes the events to them: :mod:`.entry` (the doors and the
DM), :mod:`.consent` (the conversation), :mod:`.commands` (the members'
commands), :mod:`.approval` (moderators), :mod:`.reconsent` (new charter versions),
:mod:`.leaving`, :mod:`.outbox` (invites, kicks, notices) and :mod:`.export`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.consent import ConsentRow
from forum.context import (
    ApprovalRequest,
    DmClaim,
    Feature,
    PendingQuestions,
    Rooms,
    ServiceContext,
)
from forum.events import Invite, Membership, Message, Reaction, Undecryptable
from forum.gateway import Gateway
from forum.matrix import strip_reply_fallback
from forum.settings import Settings
from forum.signals import Signals
from forum.storage import Executor, OutboxWorker, utcnow
from forum.tasks import TaskSupervisor
from forum.unreadable import UnreadableAnswer

from . import messages
from .approval import Approval
from .commands import MemberCommands, PersonalDataOf, nothing_held
from .consent import Conversation, record_charter
from .effects import FlowRunner
from .entry import Arrival, Entry
from .export import export_person
from .leaving import Leaving
from .models import CHARTER, PENDING, PUBLICATION, ApprovalRow, PersonRow
from .outbox import INVITE, KICK, NOTIFY, Executors
from .reconsent import Reconsent
from .repositories import People
from .shared import Options, Shared
from .text import (
    ACCEPT_REACTIONS,
    NO_REACTIONS,
    YES_REACTIONS,
    emoji_key,
    is_acceptance,
    yes_no,
)

__all__ = [
    "INVITE",
    "KICK",
    "NOTIFY",
    "MembershipBot",
    "Options",
    "export_person",
    "feature",
    "record_charter",
]


class MembershipBot:
    def __init__(
        self,
        *,
        settings: Settings,
        config_dir: Path,
        membership_gateway: Gateway,
        moderation_gateway: Gateway,
        sessionmaker: async_sessionmaker[AsyncSession],
        rooms: Rooms,
        tasks: TaskSupervisor,
        signals: Signals,
        outbox: OutboxWorker,
        dm_claimed: DmClaim,
        options: Options | None = None,
        personal_data: PersonalDataOf = nothing_held,
        pending_questions: PendingQuestions | None = None,
    ) -> None:
        self.shared = Shared(
            settings=settings,
            config_dir=config_dir,
            membership_gateway=membership_gateway,
            moderation_gateway=moderation_gateway,
            sessionmaker=sessionmaker,
            rooms=rooms,
            outbox=outbox,
            options=options or Options(),
        )
        self.tasks = tasks
        self.dm_claimed = dm_claimed
        self.pending_questions: PendingQuestions = pending_questions or self.own_questions
        self.approval = Approval(self.shared)
        self.entry = Entry(self.shared, tasks)
        self.runner = FlowRunner(
            self.shared,
            signals,
            post_card=self.approval.post_card,
            help_text=lambda lang: self.commands.help_text(lang),
            open_dm=self.entry.open_dm,
            dm_joined=self.entry.joined,
        )
        self.approval.runner = self.entry.runner = self.runner
        self.conversation = Conversation(self.shared, self.runner)
        self.leaving = Leaving(self.shared, self.runner)
        self.reconsent = Reconsent(self.shared, self.runner)
        self.commands = MemberCommands(self.shared, self.conversation, signals, personal_data)
        self.executors = Executors(self.shared)

    @property
    def outbox_executors(self) -> dict[str, Executor]:
        """The executors of the outbox items the bot queues, by kind."""
        return self.executors.by_kind()

    def register(self) -> None:
        """Handle the membership gateway's events and start the background work."""
        shared = self.shared
        shared.charter(shared.settings.primary_language)  # a missing charter fails at start-up
        gateway = shared.membership_gateway
        gateway.on(Membership, self.on_membership)
        gateway.on(Invite, self.entry.on_invite)
        # messages and reactions in the forum's rooms are the moderation bot's (this bot
        # answers in DMs and on the management room's cards): not even looked at
        public = shared.forum_rooms
        gateway.on(Message, self.on_message, skip_rooms=public)
        gateway.on(Reaction, self.on_reaction, skip_rooms=public)
        self.tasks.start("membership:keep-muted", self.reconsent.start())
        poll = shared.options.deadline_poll_seconds
        self.tasks.every(
            "membership:charter",
            self.reconsent.step,
            critical=True,
            stale_after=max(300.0, 10 * poll),
        )
        self.tasks.start("membership:pending-knocks", self.entry.recover_pending())

    async def on_membership(self, ev: Membership) -> None:
        shared = self.shared
        if shared.ignored(ev.target):
            return
        if ev.room_id not in shared.forum_rooms:
            if ev.membership == "join":
                await self.entry.on_dm_join(ev)
            return
        if ev.membership == "knock":
            self.entry.start(Arrival(ev.target, "knock", ev.reason, knock_room=ev.room_id))
        elif (
            ev.membership == "join"
            and ev.room_id == shared.rooms.get("lobby")
            and ev.prev_membership != "join"
        ):
            self.entry.start(Arrival(ev.target, "lobby"))
        elif ev.membership in {"leave", "ban"} and ev.prev_membership in {"join", "invite"}:
            await self.leaving.check_left_everything(ev.target)

    async def _dm_person(self, room_id: str, sender: str) -> PersonRow | None:
        """The person whose DM ``room_id`` is, when ``sender`` is that person."""
        if self.shared.ignored(sender):
            return None
        async with self.shared.sessionmaker() as s:
            person = await People(s).by_dm_room(room_id)
        return person if person is not None and person.user_id == sender else None

    async def on_message(self, ev: Message) -> None:
        if ev.room_id == self.shared.management:
            await self.approval.on_management_message(ev)
            return
        if ev.msgtype == "m.notice":
            return
        person = await self._dm_person(ev.room_id, ev.sender)
        if person is None:
            await self._third_person(ev.room_id, ev.sender)
            return
        async with self.shared.lock(person.user_id):
            await self._on_dm_message(person.user_id, ev)

    async def _third_person(self, room_id: str, sender: str) -> None:
        """Someone writes (or answers) in another person's DM with the bot: nothing of it
        is recorded for the DM's owner, and they are told the conversation is personal (in
        their language if the bot knows it, else the owner's)."""
        shared = self.shared
        if shared.ignored(sender) or sender == shared.membership_gateway.user_id:
            return
        async with shared.sessionmaker() as s:
            people = People(s)
            owner = await people.by_dm_room(room_id)
            if owner is None or owner.user_id == sender:
                return
            known = await people.get(sender)
        lang = shared.lang_of(known if known is not None and known.lang else owner)
        text = shared.t(
            lang, messages.PERSONAL_DM, owner=owner.user_id, forum=shared.forum_name_in(lang)
        )
        await shared.say(room_id, text)

    async def _throttled(self, user_id: str, size: int, sent_ms: int) -> str | None:
        """Count a message (at the time it was sent, so a backlog is judged fairly);
        returns "flood", "too-long", "quiet" (ignored) or None (ok)."""
        options = self.shared.options
        now = datetime.fromtimestamp(sent_ms / 1000, UTC) if sent_ms > 0 else utcnow()
        window = timedelta(seconds=options.flood_window_seconds)
        async with self.shared.sessionmaker() as s, s.begin():
            row = await People(s).get(user_id)
            if row is None:
                return "quiet"
            if row.window_start is None or abs(now - row.window_start) > window:
                row.window_start, row.window_count, row.flood_noticed = now, 0, False
            row.window_count += 1
            if row.window_count > options.flood_limit:
                row.window_start = now  # ignored until quiet for a whole window
                if row.flood_noticed:
                    return "quiet"
                row.flood_noticed = True
                return "flood"
            if size > options.max_chars:
                return "too-long"
        return None

    async def _on_dm_message(self, user_id: str, ev: Message) -> None:
        shared = self.shared
        async with shared.sessionmaker() as s:
            replayed = await s.scalar(
                select(ConsentRow.id).where(ConsentRow.event_id == ev.event_id)
            )
            person = await People(s).get(user_id)
        if person is None:
            return
        lang = shared.lang_of(person)
        room = ev.room_id
        if replayed is not None:
            if person.step == PUBLICATION and not person.question_event_id:
                await self.runner.ask_publication(person.user_id, room, lang)
            return
        verdict = await self._throttled(user_id, len(ev.body), ev.origin_server_ts)
        if verdict == "quiet":
            return
        if verdict == "flood":
            await shared.say(room, shared.t(lang, messages.FLOOD))
            return
        if verdict == "too-long":
            limit = shared.options.max_chars
            await shared.say(
                room, shared.t(lang, messages.TOO_LONG, limit=limit, prefix=shared.prefix)
            )
            return
        if ev.replaces:
            # An edit is never an answer nor a command: what was recorded stays.
            await shared.say(room, shared.t(lang, messages.EDIT_NOT_ANSWER, prefix=shared.prefix))
            return
        body = ev.body.strip()
        if body.startswith(shared.prefix):
            await self.commands.run(person, body[len(shared.prefix) :], ev)
            return
        text = strip_reply_fallback(body).strip()
        if await self._bind(person, text, ev):
            return
        if not (
            await self.conversation.on_reply(person, text, ev)
            or await self.dm_claimed(ev)  # an answer to another feature's (the digest's)
        ):
            await shared.say(room, self.commands.with_help(lang, messages.NOT_UNDERSTOOD))

    async def answers_unreadable(self, ev: Undecryptable) -> bool:
        """The bot explains an unreadable message in its direct chats (not another bot's)."""
        shared = self.shared
        return not shared.ignored(ev.sender) and ev.room_id not in shared.forum_rooms

    async def pending_approvals(self) -> list[ApprovalRequest]:
        """The join requests waiting for a moderator (the moderation bot's ``!pending``)."""
        async with self.shared.sessionmaker() as s:
            rows = await s.scalars(
                select(ApprovalRow).where(ApprovalRow.status == PENDING).order_by(ApprovalRow.id)
            )
            return [ApprovalRequest(r.user_id, r.created_at) for r in rows]

    async def language_of(self, user_id: str) -> str | None:
        """The language ``user_id`` chose in the welcome conversation, if any."""
        async with self.shared.sessionmaker() as s:
            person = await s.get(PersonRow, user_id)
            return person.lang if person is not None else None

    async def own_questions(self, user_id: str, lang: str) -> list[str]:
        """The bot's questions waiting for ``user_id``'s answer, one line each in ``lang``
        (registered with :meth:`forum.context.Registrations.pending_questions`)."""
        shared = self.shared
        person = await shared.person(user_id)
        if person is None:
            return []
        lines: list[str] = []
        if person.step == CHARTER:
            lines.append(shared.t(lang, messages.PENDING_CHARTER, version=person.charter_version))
        elif person.step == PUBLICATION and person.question_event_id:
            lines.append(shared.t(lang, messages.PENDING_PUBLICATION))
        if person.reconsent_version:
            lines.append(
                shared.t(lang, messages.PENDING_RECONSENT, version=person.reconsent_version)
            )
        return lines

    async def _bind(self, person: PersonRow, text: str, ev: Message) -> bool:
        """Bind an answer to one question: by its reply relation, or, for a bare answer,
        only when exactly one question waits across every feature (otherwise ask which one
        and record nothing). True when handled here; False: the usual flow goes on."""
        shared, room = self.shared, ev.room_id
        lang = shared.lang_of(person)
        answer_like = is_acceptance(text) or yes_no(text) is not None
        if ev.reply_to:
            state = await self.runner.state(person.user_id)
            own = {state.question, state.reconsent_question} | state.asked
            if ev.reply_to in own:
                if not await self.conversation.on_reply(person, text, ev):
                    await shared.say(room, self.commands.with_help(lang, messages.NOT_UNDERSTOOD))
                return True
            if await self.dm_claimed(ev):
                return True  # another feature's question, still open: it answers
            if answer_like:
                await shared.say(room, shared.t(lang, messages.NO_SUCH_QUESTION))
                return True
            return False
        if not answer_like:
            return False
        pending = await self.pending_questions(person.user_id, lang)
        if len(pending) <= 1:
            return False
        listed = "\n".join(f"- {line}" for line in pending)
        await shared.say(room, shared.t(lang, messages.WHICH_QUESTION, questions=listed))
        return True

    async def on_reaction(self, ev: Reaction) -> None:
        if ev.room_id == self.shared.management:
            await self.approval.on_card_reaction(ev)
            return
        key = emoji_key(ev.key)
        person = await self._dm_person(ev.room_id, ev.sender)
        if person is None:
            if key in ACCEPT_REACTIONS | YES_REACTIONS | NO_REACTIONS:
                await self._third_person(ev.room_id, ev.sender)
            return
        async with self.shared.lock(person.user_id):
            person = await self.shared.person(person.user_id)
            if person is None:
                return
            await self.conversation.on_reaction(person, key, ev)


def feature(**options: Any) -> Feature:
    """The membership bot as a feature of the service, with tuned :class:`Options` (tests
    shorten intervals)."""
    opts = Options(**options)

    async def setup(ctx: ServiceContext) -> MembershipBot:
        bot = MembershipBot(
            settings=ctx.settings,
            config_dir=ctx.config_dir,
            membership_gateway=ctx.membership_gateway,
            moderation_gateway=ctx.moderation_gateway,
            sessionmaker=ctx.db.sessionmaker,
            rooms=ctx.rooms,
            tasks=ctx.tasks,
            signals=ctx.signals,
            outbox=ctx.outbox,
            dm_claimed=ctx.register.claimed,
            options=opts,
            personal_data=ctx.register.personal_data_of,
            pending_questions=ctx.register.pending_questions_of,
        )
        ctx.register.pending_questions(bot.own_questions)
        ctx.register.pending_approvals(bot.pending_approvals)
        ctx.register.person_language(bot.language_of)
        for kind, executor in bot.outbox_executors.items():
            ctx.register.outbox_executor(kind, executor)
        bot.register()
        UnreadableAnswer(
            ctx.membership_gateway,
            ctx.i18n,
            language_of=bot.language_of,
            answers=bot.answers_unreadable,
        ).register()
        return bot

    from .cli import add_commands

    return Feature("membership", setup, add_commands)
