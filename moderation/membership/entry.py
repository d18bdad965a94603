"""The three doors to the consent flow — a knock on a forum room, a join of the lobby, a
direct chat the person opens — and the one DM per person they all lead to."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from forum.errors import MatrixError
from forum.events import Invite, Membership
from forum.matrix import server_of
from forum.retry import is_recoverable
from forum.tasks import TaskSupervisor

from . import flow, messages
from .effects import FlowRunner
from .models import CHARTER, LANGUAGE, MEMBER
from .repositories import People
from .shared import Shared
from .text import guess_language

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arrival:
    """Someone at a door: ``door`` is "knock", "lobby" or "restart" (a DM never opened)."""

    user_id: str
    door: str
    text: str | None = None
    """What they wrote with their knock (it may tell their language)."""
    knock_room: str | None = None
    recovering: bool = False
    """Found at start-up rather than received: a member's pending knock then waits for the
    invites already queued for them."""
    failures: int = 0
    """How many times in a row its entry failed (it is queued again after a backoff)."""


class Entry:
    runner: FlowRunner
    """Set by the bot once built (the flow opens DMs through :meth:`open_dm`)."""

    def __init__(
        self,
        shared: Shared,
        tasks: TaskSupervisor,
    ) -> None:
        self.shared = shared
        self.tasks = tasks
        self._arrivals: asyncio.Queue[Arrival] = asyncio.Queue()
        self._running = False

    async def on_invite(self, inv: Invite) -> None:
        """Someone invites the bot to a direct chat (door 3, or a DM they closed and open
        again): one DM per person, the newest one kept. Other invites are declined."""
        shared, sender = self.shared, inv.sender
        if not sender or shared.ignored(sender):
            return
        if not inv.is_direct:
            log.info("declining a non-direct invite to %s from %s", inv.room_id, sender)
            await self.leave_quietly(inv.room_id)
            return
        async with shared.lock(sender):
            person = await shared.person(sender)
            if (
                person
                and person.dm_room_id
                and person.dm_room_id != inv.room_id
                and await self._still_in(person.dm_room_id, sender)
            ):
                await self.leave_quietly(inv.room_id)
                await shared.say(
                    person.dm_room_id, shared.t(shared.lang_of(person), messages.ALREADY_DM)
                )
                return
            server = server_of(sender)
            await shared.membership_gateway.join(inv.room_id, via=[server] if server else [])
            # Known as their DM to every feature (the digest asks its quote questions there,
            # rather than in a second chat of its own).
            await shared.membership_gateway.remember_dm(sender, inv.room_id)
            if person is None:
                async with shared.sessionmaker() as s, s.begin():
                    row = await People(s).create(sender, "dm", None)
                    row.dm_room_id = inv.room_id
                await self.runner.run(sender, flow.Entered("dm"))
                return
            if person.dm_room_id and person.dm_room_id != inv.room_id:
                # They left the old DM (closed the chat): the new one replaces it, and
                # they find where they were (the pending question, or the commands).
                await shared.update_person(sender, dm_room_id=inv.room_id)
                await self.leave_quietly(person.dm_room_id)
                await self.runner.run(sender, flow.DmReopened())
            elif not person.dm_room_id:
                await shared.update_person(sender, dm_room_id=inv.room_id)
                await self.runner.run(sender, flow.DmReopened())

    async def _still_in(self, room_id: str, user_id: str) -> bool:
        """Whether ``user_id`` is still joined (or invited) in ``room_id``; on an error,
        assume so (the old DM is kept)."""
        try:
            membership = await self.shared.membership_gateway.membership(room_id, user_id)
        except MatrixError as exc:
            log.warning("cannot read the membership of %s in %s: %s", user_id, room_id, exc)
            return True
        return membership in {"join", "invite"}

    async def leave_quietly(self, room_id: str) -> None:
        try:
            await self.shared.membership_gateway.leave(room_id)
        except MatrixError as exc:
            log.warning("could not leave %s: %s", room_id, exc)

    def start(self, arrival: Arrival) -> None:
        """Queue an entry: :meth:`run`'s ``entry_concurrency`` workers handle several
        people at once (one at a time per person: :meth:`enter` holds the person's lock),
        so that a crowd of knocks is answered progressively, without one task and one DM
        being opened per knocker at once. A knock lost to a crash is found again by
        :meth:`recover_pending`."""
        self._arrivals.put_nowait(arrival)
        if not self._running:
            self._running = True
            self.tasks.start("membership:enter", self.run())

    async def run(self) -> None:
        """The entry workers, until cancelled."""
        workers = self.shared.options.entry_concurrency
        await asyncio.gather(*(self._worker() for _ in range(workers)))

    async def _worker(self) -> None:
        while True:
            arrival = await self._arrivals.get()
            try:
                await self.enter(arrival)
            except Exception as exc:  # one person's entry must not stop the others'
                if is_recoverable(exc):
                    self._again(arrival, exc)
                else:
                    log.exception(
                        "the entry of %s (%s) failed; a pending knock is taken up again at start",
                        arrival.user_id,
                        arrival.door,
                    )
            finally:
                self._arrivals.task_done()

    def _again(self, arrival: Arrival, exc: Exception) -> None:
        """An entry that met a failure which may go away (the database locked, the
        homeserver unreachable) is queued again after the supervisor's backoff, without
        holding a worker meanwhile (:meth:`enter` is idempotent)."""
        again = replace(arrival, failures=arrival.failures + 1)
        wait = self.tasks.backoff(again.failures)
        log.warning(
            "the entry of %s (%s) failed (%d in a row): %s: %s; trying again in %.1f s",
            arrival.user_id,
            arrival.door,
            again.failures,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
            wait,
        )

        async def later() -> None:
            await asyncio.sleep(wait)
            self._arrivals.put_nowait(again)

        self.tasks.start(f"membership:enter-again:{arrival.user_id}", later())

    async def recover_pending(self) -> None:
        """At start-up: knocks still pending on forum rooms, and people whose DM was never
        opened, get their flow (each exactly once: :meth:`enter` is idempotent)."""
        shared = self.shared
        for room in shared.forum_rooms:
            try:
                knocks = await shared.membership_gateway.members(room, membership="knock")
            except MatrixError as exc:
                log.warning("cannot list the knocks on %s: %s", room, exc)
                continue
            for user_id, content in knocks.items():
                if not shared.ignored(user_id):
                    reason = content.get("reason")
                    text = reason if isinstance(reason, str) else None
                    self.start(Arrival(user_id, "knock", text, knock_room=room, recovering=True))
        async with shared.sessionmaker() as s:
            unopened = [
                p.user_id
                for p in await People(s).all()
                if not p.dm_room_id and p.step in {LANGUAGE, CHARTER}
            ]
        for user_id in unopened:
            self.start(Arrival(user_id, "restart", recovering=True))

    async def enter(self, arrival: Arrival) -> None:
        """One flow per person, whatever the door: opens the DM once, sends the charter."""
        user_id, knock_room = arrival.user_id, arrival.knock_room
        shared = self.shared
        async with shared.lock(user_id):
            async with shared.sessionmaker() as s, s.begin():
                people = People(s)
                person = await people.get(user_id)
                if person is None:
                    lang = guess_language(arrival.text, shared.settings.forum.languages)
                    person = await people.create(user_id, arrival.door, lang)
                if knock_room and knock_room not in (person.knocked_rooms or []):
                    person.knocked_rooms = [*(person.knocked_rooms or []), knock_room]
                step = person.step
            knocking = False
            if step == MEMBER and knock_room and not arrival.recovering:
                # A member knocking again (after leaving one room), not a replay.
                state = await shared.membership_gateway.get_state_event(
                    knock_room, "m.room.member", user_id
                )
                knocking = bool(state and state.get("membership") == "knock")
            door: flow.Door = "knock" if arrival.door == "knock" else "lobby"
            if arrival.door == "restart":
                door = "restart"
            await self.runner.run(user_id, flow.Entered(door, knock_room, knocking=knocking))

    async def joined(self, room_id: str, user_id: str) -> bool:
        """Whether ``user_id`` is in ``room_id`` (a remote server does not backfill what
        was sent before the join: the charter waits for it)."""
        state = await self.shared.membership_gateway.get_state_event(
            room_id, "m.room.member", user_id
        )
        return bool(state and state.get("membership") == "join")

    async def on_dm_join(self, ev: Membership) -> None:
        """The person joined the DM the bot opened: greet them there."""
        async with self.shared.sessionmaker() as s:
            person = await People(s).by_dm_room(ev.room_id)
        if person is None or person.user_id != ev.target:
            return
        async with self.shared.lock(person.user_id):
            await self.runner.run(person.user_id, flow.DmJoined())

    async def open_dm(self, user_id: str) -> str:
        """A DM with ``user_id``: reuse one recorded in ``m.direct`` (a crash between
        creating it and storing it must not open a second one), else create it."""
        gateway = self.shared.membership_gateway
        direct = await gateway.get_account_data("m.direct") or {}
        existing = [r for r in direct.get(user_id, []) if isinstance(r, str)]
        if existing:
            return existing[-1]
        unrecorded = await self._unrecorded_dm(user_id, direct)
        if unrecorded is not None:
            log.info("using the DM with %s opened before a restart: %s", user_id, unrecorded)
            await gateway.remember_dm(user_id, unrecorded)
            return unrecorded
        # Unnamed: clients name a DM after the other person (the bot), not after the forum,
        # whose Space already bears its name.
        return await gateway.create_dm(user_id)

    async def _unrecorded_dm(self, user_id: str, direct: dict[str, object]) -> str | None:
        """A DM with ``user_id`` that a run killed between creating it and recording it in
        ``m.direct`` left behind: a room the bot is in that neither ``m.direct`` nor the
        forum knows, whose only members (joined or invited) are the bot and the person.
        Normally no room is left to look at: one request."""
        gateway = self.shared.membership_gateway
        known = set(self.shared.rooms.values())
        for rooms in direct.values():
            if isinstance(rooms, list):
                known.update(r for r in rooms if isinstance(r, str))
        for room_id in await gateway.joined_rooms():
            if room_id in known:
                continue
            members = await gateway.members(room_id)
            present = {
                uid for uid, content in members.items()
                if content.get("membership") in ("join", "invite")
            }  # fmt: skip
            if present == {gateway.user_id, user_id}:
                return room_id
        return None
