"""Space-wide actions of the moderation bot: each applies to every forum room at once
(``asyncio.gather``), is written to the audit log and keeps its persistent state
(mutes, server ACL) so that it survives restarts and provisioning runs. The locks of the
topic rooms are in :mod:`.locks`."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Unpack

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.bounded import LockTable
from forum.errors import MatrixError
from forum.gateway.powers import Change
from forum.matrix import PowerLevels
from forum.settings import Settings
from forum.storage.models import utcnow

from ..powers import MUTED_LEVEL, Powers
from .repositories import Audit, AuditFields, DirectRooms, Mutes

if TYPE_CHECKING:
    from forum.context import Clock, Rooms
    from forum.gateway import Gateway

log = logging.getLogger(__name__)

__all__ = ["MUTED_LEVEL", "Actions", "rule_state_key"]

#: requests one space-wide action has in flight at once: enough for a homeserver's event
#: persisters (sharded by room) to take several rooms in parallel, few enough not to
#: flood it (a ban across 100 rooms is not 100 simultaneous requests)
ROOM_CONCURRENCY = 16
REDACTABLE = frozenset({"m.room.message", "m.sticker", "m.reaction", "m.room.encrypted"})


def rule_state_key(entity: str) -> str:
    return "rule:" + hashlib.sha256(entity.encode()).hexdigest()[:24]


@dataclass(kw_only=True, eq=False)
class Actions:
    """The bot's hands: bans, mutes, redactions, warnings, server ACLs, policy rules."""

    settings: Settings
    gateway: Gateway
    sessionmaker: async_sessionmaker[AsyncSession]
    forum_rooms: Rooms
    clock: Clock = utcnow
    powers: Powers = field(init=False)
    """Power levels through the account's one editor, shared with the membership bot."""
    mute_changed: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    room_concurrency: int = ROOM_CONCURRENCY
    _muting: LockTable = field(init=False, default_factory=LockTable)
    """One mute or lifting per person at a time: a lifting that removed a mute given
    meanwhile would leave rooms muted with no record to lift them."""

    async def bounded(self, calls: Iterable[Callable[[], Awaitable[Any]]]) -> list[Any]:
        """Make and await ``calls`` concurrently, at most :attr:`room_concurrency` at a time;
        the results (or exceptions) in order. Each call is made only when its turn comes (a
        batch cancelled meanwhile leaves no coroutine that was never awaited)."""
        limit = asyncio.Semaphore(self.room_concurrency)

        async def one(call: Callable[[], Awaitable[Any]]) -> Any:
            async with limit:
                return await call()

        return await asyncio.gather(*(one(c) for c in calls), return_exceptions=True)

    def __post_init__(self) -> None:
        self.powers = Powers(self.gateway.powers, self.settings.power_levels.moderator)

    # --- rooms ----------------------------------------------------------------------
    @property
    def rooms(self) -> list[str]:
        return list(self.forum_rooms.forum_ids)

    @property
    def topic_rooms(self) -> list[str]:
        return list(self.forum_rooms.topic_ids.values())

    async def across(
        self, fn: Callable[[str], Awaitable[Any]], rooms: Iterable[str] | None = None
    ) -> list[str]:
        """Run ``fn(room)`` on every room concurrently (bounded); the rooms where it
        succeeded."""
        targets = list(self.rooms if rooms is None else rooms)
        results = await self.bounded(partial(fn, r) for r in targets)
        done: list[str] = []
        for room, res in zip(targets, results, strict=True):
            if isinstance(res, asyncio.CancelledError):
                raise res
            if isinstance(res, MatrixError):
                log.info("action in %s not applied: %s", room, res)
            elif isinstance(res, BaseException):
                log.error("action in %s failed", room, exc_info=res)
            else:
                done.append(room)
        return done

    # --- power levels ---------------------------------------------------------------
    def forget_power_levels(self, room_id: str) -> None:
        self.powers.forget(room_id)

    async def power_levels(self, room_id: str) -> PowerLevels:
        """The levels of ``room_id`` (cached by the editor until a change is seen)."""
        return await self.gateway.powers.levels(room_id)

    async def edit_power_levels(self, room_id: str, change: Change) -> None:
        """Edit ``m.room.power_levels`` through the account's one editor (serialised per
        room, read again before writing, verified after; see :mod:`forum.gateway.powers`)."""
        await self.powers.edit(room_id, change)

    async def is_exempt(self, user_id: str, room_id: str | None = None) -> bool:
        """Moderators and bots are never targets of protections or policy rules."""
        settings = self.settings
        if user_id == self.gateway.user_id or user_id in settings.ignored_user_ids:
            return True
        if user_id in settings.moderator_ids:
            return True
        management = self.forum_rooms["management"]
        for room in dict.fromkeys([room_id or management, management]):
            try:
                if await self.powers.is_moderator(user_id, [room]):
                    return True
            except MatrixError:
                log.warning("cannot read power levels of %s", room)
        return False

    # --- audit ----------------------------------------------------------------------
    async def audit(self, **fields: Unpack[AuditFields]) -> None:
        """Record an action in the audit log, in its own transaction."""
        async with self.sessionmaker() as s, s.begin():
            await Audit(s).add(**fields)

    # --- membership -----------------------------------------------------------------
    async def ban(self, user_id: str, reason: str | None) -> list[str]:
        return await self.across(lambda r: self.gateway.ban(r, user_id, reason))

    async def unban(self, user_id: str, reason: str | None = None) -> list[str]:
        return await self.across(lambda r: self.gateway.unban(r, user_id, reason))

    async def kick(self, user_id: str, reason: str | None) -> list[str]:
        return await self.across(lambda r: self.gateway.kick(r, user_id, reason))

    async def banned(self) -> set[str]:
        """Everyone banned from at least one forum room."""
        pages = await asyncio.gather(
            *(self.gateway.members(r, "ban") for r in self.rooms), return_exceptions=True
        )
        out: set[str] = set()
        for page in pages:
            if isinstance(page, asyncio.CancelledError):
                raise page
            if not isinstance(page, BaseException):
                out.update(page)
        return out

    async def members(self) -> dict[str, str | None]:
        """Joined members of the forum rooms and their display names."""
        pages = await asyncio.gather(
            *(self.gateway.members(r, "join") for r in self.rooms), return_exceptions=True
        )
        out: dict[str, str | None] = {}
        for page in pages:
            if isinstance(page, BaseException):
                if isinstance(page, asyncio.CancelledError):
                    raise page
                continue
            for user, content in page.items():
                name = content.get("displayname")
                if out.get(user) is None:
                    out[user] = name if isinstance(name, str) else None
        return out

    # --- mutes ----------------------------------------------------------------------
    async def _set_muted(self, user_id: str, muted: bool) -> list[str]:
        return await self.across(lambda r: self.powers.set_muted(user_id, muted, r))

    async def mute(
        self, user_id: str, until: datetime | None, reason: str | None, actor: str
    ) -> list[str]:
        async with self._muting(user_id):
            async with self.sessionmaker() as s, s.begin():
                await Mutes(s).set(user_id, until, reason, actor)
            rooms = await self._set_muted(user_id, True)
        self.mute_changed.set()
        return rooms

    async def unmute(self, user_id: str) -> tuple[bool, list[str], bool]:
        """Lift a mute in every room (idempotent): whether it was recorded, the rooms
        where it is lifted, and whether that is every room. The record goes only once
        every room's power levels were changed; otherwise it stays, due now, so that the
        timer (:class:`~.mutes.MuteTimer`) tries again at its next look."""
        async with self._muting(user_id):
            return await self._unmute(user_id)

    async def _unmute(self, user_id: str) -> tuple[bool, list[str], bool]:
        async with self.sessionmaker() as s:
            record = await Mutes(s).get(user_id)
        was = record is not None
        now = self.clock()
        already_due = record is not None and record.until is not None and record.until <= now
        targets = self.rooms
        rooms = await self._set_muted(user_id, False)
        complete = set(rooms) >= set(targets)
        async with self.sessionmaker() as s, s.begin():
            if complete:
                await Mutes(s).remove(user_id)
            elif was and not already_due:
                await Mutes(s).make_due(user_id, now)
        if complete or not already_due:  # the timer's schedule changed (not on its retries)
            self.mute_changed.set()
        return was, rooms, complete

    async def reapply_mutes(self) -> None:
        """After a restart (provisioning may have reset power levels): mute again."""
        async with self.sessionmaker() as s:
            mutes = await Mutes(s).all()
        now = self.clock()
        active = [m.user_id for m in mutes if m.until is None or m.until > now]

        async def again(user_id: str) -> None:
            async with self._muting(user_id):
                await self._set_muted(user_id, True)

        await asyncio.gather(*(again(u) for u in active))

    # --- server ACL -----------------------------------------------------------------
    async def deny_server(self, server: str) -> list[str]:
        async def one(room: str) -> None:
            content = await self.gateway.get_state_event(room, "m.room.server_acl")
            acl = dict(content or {"allow": ["*"], "allow_ip_literals": True, "deny": []})
            deny = list(acl.get("deny") or [])
            if server in deny:
                return
            acl["deny"] = [*deny, server]
            await self.gateway.put_state(room, "m.room.server_acl", acl)

        return await self.across(one)

    async def allow_server(self, server: str) -> list[str]:
        """Lift :meth:`deny_server`: ``server`` leaves the ACL's deny list of every room."""

        async def one(room: str) -> None:
            content = await self.gateway.get_state_event(room, "m.room.server_acl")
            if not content or server not in (content.get("deny") or []):
                return
            acl = dict(content)
            acl["deny"] = [d for d in content.get("deny") or [] if d != server]
            await self.gateway.put_state(room, "m.room.server_acl", acl)

        return await self.across(one)

    # --- messages -------------------------------------------------------------------
    async def redact_many(self, events: Iterable[tuple[str, str]], reason: str | None) -> int:
        """Redact (room, event id) pairs concurrently; how many were redacted."""
        pairs = list(dict.fromkeys(events))
        results = await self.bounded(
            partial(self.gateway.redact, room, ev, reason) for room, ev in pairs
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        for r in failed:
            if isinstance(r, asyncio.CancelledError):
                raise r
            log.info("redaction failed: %s", r)
        return len(pairs) - len(failed)

    async def recent_events(
        self, user_id: str, count: int | None, since: timedelta | None
    ) -> list[tuple[str, str, int]]:
        """The person's recent redactable events in forum rooms: (room, event id, ts)."""
        cutoff = int((self.clock() - since).timestamp() * 1000) if since else 0
        wanted = count or 1000

        async def scan(room: str) -> list[tuple[str, str, int]]:
            found: list[tuple[str, str, int]] = []
            token: str | None = None
            for _ in range(20):
                page = await self.gateway.messages(room, from_token=token, limit=100)
                chunk = [e for e in page.get("chunk") or [] if isinstance(e, dict)]
                for e in chunk:
                    ts = int(e.get("origin_server_ts") or 0)
                    if ts < cutoff:
                        return found
                    if (
                        e.get("sender") == user_id
                        and e.get("type") in REDACTABLE
                        and e.get("content")
                        and "state_key" not in e
                    ):
                        found.append((room, str(e["event_id"]), ts))
                if len(found) >= wanted or not chunk:
                    return found
                end = page.get("end")
                if not isinstance(end, str) or end == token:
                    return found
                token = end
            return found

        pages = await asyncio.gather(*(scan(r) for r in self.rooms), return_exceptions=True)
        events: list[tuple[str, str, int]] = []
        for page in pages:
            if isinstance(page, BaseException):
                if isinstance(page, asyncio.CancelledError):
                    raise page
                log.info("cannot read history: %s", page)
                continue
            events.extend(page)
        events.sort(key=lambda e: e[2], reverse=True)
        return events[:wanted]

    # --- direct messages ------------------------------------------------------------
    async def dm(self, user_id: str, body: str, html: str) -> str:
        """Send to the person in the DM room the bot keeps with them (made once)."""
        async with self.sessionmaker() as s:
            room = await DirectRooms(s).get(user_id)
        if room is None:
            room = await self.gateway.create_dm(user_id)
            async with self.sessionmaker() as s, s.begin():
                await DirectRooms(s).set(user_id, room)
        return await self.gateway.send_text(room, body, html)

    # --- policy list ----------------------------------------------------------------
    async def publish_rule(self, kind: str, entity: str, reason: str | None) -> str:
        content = {"entity": entity, "recommendation": "m.ban", "reason": reason or ""}
        return await self.gateway.put_state(
            self.forum_rooms["policy"], f"m.policy.rule.{kind}", content, rule_state_key(entity)
        )

    async def withdraw_rule(self, kind: str, entity: str) -> str:
        return await self.gateway.put_state(
            self.forum_rooms["policy"], f"m.policy.rule.{kind}", {}, rule_state_key(entity)
        )
