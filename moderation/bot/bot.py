"""The moderation bot: commands in the management room, protections in forum rooms,
policy-list publishing and subscriptions, reports as case cards.

Handlers run on the moderation gateway (:mod:`forum.gateway`); commands run as supervised
background tasks so that a flood of commands never holds up the protections.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.errors import MatrixError
from forum.events import Invite, Membership, Message, Reaction, StateChange
from forum.i18n import I18n
from forum.matrix import is_user_id, server_of
from forum.settings import ModerationSection, Settings
from forum.signals import REPORT, Signals
from forum.storage.models import utcnow
from forum.tasks import TaskSupervisor

from .actions import Actions
from .cases import CASE_ACTIONS, CASE_ACTIONS_FR, CaseDesk
from .commands import Arg, Invocation, UsageError, _, parse_args, registry
from .consequences import DryRun, DryRunSwitch, Enforcement
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
from .reports import Reports
from .sanctions import Sanctions
from .store import Audit, Cases, FirstJoins, Mutes, State
from .strikes import SimulatedStrikes, StrikeLadder
from .text import (
    format_duration,
    glob_match,
    is_glob,
    skeleton,
    strip_controls,
)
from .tuning import Tuning

if TYPE_CHECKING:
    from forum.context import Clock, Rooms
    from forum.gateway import Gateway

log = logging.getLogger(__name__)

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
PENDING_COMMAND = "command:"  # State key prefix of commands not finished yet


class ModerationBot:
    def __init__(
        self,
        *,
        settings: Settings,
        moderation_gateway: Gateway,
        sessionmaker: async_sessionmaker[AsyncSession],
        rooms: Rooms,
        tasks: TaskSupervisor,
        signals: Signals,
        actions: Actions,
        clock: Clock = utcnow,
    ) -> None:
        self.gateway = moderation_gateway
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.forum_rooms = rooms
        self.tasks = tasks
        self.signals = signals
        self.clock = clock
        self.actions = actions
        self.i18n = I18n(settings.forum.languages, locale_dir=LOCALE_DIR)
        self.lang = settings.primary_language
        self.t = self.i18n.gettext(self.lang)
        self.prefix = settings.bots.command_prefix
        self.mgmt = rooms["management"]
        self.management = ManagementRoom(
            settings=settings, moderation_gateway=moderation_gateway, rooms=rooms, gettext=self.t
        )
        self.tuning = Tuning(settings.moderation)
        self.sanctions = Sanctions(actions=actions, settings=settings, gettext=self.t, clock=clock)
        strikes = StrikeLadder(tuning=self.tuning, sessionmaker=sessionmaker, clock=clock)
        self.consequences = DryRunSwitch(
            Enforcement(
                self.management, actions, sanctions=self.sanctions, strikes=strikes, tasks=tasks,
                sessionmaker=sessionmaker,
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
        self.join_wave = JoinWave(self.tuning, actions=actions, consequences=self.consequences)
        self.policy_lists = PolicyLists(
            moderation_gateway=moderation_gateway, actions=actions, sessionmaker=sessionmaker,
            management=self.management, consequences=self.consequences,
            policy_room=rooms["policy"], subscriptions=list(settings.moderation.policy_lists),
            gettext=self.t,
        )  # fmt: skip
        self.cases = CaseDesk(
            moderation_gateway=moderation_gateway, sessionmaker=sessionmaker, actions=actions,
            sanctions=self.sanctions, management=self.management,
        )  # fmt: skip
        self.reports = Reports(
            moderation_gateway=moderation_gateway, sessionmaker=sessionmaker, rooms=rooms,
            cases=self.cases, tuning=self.tuning, prefix=self.prefix, gettext=self.t,
        )  # fmt: skip
        self.mute_timer = MuteTimer(
            actions=actions, sessionmaker=sessionmaker, management=self.management, clock=clock
        )
        self.command_slots = asyncio.Semaphore(8)
        self.processed_messages = 0
        self.commands_started: dict[str, None] = {}  # event ids, oldest first
        self.seen_joined: set[str] = set()

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
        await self.actions.reapply_locks()
        await self._resume_commands()
        self.signals.connect(REPORT, self.reports.from_text)
        gateway = self.gateway
        gateway.on(Message, self.on_message)
        gateway.on(Reaction, self.cases.on_reaction)
        gateway.on(Membership, self.on_membership)
        gateway.on(StateChange, self.on_state, include_own=True)
        gateway.on(Invite, self.on_invite)
        self.tasks.start("moderation:mutes", self.mute_timer.run())
        self.tasks.start("moderation:subscriptions", self.policy_lists.subscribe_all())
        self.tasks.start("moderation:admin-reports", self.reports.poll_admin_reports())

    # --- routing ----------------------------------------------------------------------
    async def on_message(self, ev: Message) -> None:
        if ev.room_id == self.mgmt:
            split = registry.split(ev.body, self.prefix)
            if split is not None and ev.event_id not in self.commands_started:
                await self._remember_command(ev)
                self._start_command(ev)
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
        await self.reports.from_dm(ev)

    async def on_invite(self, inv: Invite) -> None:
        if inv.is_direct:
            try:
                await self.gateway.join(inv.room_id, via=[server_of(inv.sender)])
            except MatrixError as exc:
                log.info("could not join the DM from %s: %s", inv.sender, exc)

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
                room_id=self.mgmt, event_id=event_id, sender=sender, type="m.room.message",
                origin_server_ts=int(saved.get("ts") or 0), content={"body": body}, raw={},
                msgtype="m.text", body=body,
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
            if split is None:
                return
            command, tokens = split
            inv = Invocation(ev.sender, ev.event_id, command)
            t = self.t
            try:
                # Kept in step with the room: a power-level change clears it (on_state).
                level = (await self.actions.power_levels(self.mgmt)).level(ev.sender)
            except MatrixError:
                log.exception("cannot read the management room's power levels")
                return
            needed = (
                self.settings.power_levels.moderator if command.power is None else command.power
            )
            if level < needed:
                await self.management.reply(
                    inv,
                    t("Refused: %(cmd)s needs power level %(need)d here; %(user)s has %(have)s.")
                    % {
                        "cmd": self.prefix + command.name,
                        "need": needed,
                        "user": ev.sender,
                        "have": int(level) if level != float("inf") else "∞",
                    },
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
                    t("Usage: %(usage)s (%(problem)s)")
                    % {
                        "usage": command.usage(self.prefix),
                        "problem": t(exc.template) % exc.params,
                    },
                )
                return
            try:
                await command.handler(self, inv, **values)
            except MatrixError as exc:
                log.warning("command %s failed: %s", command.name, exc)
                await self.management.reply(
                    inv, t("The command failed: %(error)s") % {"error": str(exc)}
                )

    async def resolve(self, inv: Invocation, token: str, *, glob: bool = False) -> str | None:
        """A user id for ``token`` (id, glob, or unambiguous display name), or ``None``
        after telling the moderator why."""
        t = self.t
        token = strip_controls(token).strip()
        if token.startswith("@") and is_glob(token):
            if glob:
                return token
            await self.management.reply(inv, t("Globs are only accepted by !ban."))
            return None
        if is_user_id(token):
            return token
        members = await self.actions.members()
        wanted = skeleton(token.removeprefix("@"))
        # Look-alikes (confusable letters, bidi and zero-width controls) compare equal, so
        # a name shaped like a moderator's is always reported as ambiguous, never chosen.
        exact = [u for u, n in members.items() if n and skeleton(n) == wanted]
        if not exact:
            exact = [u for u in members if skeleton(u[1:].split(":")[0]) == wanted]
        if len(exact) == 1:
            return exact[0]
        if not exact:
            await self.management.reply(
                inv, t("Nobody in the forum is named %(name)s.") % {"name": token}
            )
            return None
        listing = ", ".join(sorted(exact))
        await self.management.reply(
            inv,
            t("%(name)s is ambiguous: %(ids)s. Give the full user id.")
            % {"name": token, "ids": listing},
        )
        return None

    async def refuse_if_exempt(self, inv: Invocation, user: str) -> bool:
        if await self.actions.is_exempt(user):
            await self.management.reply(
                inv,
                self.t("Refused: %(user)s is a moderator or a bot.") % {"user": user},
            )
            return True
        return False

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
            self.seen_joined.add(user)
        if await self.actions.is_exempt(user, ev.room_id):
            return
        if await self.policy_lists.ban_on_join(user, ev.event_id):
            return
        await self.join_wave.joined(user, ev.origin_server_ts / 1000 or time.time())


# === the commands =======================================================================

USER = Arg("user", "user")
REASON = Arg("reason", "text", optional=True)


@registry.command("help", aliases=("aide",), power=0, help=_("Show this help."))
async def cmd_help(bot: ModerationBot, inv: Invocation) -> None:
    t = bot.t
    lines = [t("Commands (management room only):")]
    rows = []
    for c in registry.commands:
        names = " / ".join(bot.prefix + n for n in c.names)
        usage = " ".join(a.usage() for a in c.args)
        lines.append(f"{names} {usage} — {t(c.help)}")
        rows.append(
            f"<li><code>{html.escape(names)} {html.escape(usage)}</code> — "
            f"{html.escape(t(c.help))}</li>"
        )
    await bot.management.reply(
        inv, "\n".join(lines), f"{html.escape(lines[0])}<ul>{''.join(rows)}</ul>"
    )


@registry.command(
    "ban",
    aliases=("bannir",),
    args=(USER, REASON),
    help=_("Ban a person (or a glob like @*:spam.example) from every forum room."),
)
async def cmd_ban(bot: ModerationBot, inv: Invocation, user: str, reason: str | None) -> None:
    target = await bot.resolve(inv, user, glob=True)
    if target is None or (not is_glob(target) and await bot.refuse_if_exempt(inv, target)):
        return
    banned = await bot.sanctions.ban(
        target, reason, actor=inv.sender, source="command", event_id=inv.event_id
    )
    rooms = list(bot.forum_rooms.forum_ids) if banned else []
    label = target if not is_glob(target) else f"{target} ({', '.join(banned) or '-'})"
    await bot.management.echo(
        inv, bot.t("banned"), label, rooms, reason, f"{bot.prefix}unban {target}"
    )


@registry.command("unban", aliases=("debannir", "débannir"), args=(USER,), help=_("Lift a ban."))
async def cmd_unban(bot: ModerationBot, inv: Invocation, user: str) -> None:
    target = await bot.resolve(inv, user, glob=True)
    if target is None:
        return
    await bot.actions.withdraw_rule("user", target)
    users = [target]
    if is_glob(target):  # lift the bans the glob caught
        users = sorted(u for u in await bot.actions.banned() if glob_match(target, u))
    results = await asyncio.gather(*(bot.actions.unban(u) for u in users))
    rooms = sorted({room for done in results for room in done})
    await bot.actions.audit(
        actor=inv.sender, action="unban", target=target, rooms=rooms, event_id=inv.event_id
    )
    await bot.management.echo(inv, bot.t("unbanned"), target, rooms, None)


@registry.command(
    "kick", aliases=("expulser",), args=(USER, REASON), help=_("Remove a person from every room.")
)
async def cmd_kick(bot: ModerationBot, inv: Invocation, user: str, reason: str | None) -> None:
    target = await bot.resolve(inv, user)
    if target is None or await bot.refuse_if_exempt(inv, target):
        return
    rooms = await bot.actions.kick(target, reason)
    await bot.actions.audit(
        actor=inv.sender, action="kick", target=target, rooms=rooms, reason=reason,
        event_id=inv.event_id,
    )  # fmt: skip
    await bot.management.echo(inv, bot.t("kicked"), target, rooms, reason)


@registry.command(
    "mute",
    aliases=("sourdine", "muet"),
    args=(USER, Arg("duration", "duration", optional=True), REASON),
    help=_("Stop a person from posting (for a duration like 10m, 2h, 1d)."),
)
async def cmd_mute(
    bot: ModerationBot,
    inv: Invocation,
    user: str,
    duration: timedelta | None,
    reason: str | None,
) -> None:
    target = await bot.resolve(inv, user)
    if target is None or await bot.refuse_if_exempt(inv, target):
        return
    rooms = await bot.sanctions.mute(
        target, duration, reason, actor=inv.sender, source="command", event_id=inv.event_id
    )
    what = bot.t("muted")
    if duration:
        what += " " + bot.t("for %(d)s") % {"d": format_duration(duration)}
    await bot.management.echo(inv, what, target, rooms, reason, f"{bot.prefix}unmute {target}")


@registry.command(
    "unmute", aliases=("fin-sourdine", "demuet"), args=(USER,), help=_("Let a person post again.")
)
async def cmd_unmute(bot: ModerationBot, inv: Invocation, user: str) -> None:
    target = await bot.resolve(inv, user)
    if target is None:
        return
    _was, rooms = await bot.actions.unmute(target)
    await bot.actions.audit(
        actor=inv.sender, action="unmute", target=target, rooms=rooms, event_id=inv.event_id
    )
    await bot.management.echo(inv, bot.t("unmuted"), target, rooms, None)


@registry.command(
    "warn",
    aliases=("avertir",),
    args=(USER, Arg("reason", "text")),
    help=_("Send a person a warning in a direct message."),
)
async def cmd_warn(bot: ModerationBot, inv: Invocation, user: str, reason: str) -> None:
    target = await bot.resolve(inv, user)
    if target is None or await bot.refuse_if_exempt(inv, target):
        return
    await bot.sanctions.warn(
        target, reason, actor=inv.sender, source="command", event_id=inv.event_id
    )
    await bot.management.echo(inv, bot.t("warned"), target, [], reason, in_rooms=False)


@registry.command(
    "redact",
    aliases=("effacer",),
    args=(USER, Arg("limit", "count_or_since", optional=True), REASON),
    help=_("Remove a person's recent messages (a count, or a duration like 2h)."),
)
async def cmd_redact(
    bot: ModerationBot,
    inv: Invocation,
    user: str,
    limit: int | timedelta | None,
    reason: str | None,
) -> None:
    target = await bot.resolve(inv, user)
    if target is None or await bot.refuse_if_exempt(inv, target):
        return
    count = limit if isinstance(limit, int) else None
    since = limit if isinstance(limit, timedelta) else None
    if count is None and since is None:
        count = 100
    events = await bot.actions.recent_events(target, count, since)
    n = await bot.actions.redact_many([(r, e) for r, e, _ in events], reason)
    rooms = sorted({r for r, _, _ in events})
    await bot.actions.audit(
        actor=inv.sender, action=f"redact:{n}", target=target, rooms=rooms, reason=reason,
        event_id=inv.event_id,
    )  # fmt: skip
    await bot.management.echo(
        inv, bot.t("removed %(n)d message(s) of") % {"n": n}, target, rooms, reason
    )


@registry.command(
    "history", aliases=("historique",), args=(USER,), help=_("Past actions about a person.")
)
async def cmd_history(bot: ModerationBot, inv: Invocation, user: str) -> None:
    target = await bot.resolve(inv, user)
    if target is None:
        return
    async with bot.sessionmaker() as s:
        entries = [e for e in await Audit(s).entries(target) if e.target == target][-30:]
    if not entries:
        await bot.management.reply(
            inv, bot.t("No recorded action about %(user)s.") % {"user": target}
        )
        return
    lines = [bot.t("History of %(user)s:") % {"user": target}]
    for e in entries:
        dry = " " + bot.t("[dry run]") if e.dry_run else ""
        lines.append(
            f"{e.created_at:%Y-%m-%d %H:%M} {bot.cases.action_label(e.action)}{dry} — {e.actor} "
            f"({e.source})" + (f": {e.reason}" if e.reason else "")
        )
    await bot.management.reply(inv, "\n".join(lines), "<br/>".join(html.escape(x) for x in lines))


@registry.command("lock", aliases=("verrouiller",), help=_("Make every topic room read-only."))
async def cmd_lock(bot: ModerationBot, inv: Invocation) -> None:
    rooms = await bot.actions.lock()
    await bot.actions.audit(actor=inv.sender, action="lock", target="*", rooms=rooms,
                            event_id=inv.event_id)  # fmt: skip
    body = bot.t("%(who)s locked the topic rooms (%(n)d). To undo: %(cmd)s") % {
        "who": inv.sender,
        "n": len(rooms),
        "cmd": f"{bot.prefix}unlock",
    }
    await bot.management.reply(inv, body)


@registry.command(
    "unlock",
    aliases=("deverrouiller", "déverrouiller"),
    help=_("Let members post again (and lift a join lock)."),
)
async def cmd_unlock(bot: ModerationBot, inv: Invocation) -> None:
    rooms = await bot.actions.unlock()
    joins = await bot.actions.unlock_joins()
    await bot.actions.audit(actor=inv.sender, action="unlock", target="*", rooms=rooms,
                            event_id=inv.event_id)  # fmt: skip
    body = bot.t("%(who)s unlocked the topic rooms (%(n)d).") % {
        "who": inv.sender,
        "n": len(set(rooms) | set(joins)),
    }
    await bot.management.reply(inv, body)


@registry.command(
    "unlock-joins",
    aliases=("ouvrir-entrees", "ouvrir-entrées"),
    help=_("Restore the join rules after a join wave."),
)
async def cmd_unlock_joins(bot: ModerationBot, inv: Invocation) -> None:
    rooms = await bot.actions.unlock_joins()
    await bot.actions.audit(actor=inv.sender, action="unlock-joins", target="*", rooms=rooms,
                            event_id=inv.event_id)  # fmt: skip
    body = bot.t("%(who)s restored the join rules (%(n)d room(s)).") % {
        "who": inv.sender,
        "n": len(rooms),
    }
    await bot.management.reply(inv, body)


@registry.command(
    "dry-run",
    aliases=("simulation",),
    args=(Arg("mode", "choice", choices=("on", "off")),),
    help=_("Protections only report (on) or act (off)."),
)
async def cmd_dry_run(bot: ModerationBot, inv: Invocation, mode: str) -> None:
    bot.consequences.turn(mode == "on")
    async with bot.sessionmaker() as s, s.begin():
        await State(s).set("dry_run", {"on": bot.dry_run})
    await bot.actions.audit(actor=inv.sender, action=f"dry-run:{mode}", target="*",
                            event_id=inv.event_id)  # fmt: skip
    body = (
        bot.t("Dry run is on: protections only report.")
        if bot.dry_run
        else bot.t("Dry run is off: protections act.")
    )
    await bot.management.reply(inv, body)


@registry.command(
    "ban-server",
    aliases=("bannir-serveur",),
    args=(Arg("server", "word"), Arg("reason", "text")),
    help=_("Ban a whole homeserver (policy rule and server ACL)."),
)
async def cmd_ban_server(bot: ModerationBot, inv: Invocation, server: str, reason: str) -> None:
    if glob_match(server, bot.settings.server_name):
        await bot.management.reply(
            inv, bot.t("Refused: that would ban this forum's own homeserver.")
        )
        return
    await bot.actions.publish_rule("server", server, reason)
    rooms = await bot.actions.deny_server(server)
    await bot.actions.audit(actor=inv.sender, action="ban-server", target=server, rooms=rooms,
                            reason=reason, event_id=inv.event_id)  # fmt: skip
    await bot.management.echo(
        inv, bot.t("banned the server"), server, rooms, reason,
        undo=f"{bot.prefix}unban-server {server}",
    )  # fmt: skip


@registry.command(
    "unban-server",
    aliases=("debannir-serveur",),
    args=(Arg("server", "word"),),
    help=_("Lift a server ban (policy rule and server ACL)."),
)
async def cmd_unban_server(bot: ModerationBot, inv: Invocation, server: str) -> None:
    await bot.actions.withdraw_rule("server", server)
    rooms = await bot.actions.allow_server(server)
    await bot.actions.audit(actor=inv.sender, action="unban-server", target=server, rooms=rooms,
                            event_id=inv.event_id)  # fmt: skip
    await bot.management.echo(inv, bot.t("lifted the ban of the server"), server, rooms, None)


@registry.command(
    "status",
    aliases=("etat",),
    help=_("Show the protections' settings and what is in force now."),
)
async def cmd_status(bot: ModerationBot, inv: Invocation) -> None:
    t, cfg = bot.t, bot.cfg
    async with bot.sessionmaker() as s:
        mutes = await Mutes(s).all()
        open_cases = await Cases(s).open_count()
    locked, joins_locked = await bot.actions.locked(), await bot.actions.joins_locked()
    yes, no = t("yes"), t("no")
    lines = [
        t("Dry run: %(state)s.") % {"state": yes if bot.dry_run else no},
        t("Flood: %(n)d messages in %(s)d s.")
        % {"n": cfg.flood_messages, "s": int(cfg.flood_seconds)},
        t("Mention spam: more than %(n)d mentions.") % {"n": cfg.mention_limit},
        t("Links and media held back from members who joined less than %(h)s h ago.")
        % {"h": f"{cfg.new_member_hours:g}"},
        t("Banned words: %(n)d.") % {"n": len(cfg.words)},
        t("Join wave: %(n)d joins in %(s)d s.")
        % {"n": cfg.join_wave_joins, "s": int(cfg.join_wave_seconds)},
        t("Steps: %(steps)s (back to the first after %(h)s quiet hours).")
        % {"steps": " → ".join(cfg.steps), "h": f"{cfg.step_reset_hours:g}"},
        t("Topic rooms read-only: %(state)s; joins knock-only: %(joins)s.")
        % {"state": yes if locked else no, "joins": yes if joins_locked else no},
        t("Muted now: %(n)d. Open reports: %(cases)d.") % {"n": len(mutes), "cases": open_cases},
        t("Policy lists followed: %(n)d of %(total)d (%(rules)d rules); our own rules: %(own)d.")
        % {
            "n": len(bot.policy_lists.list_rooms),
            "total": len(cfg.policy_lists),
            "rules": len(bot.policy_lists.rules),
            "own": len(bot.policy_lists.own_rules),
        },
    ]
    html_body = "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"
    await bot.management.reply(inv, "\n".join(lines), html_body)


@registry.command(
    "case",
    aliases=("dossier",),
    args=(
        Arg("number", "int"),
        Arg("action", "choice", choices=(*CASE_ACTIONS, *CASE_ACTIONS_FR)),
    ),
    help=_("Act on a report: dismiss, redact, warn, mute or ban."),
)
async def cmd_case(bot: ModerationBot, inv: Invocation, number: int, action: str) -> None:
    action = CASE_ACTIONS_FR.get(action, action)
    problem = await bot.cases.act_on_case(number, action, inv.sender, inv.event_id)
    if problem:
        await bot.management.reply(inv, problem)
