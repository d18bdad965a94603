"""The moderation bot's core: it builds its parts (the one place that does) and routes
the events of the moderation gateway (:mod:`forum.gateway`) to them.

Its parts: the command runtime in :mod:`.runtime` (stored, resumed, power-checked, run as
supervised background tasks) and the commands by subject in :mod:`.command_groups`; the
protections in :mod:`.protections` (pure decisions) and what they ask for in
:mod:`.consequences` (enforcement or dry run); sanctions in :mod:`.sanctions`; policy
lists in :mod:`.policy` over the index of :mod:`moderation.policy_index`; reports and
cases in :mod:`.reports` and :mod:`.cases`; timed mutes in :mod:`.mutes`; space-wide
actions in :mod:`.actions`, whose power-level edits go through the one editor both bots
share (:mod:`moderation.powers`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from .command_groups.context import CommandContext
from .commands import registry as registry  # the commands' registry, as before
from .consequences import DryRun, DryRunSwitch, Enforcement
from .locks import RoomLocks
from .management import ManagementRoom
from .mutes import MuteTimer
from .policy import PolicyLists
from .protections import JoinWave, MessageGuard, default_protections
from .reporters import Reporters
from .reports import Reports
from .repositories import FirstJoins, State
from .runtime import PENDING_COMMAND as PENDING_COMMAND  # (its home is .runtime)
from .runtime import CommandRuntime
from .sanctions import Sanctions
from .strikes import SimulatedStrikes, StrikeLadder
from .tuning import Tuning

if TYPE_CHECKING:
    from forum.context import Clock, Registrations, Rooms
    from forum.gateway import Gateway

log = logging.getLogger(__name__)

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
#: timed mutes are looked at every minute at least: stale after five without a pass
MUTES_STALE = 300.0
#: a stranger's direct chat is declined this long after its invitation arrived (the
#: inviting server must have stored its invitation by then: see :meth:`ModerationBot.on_invite`)
DECLINE_AFTER_SECONDS = 5.0


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
    antispam: Any = None
    """The spam checker's listener (:class:`moderation.antispam.AntispamListener`), when
    it runs; not typed here, since the spam checker is built on the bot (no import loop)."""

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
        self.guard = MessageGuard(
            default_protections(), tuning=self.tuning, actions=actions,
            consequences=self.consequences, sessionmaker=sessionmaker, gettext=self.t,
            clock=clock,
        )  # fmt: skip
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
        self.command_context = CommandContext(
            t=self.t, prefix=self.prefix, server_name=settings.server_name,
            sessionmaker=sessionmaker, forum_rooms=rooms, management=self.management,
            actions=actions, sanctions=self.sanctions, locks=self.locks, cases=self.cases,
            policy_lists=self.policy_lists, consequences=self.consequences,
            tuning=self.tuning, register=self.register,
        )  # fmt: skip
        self.runtime = CommandRuntime(context=self.command_context, settings=settings, tasks=tasks)
        self.processed_messages = 0
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
        await self.runtime.resume()
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
            await self.runtime.on_message(ev)
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
                log.info("declining a direct chat from %s (not a member, not local)", inv.sender)
                # The inviting server stores its invitation only after ours has signed it.
                # Declined at once, our server's make_leave can reach it first: refused
                # (403), Synapse then declines locally only and the inviter is never told
                # (seen under load in the test suite). The decline waits a moment, in the
                # background (a flood of such invitations holds up no other event).
                self.tasks.start(f"moderation:decline:{inv.room_id}", self._decline(inv.room_id))
                return
            await self.gateway.join(inv.room_id, via=[server_of(inv.sender)])
        except MatrixError as exc:
            log.info("could not answer the invitation of %s: %s", inv.sender, exc)

    async def _decline(self, room_id: str) -> None:
        await asyncio.sleep(DECLINE_AFTER_SECONDS)
        try:
            await self.gateway.leave(room_id)
        except MatrixError as exc:
            log.info("could not decline the direct chat %s: %s", room_id, exc)

    async def on_state(self, ev: StateChange) -> None:
        if ev.type == "m.room.power_levels":
            self.actions.forget_power_levels(ev.room_id)
            return
        await self.policy_lists.on_state(ev)

    # --- joins: first-join times, join waves, policy rules ---------------------------
    async def on_membership(self, ev: Membership) -> None:
        if ev.room_id not in self.forum_rooms.forum_ids:
            return
        if ev.membership == "knock" and ev.prev_membership != "knock":
            # newcomers arrive by knocking on the Space: a wave of knocks is a join wave
            if not await self.actions.is_exempt(ev.target, ev.room_id):
                await self.join_wave.joined_event(ev)
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
        if await self.policy_lists.ban_on_join(user, ev.room_id, ev.event_id):
            return
        await self.join_wave.joined_event(ev)
