"""What protections and policy rules ask for, carried out in one place: :class:`Enforcement`
redacts, strikes, mutes and bans; :class:`DryRun` only reports what it would do. The
protections never ask which one they talk to; :class:`DryRunSwitch` holds the one in force."""

from __future__ import annotations

import asyncio
import html
from abc import ABC, abstractmethod
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.events import Message
from forum.matrix import matrix_to
from forum.tasks import TaskSupervisor

from .actions import Actions
from .locks import RoomLocks
from .management import ManagementRoom, user_html, with_line
from .repositories import PolicyBans
from .sanctions import Sanctions
from .strikes import SimulatedStrikes, StrikeLadder
from .text import message_texts, parse_duration, quote_html, quote_plain


def _(msg: str) -> str:
    """Marks a message for extraction; translated when shown."""
    return msg


REFUSED_HEAD = _(
    "Protection {kind}: {user} in {room}; message refused before delivery; step: {step}."
)


@dataclass(frozen=True)
class Offence:
    """A message a protection caught: its kind ("flood"...), the kind as moderators read
    it, the reason given for what is done, and the events to remove (room, event id)."""

    message: Message
    kind: str
    label: str
    reason: str
    events: list[tuple[str, str]]
    refused: bool = False
    """Refused by the homeserver before delivery (the spam checker): nobody saw it."""

    @property
    def source(self) -> str:
        return f"protection:{self.kind}"


class Consequences(ABC):
    """What a protection or a policy rule may ask for."""

    def __init__(self, management: ManagementRoom, actions: Actions) -> None:
        self.management = management
        self.actions = actions
        self.t = management.t

    @property
    def actor(self) -> str:
        return self.management.gateway.user_id

    @abstractmethod
    async def offence(self, offence: Offence) -> None:
        """Remove the offending events and take the person's next step."""

    @abstractmethod
    async def join_wave(self, joined: int, seconds: int) -> None:
        """``joined`` people joined within ``seconds``: close the doors."""

    @abstractmethod
    async def policy_bans(self, key: str, entity: str, reason: str, users: list[str]) -> None:
        """Ban ``users`` under the policy rule ``key`` (on ``entity``)."""

    async def report_offence(self, offence: Offence, step: str, removed: int, *, dry: bool) -> None:
        t, management = self.t, self.management
        ev = offence.message
        link = matrix_to(ev.room_id, ev.event_id, via=[management.settings.server_name])
        prefix = management.prefix
        undo = {
            "warn": None,
            "kick": None,
            "ban": f"{prefix}unban {ev.sender}",
        }.get(step, f"{prefix}unmute {ev.sender}")
        if dry:
            head = t("[dry run] Protection {kind} would act on {user} in {room}: {step}.")
        elif offence.refused:
            head = t(REFUSED_HEAD)
        else:
            head = t("Protection {kind}: {user} in {room}; {n} message(s) removed; step: {step}.")
        head = head.format(
            kind=offence.label,
            user=ev.sender,
            room=management.room_label(ev.room_id),
            n=removed,
            step=step,
        )
        # every text a client shows (formatted_body, an edit's new text), once each
        shown = "\n".join(dict.fromkeys(x.strip() for x in message_texts(ev.content) if x.strip()))
        body = head + "\n" + quote_plain(shown or ev.body)
        html_body = html.escape(head).replace(html.escape(ev.sender), user_html(ev.sender), 1)
        html_body += quote_html(shown or ev.body)
        if not offence.refused:  # a refused message has no link: it was never stored
            body += "\n" + link
            html_body += f'<a href="{html.escape(link)}">{html.escape(t("the message"))}</a>'
        if undo and not dry:
            body, html_body = with_line(body, html_body, management.undo_line(undo))
        await management.say(body, html_body)


class Enforcement(Consequences):
    """The real thing."""

    def __init__(
        self,
        management: ManagementRoom,
        actions: Actions,
        *,
        sanctions: Sanctions,
        strikes: StrikeLadder,
        locks: RoomLocks,
        tasks: TaskSupervisor,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        super().__init__(management, actions)
        self.sanctions = sanctions
        self.strikes = strikes
        self.locks = locks
        self.tasks = tasks
        self.sessionmaker = sessionmaker

    async def offence(self, offence: Offence) -> None:
        ev = offence.message
        redacted = await self.actions.redact_many(offence.events, offence.reason)
        step = await self.strikes.strike(ev.sender)
        await self.actions.audit(
            actor=self.actor, action="refused" if offence.refused else "redact",
            target=ev.sender, rooms=sorted({r for r, _ in offence.events} or {ev.room_id}),
            reason=offence.reason, event_id=ev.event_id, source=offence.source,
        )  # fmt: skip
        self.tasks.start(f"moderation:step:{ev.event_id}", self._take_step(offence, step, redacted))

    async def _take_step(self, offence: Offence, step: str, redacted: int) -> None:
        ev, reason, source = offence.message, offence.reason, offence.source
        sanctions, actor = self.sanctions, self.actor
        if step == "warn":
            await sanctions.warn(
                ev.sender, reason, actor=actor, source=source, event_id=ev.event_id
            )
        elif step.startswith("mute"):
            _, _, duration = step.partition(":")
            await sanctions.mute(
                ev.sender, parse_duration(duration) if duration else None, reason,
                actor=actor, source=source, event_id=ev.event_id,
            )  # fmt: skip
        elif step == "kick":
            await sanctions.kick(
                ev.sender, reason, actor=actor, source=source, event_id=ev.event_id
            )
        elif step == "ban":
            await sanctions.ban(ev.sender, reason, actor=actor, source=source, event_id=ev.event_id)
        await self.report_offence(offence, step, redacted, dry=False)

    async def join_wave(self, joined: int, seconds: int) -> None:
        rooms = await self.locks.lock_joins()
        await self.actions.audit(
            actor=self.actor, action="lock-joins", target="*", rooms=rooms,
            reason="join wave", source="protection:join-wave",
        )  # fmt: skip
        t = self.t
        body = t("Join wave: {n} people joined in {s} s; topic rooms are now knock-only.").format(
            n=joined, s=seconds
        )
        still_open = [r for r in self.actions.topic_rooms if r not in rooms]
        if still_open:  # the homeserver refused or failed; a restart tries them again
            body += "\n" + t("Could not switch: {rooms}.").format(
                rooms=", ".join(self.management.room_label(r) for r in still_open)
            )
        body += "\n" + self.management.undo_line(f"{self.management.prefix}unlock-joins")
        await self.management.say(body, html.escape(body).replace("\n", "<br/>"))

    async def policy_bans(self, key: str, entity: str, reason: str, users: list[str]) -> None:
        results = await asyncio.gather(*(self.actions.ban(u, reason) for u in users))
        async with self.sessionmaker() as s, s.begin():
            for user in users:
                await PolicyBans(s).add(key, user)
        for user, rooms in zip(users, results, strict=True):
            await self.actions.audit(
                actor=self.actor, action="ban", target=user, rooms=rooms, reason=reason,
                source="policy",
            )  # fmt: skip
        await self.management.tell(
            self.t("Policy rule {entity}: banned {users}.").format(
                entity=entity, users=", ".join(users)
            )
        )


class DryRun(Consequences):
    """Reports what :class:`Enforcement` would do, and writes it to the audit log as a dry
    run; the steps are counted on a simulated tally."""

    def __init__(
        self, management: ManagementRoom, actions: Actions, *, strikes: SimulatedStrikes
    ) -> None:
        super().__init__(management, actions)
        self.strikes = strikes

    async def offence(self, offence: Offence) -> None:
        ev = offence.message
        step = await self.strikes.strike(ev.sender)
        await self.actions.audit(
            actor=self.actor, action=step, target=ev.sender, rooms=[ev.room_id],
            reason=offence.reason, event_id=ev.event_id, source=offence.source, dry_run=True,
        )  # fmt: skip
        await self.report_offence(offence, step, len(offence.events), dry=True)

    async def join_wave(self, joined: int, seconds: int) -> None:
        await self.management.tell(
            self.t("[dry run] Join wave: {n} people joined in {s} s.").format(n=joined, s=seconds)
        )

    async def policy_bans(self, key: str, entity: str, reason: str, users: list[str]) -> None:
        await self.management.tell(
            self.t("[dry run] Policy rule {entity} would ban {users}.").format(
                entity=entity, users=", ".join(users)
            )
        )


class DryRunSwitch:
    """The consequences in force: :class:`DryRun` when on, :class:`Enforcement` when off."""

    def __init__(self, enforcement: Enforcement, dry_run: DryRun, *, on: bool) -> None:
        self.enforcement = enforcement
        self.dry_run = dry_run
        self.on = on

    @property
    def current(self) -> Consequences:
        return self.dry_run if self.on else self.enforcement

    def turn(self, on: bool) -> None:
        """Turn the dry run on or off; the simulated tally starts again."""
        self.on = on
        self.dry_run.strikes.reset()
