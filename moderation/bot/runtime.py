"""The command runtime of the moderation bot: a command of the management room is
stored before it counts as handled (a crash or a stop runs it again at the next start;
a database error, again after a backoff in the running process),
runs as a supervised background task (a flood of commands never holds up the
protections; at most :data:`SLOTS` at once), is refused below its power level, has its
arguments parsed from its declaration (:mod:`.commands`), and is answered when unknown."""

from __future__ import annotations

import asyncio
import html
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.errors import MatrixError
from forum.events import Message
from forum.retry import is_database_error
from forum.settings import Settings
from forum.tasks import TaskSupervisor

from .actions import Actions
from .commands import Invocation, UsageError, parse_args, registry
from .management import ManagementRoom
from .repositories import State

if TYPE_CHECKING:
    from collections.abc import Callable

    from .command_groups.context import CommandContext

log = logging.getLogger(__name__)

PENDING_COMMAND = "command:"  # State key prefix of commands not finished yet
SLOTS = 8


@dataclass(kw_only=True, eq=False)
class CommandRuntime:
    """Runs the commands of the management room; the handlers receive ``context``."""

    context: CommandContext
    """What the handlers of :mod:`.command_groups` receive (the parts they use); the
    runtime uses the same parts."""
    settings: Settings
    tasks: TaskSupervisor
    command_slots: asyncio.Semaphore = field(
        init=False, default_factory=lambda: asyncio.Semaphore(SLOTS)
    )
    commands_started: dict[str, None] = field(init=False, default_factory=dict)
    """Event ids of the commands started, oldest first (a resumed one runs once)."""

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        return self.context.sessionmaker

    @property
    def actions(self) -> Actions:
        return self.context.actions

    @property
    def management(self) -> ManagementRoom:
        return self.context.management

    @property
    def t(self) -> Callable[[str], str]:
        return self.context.t

    @property
    def prefix(self) -> str:
        return self.context.prefix

    async def on_message(self, ev: Message) -> None:
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

    async def _remember_command(self, ev: Message) -> None:
        """Store a command before its event counts as handled: a command that a crash
        or a stop interrupted runs again at the next start (its actions are idempotent)."""
        async with self.sessionmaker() as s, s.begin():
            await State(s).set(
                PENDING_COMMAND + ev.event_id,
                {"sender": ev.sender, "body": ev.body, "ts": ev.origin_server_ts},
            )

    async def resume(self) -> None:
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
        """Run a command; a database error (locked, unreachable) runs it again after a
        backoff in this process, until it is done and answered (its actions are
        idempotent, and its answer comes after its last write). Then it is no longer
        pending."""
        what = f"command {ev.event_id}"
        try:
            await self.tasks.retried(
                what, lambda: self._run_command(ev), retryable=is_database_error
            )
        except asyncio.CancelledError:
            raise  # stopped: stays pending, runs again at the next start
        except Exception:
            log.exception("command %s failed", ev.event_id)

        async def done() -> None:
            async with self.sessionmaker() as s, s.begin():
                await State(s).delete(PENDING_COMMAND + ev.event_id)

        await self.tasks.retried(f"{what}: forgetting it", done, retryable=is_database_error)

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
                # recorded before the answer: a database error runs it again, not the answer
                await self.actions.audit(
                    actor=ev.sender,
                    action="refused",
                    target=command.name,
                    event_id=ev.event_id,
                    reason="power level",
                )
                await self.management.reply(
                    inv,
                    t("Refused: {cmd} needs power level {need} here; {user} has {have}.").format(
                        cmd=self.prefix + command.name,
                        need=needed,
                        user=ev.sender,
                        have=int(level) if level != float("inf") else "∞",
                    ),
                )
                return
            try:
                values = parse_args(command, tokens)
            except UsageError as exc:
                await self.management.reply(inv, exc.told(self.prefix, t))
                return
            try:
                await handler(self.context, inv, **values)
            except MatrixError as exc:
                log.warning("command %s failed: %s", command.name, exc)
                await self.management.reply(
                    inv, t("The command failed: {error}").format(error=str(exc))
                )
