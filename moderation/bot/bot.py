"""The moderation bot's core: it builds its parts, routes the events of the moderation
gateway (:mod:`forum.gateway`) to them and checks who may run a command.

Its parts: commands by subject in :mod:`.command_groups` (run as supervised background
tasks, so that a flood of commands never holds up the protections), the protections in
:mod:`.protections` and what they ask for in :mod:`.consequences`, policy lists in
:mod:`.policy`, reports and cases in :mod:`.reports` and :mod:`.cases`, timed mutes in
:mod:`.mutes`; space-wide actions in :mod:`.actions`.
"""

from __future__ import annotations

import asyncio
import html
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.bounded import LRUDict
from forum.errors import MatrixError
from forum.events import Invite, Membership, Message, Reaction, StateChange, Undecryptable
from forum.i18n import I18n
from forum.matrix import server_of
from forum.settings import ModerationSection, Settings
from forum.signals import REPORT, Signals
from forum.storage.models import utcnow
from forum.tasks import TaskSupervisor

from .actions import Actions
from .cases import CaseDesk
from .commands import Invocation, UsageError, parse_args, registry
from .consequences import DryRun, DryRunSwitch, Enforcement
from .locks import RoomLocks
from .management import ManagementRoom
from .mutes import MuteTimer
from .policy import PolicyLists
from .protections import (
    BannedWords,
    Flood,
    JoinWave,
    MentionSpam,
    MessageGuard,
    NewMemberLinks,
)
from .reporters import Reporters
from .reports import Reports
from .repositories import FirstJoins, State
from .sanctions import Sanctions
from .strikes import SimulatedStrikes, StrikeLadder
from .tuning import Tuning

if TYPE_CHECKING:
    from forum.context import Clock, Registrations, Rooms
    from forum.gateway import Gateway
    from moderation.antispam import AntispamListener

log = logging.getLogger(__name__)

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
PENDING_COMMAND = "command:"  # State key prefix of commands not finished yet
#: timed mutes are looked at every minute at least: stale after five without a pass
MUTES_STALE = 300.0


@dataclass(kw_only=True, eq=False)
class ModerationBot:
    """The moderation bot (the moderation gateway's account); :meth:`start` reads its saved
    state and registers its handlers and background tasks."""

    settings: Settings
    gateway: Gateway
    sessionmaker: async_sessionmaker[AsyncSession]
    forum_rooms: Rooms
    tasks: TaskSupervisor
    signals: Signals
    clock: Clock = utcnow
    register: Registrations | None = None
    """The service's registrations: join requests waiting (``!pending``) and the language
    each person chose, from the membership bot (``None``: neither is known)."""
    antispam: AntispamListener | None = None
    """The spam checker's listener (:mod:`moderation.antispam`), when it runs."""

    def __post_init__(self) -> None:
        """Build the bot's parts."""
        settings, gateway, sessionmaker = self.settings, self.gateway, self.sessionmaker
        rooms, tasks, clock = self.forum_rooms, self.tasks, self.clock
        self.actions = actions = Actions(
            settings=settings,
            gateway=gateway,
            sessionmaker=sessionmaker,
            forum_rooms=rooms,
            clock=clock,
        )
        self.i18n = I18n(settings.forum.languages, locale_dir=LOCALE_DIR)
        self.lang = settings.primary_language
        self.t = self.i18n.gettext(self.lang)
        self.prefix = settings.bots.command_prefix
        self.management = ManagementRoom(
            settings=settings, gateway=gateway, forum_rooms=rooms, t=self.t
        )
        self.tuning = Tuning(settings.moderation)
        self.sanctions = Sanctions(actions=actions, settings=settings, t=self.t, clock=clock)
        self.locks = RoomLocks(actions=actions, settings=settings, sessionmaker=sessionmaker)
        strikes = StrikeLadder(tuning=self.tuning, sessionmaker=sessionmaker, clock=clock)
        self.consequences = DryRunSwitch(
            Enforcement(
                self.management, actions, sanctions=self.sanctions, strikes=strikes,
                locks=self.locks, tasks=tasks, sessionmaker=sessionmaker,
            ),
            DryRun(self.management, actions, strikes=SimulatedStrikes(strikes)),
            on=settings.moderation.dry_run,
        )  # fmt: skip
        protections = [
            BannedWords(self.tuning),
            MentionSpam(self.tuning),
            NewMemberLinks(self.tuning, sessionmaker=sessionmaker, clock=clock),
            Flood(self.tuning),
        ]
        self.guard = MessageGuard(
            protections, actions=actions, consequences=self.consequences, gettext=self.t
        )
        self.join_wave = JoinWave(self.tuning, locks=self.locks, consequences=self.consequences)
        self.policy_lists = PolicyLists(
            gateway=gateway, actions=actions, sessionmaker=sessionmaker,
            management=self.management, consequences=self.consequences,
            policy_room=rooms["policy"], subscriptions=list(settings.moderation.policy_lists),
            t=self.t,
        )  # fmt: skip
        self.reporters = Reporters(
            gateway=gateway, actions=actions, i18n=self.i18n, tuning=self.tuning,
            language_of=self.register.language_of if self.register else None,
        )  # fmt: skip
        self.cases = CaseDesk(
            gateway=gateway, sessionmaker=sessionmaker, actions=actions,
            sanctions=self.sanctions, management=self.management, reporters=self.reporters,
        )  # fmt: skip
        self.reports = Reports(
            gateway=gateway, sessionmaker=sessionmaker, forum_rooms=rooms, cases=self.cases,
            reporters=self.reporters, tuning=self.tuning, prefix=self.prefix, t=self.t,
        )  # fmt: skip
        self.mute_timer = MuteTimer(
            actions=actions, sessionmaker=sessionmaker, management=self.management, clock=clock
        )
        self.command_slots = asyncio.Semaphore(8)
        self.processed_messages = 0
        self.commands_started: dict[str, None] = {}  # event ids, oldest first
        self.seen_joined: LRUDict[str, None] = LRUDict()  # first joins already written

    @property
    def cfg(self) -> ModerationSection:
        """The ``[moderation]`` settings in force (tests and benchmarks may replace them)."""
        return self.tuning.current

    @cfg.setter
    def cfg(self, value: ModerationSection) -> None:
        self.tuning.current = value

    @property
    def dry_run(self) -> bool:
        """Whether protections and policy rules only report."""
        return self.consequences.on

    # --- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        async with self.sessionmaker() as s:
            saved = await State(s).get("dry_run")
        if saved is not None:
            self.consequences.on = bool(saved.get("on"))
        await self.policy_lists.load_own_rules()
        await self.actions.reapply_mutes()
        await self.locks.reapply_locks()
        await self._resume_commands()
        self.signals.connect(REPORT, self.reports.from_text)
        gateway = self.gateway
        gateway.on(Message, self.on_message)
        gateway.on(Reaction, self.cases.on_reaction)
        gateway.on(Membership, self.on_membership)
        gateway.on(StateChange, self.on_state, include_own=True)
        gateway.on(Invite, self.on_invite)
        self.tasks.every(
            "moderation:mutes", self.mute_timer.step, critical=True, stale_after=MUTES_STALE
        )
        self.tasks.start("moderation:subscriptions", self.policy_lists.subscribe_all())
        self.tasks.every("moderation:admin-reports", self.reports.poll_admin_reports_once)

    # --- routing ----------------------------------------------------------------------
    async def on_message(self, ev: Message) -> None:
        if ev.room_id == self.management.room_id:
            await self._management_message(ev)
            return
        if self.policy_lists.is_list_room(ev.room_id):
            return
        if ev.room_id in self.forum_rooms.forum_ids:
            self.processed_messages += 1
            if self.reports.is_report(ev):
                await self.reports.from_reply(ev)
                return
            await self.guard.protect(ev)
            return
        if await self.accepts_dm_from(ev.sender):
            await self.reports.from_dm(ev)

    async def accepts_dm_from(self, user_id: str) -> bool:
        """Whether the bot talks with ``user_id`` in a direct chat: people of this
        homeserver and members of the forum rooms; not anyone from anywhere."""
        if server_of(user_id) == self.settings.server_name:
            return True
        return user_id in await self.actions.members()

    async def answers_unreadable(self, ev: Undecryptable) -> bool:
        """The bot explains an unreadable message to those it talks with (not to the
        other bot nor to ignored accounts)."""
        if ev.sender in self.settings.ignored_user_ids:
            return False
        return ev.room_id == self.management.room_id or await self.accepts_dm_from(ev.sender)

    async def on_invite(self, inv: Invite) -> None:
        if not inv.is_direct:
            return
        try:
            if not await self.accepts_dm_from(inv.sender):
                log.info("declined a direct chat from %s (not a member, not local)", inv.sender)
                await self.gateway.leave(inv.room_id)
                return
            await self.gateway.join(inv.room_id, via=[server_of(inv.sender)])
        except MatrixError as exc:
            log.info("could not answer the invitation of %s: %s", inv.sender, exc)

    async def _management_message(self, ev: Message) -> None:
        """A command runs in the background; another bot's command is left to it; an
        unknown one is answered with the closest command."""
        head = registry.head(ev.body, self.prefix)
        if head is None or ev.event_id in self.commands_started:
            return
        if ev.sender in self.settings.ignored_user_ids:
            return  # the other bot (and ignored accounts) are never answered
        command = registry.find(head)
        if command is None:
            await self._unknown(ev, head)
        elif command.handler is not None:
            await self._remember_command(ev)
            self._start_command(ev)

    async def _unknown(self, ev: Message, head: str) -> None:
        t, prefix = self.t, self.prefix
        text = t("Unknown command: {cmd}.").format(cmd=prefix + head)
        closest = registry.closest(head)
        if closest is not None:
            text += " " + t("Did you mean {cmd}?").format(cmd=prefix + closest.name)
        text += " " + t("Every command: {help}.").format(help=prefix + "help")
        try:
            await self.management.say(text, html.escape(text), reply_to=ev.event_id)
        except MatrixError as exc:
            log.warning("could not answer an unknown command: %s", exc)

    async def on_state(self, ev: StateChange) -> None:
        if ev.type == "m.room.power_levels":
            self.actions.forget_power_levels(ev.room_id)
            return
        await self.policy_lists.on_state(ev)

    # --- commands ---------------------------------------------------------------------
    async def _remember_command(self, ev: Message) -> None:
        """Store a command before its event counts as handled: a command that a crash
        or a stop interrupted runs again at the next start (its actions are idempotent)."""
        async with self.sessionmaker() as s, s.begin():
            await State(s).set(
                PENDING_COMMAND + ev.event_id,
                {"sender": ev.sender, "body": ev.body, "ts": ev.origin_server_ts},
            )

    async def _resume_commands(self) -> None:
        async with self.sessionmaker() as s:
            pending = await State(s).with_prefix(PENDING_COMMAND)
        for key, saved in pending.items():
            event_id = key.removeprefix(PENDING_COMMAND)
            body, sender = str(saved.get("body", "")), str(saved.get("sender", ""))
            log.info("resuming command %s from %s after a restart", event_id, sender)
            ev = Message(
                room_id=self.management.room_id, event_id=event_id, sender=sender,
                type="m.room.message", origin_server_ts=int(saved.get("ts") or 0),
                content={"body": body}, raw={}, msgtype="m.text", body=body,
            )  # fmt: skip
            self._start_command(ev)

    def _start_command(self, ev: Message) -> None:
        # A command resumed at start and then replayed by the sync runs once.
        self.commands_started[ev.event_id] = None
        while len(self.commands_started) > 1000:
            del self.commands_started[next(iter(self.commands_started))]
        self.tasks.start(f"moderation:command:{ev.event_id}", self._command(ev))

    async def _command(self, ev: Message) -> None:
        try:
            await self._run_command(ev)
        except asyncio.CancelledError:
            raise  # stopped: stays pending, runs again at the next start
        except Exception:
            log.exception("command %s failed", ev.event_id)
        async with self.sessionmaker() as s, s.begin():
            await State(s).delete(PENDING_COMMAND + ev.event_id)

    async def _run_command(self, ev: Message) -> None:
        async with self.command_slots:
            split = registry.split(ev.body, self.prefix)
            if split is None or split[0].handler is None:
                return
            command, tokens = split
            handler = split[0].handler
            inv = Invocation(ev.sender, ev.event_id, command)
            t = self.t
            try:
                # Kept in step with the room: a power-level change clears it (on_state).
                level = (await self.actions.power_levels(self.management.room_id)).level(ev.sender)
            except MatrixError:
                log.exception("cannot read the management room's power levels")
                return
            needed = (
                self.settings.power_levels.moderator if command.power is None else command.power
            )
            if level < needed:
                await self.management.reply(
                    inv,
                    t("Refused: {cmd} needs power level {need} here; {user} has {have}.").format(
                        cmd=self.prefix + command.name,
                        need=needed,
                        user=ev.sender,
                        have=int(level) if level != float("inf") else "∞",
                    ),
                )
                await self.actions.audit(
                    actor=ev.sender,
                    action="refused",
                    target=command.name,
                    event_id=ev.event_id,
                    reason="power level",
                )
                return
            try:
                values = parse_args(command, tokens)
            except UsageError as exc:
                await self.management.reply(
                    inv,
                    t("Usage: {usage} ({problem})").format(
                        usage=command.usage(self.prefix, t),
                        problem=exc.explain(t),
                    ),
                )
                return
            try:
                await handler(self, inv, **values)
            except MatrixError as exc:
                log.warning("command %s failed: %s", command.name, exc)
                await self.management.reply(
                    inv, t("The command failed: {error}").format(error=str(exc))
                )

    # --- joins: first-join times, join waves, policy rules ---------------------------
    async def on_membership(self, ev: Membership) -> None:
        if ev.room_id not in self.forum_rooms.forum_ids:
            return
        if ev.membership != "join" or ev.prev_membership == "join":
            return
        user = ev.target
        if user not in self.seen_joined:  # one write per person, not per room
            async with self.sessionmaker() as s, s.begin():
                await FirstJoins(s).record(user, self.clock())
            self.seen_joined[user] = None
        if await self.actions.is_exempt(user, ev.room_id):
            return
        if await self.policy_lists.ban_on_join(user, ev.event_id):
            return
        await self.join_wave.joined_event(ev)
