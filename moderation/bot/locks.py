"""Locks of the topic rooms: read-only (``!lock``) and knock-only joins (after a join
wave). Each lock keeps what it replaced, stored, so that unlocking restores it and a
restart (or a provisioning run) locks again."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.settings import Settings

from .actions import Actions
from .repositories import State


def _closed(content: dict[str, Any] | None) -> bool:
    """Whether a room's ``m.room.join_rules`` content already keeps newcomers out."""
    return (content or {}).get("join_rule") in {"knock", "invite"}


@dataclass(kw_only=True, eq=False)
class RoomLocks:
    actions: Actions
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    doors_closed: bool = field(init=False, default=False)
    """Set the moment a join lock is decided, before any room is switched (switching a
    hundred rooms takes seconds): the spam checker refuses joins to the topic rooms
    meanwhile, as their knock-only rule will. Cleared by :meth:`unlock_joins`."""

    async def lock(self) -> list[str]:
        level = self.settings.power_levels.moderator
        saved: dict[str, int] = {}

        async def one(room: str) -> None:
            def change(pl: dict[str, Any]) -> bool:
                current = int(pl.get("events_default", 0))
                saved.setdefault(room, current)
                if current >= level:
                    return False
                pl["events_default"] = level
                return True

            await self.actions.edit_power_levels(room, change)

        async with self.sessionmaker() as s:
            previous = (await State(s).get("lock")) or {}
        rooms = await self.actions.across(one, self.actions.topic_rooms)
        merged = {**{r: v for r, v in saved.items() if v < level}, **previous.get("rooms", {})}
        async with self.sessionmaker() as s, s.begin():
            await State(s).set("lock", {"rooms": merged})
        return rooms

    async def unlock(self) -> list[str]:
        async with self.sessionmaker() as s:
            state = (await State(s).get("lock")) or {}
        previous: dict[str, int] = state.get("rooms", {})
        members = self.settings.power_levels.members

        async def one(room: str) -> None:
            def change(pl: dict[str, Any]) -> bool:
                target = previous.get(room, members)
                if pl.get("events_default") == target:
                    return False
                pl["events_default"] = target
                return True

            await self.actions.edit_power_levels(room, change)

        rooms = await self.actions.across(one, self.actions.topic_rooms)
        async with self.sessionmaker() as s, s.begin():
            await State(s).delete("lock")
        return rooms

    async def lock_joins(self) -> list[str]:
        """Make the topic rooms knock-only; the rooms that are (those already knock-only or
        invite-only included). Every room's rule is read first (concurrently, bounded as
        every Space-wide action), and the lock is recorded with what it replaces *before*
        the first switch: a service that dies while switching leaves a lock on record,
        which its next start (or the standby taking over) finishes and ``!unlock-joins``
        undoes."""
        self.doors_closed = True
        async with self.sessionmaker() as s:
            previous = (await State(s).get("join_lock")) or {}
        saved: dict[str, Any] = dict(previous.get("rooms", {}))
        topics = self.actions.topic_rooms
        gateway = self.actions.gateway
        read = await self.actions.bounded(
            partial(gateway.get_state_event, r, "m.room.join_rules") for r in topics
        )
        closed: list[str] = []
        to_switch: list[str] = []
        for room, content in zip(topics, read, strict=True):
            if isinstance(content, asyncio.CancelledError):
                raise content
            if isinstance(content, BaseException):  # tried again by the switch below
                to_switch.append(room)
                continue
            if _closed(content):
                closed.append(room)
                continue
            saved.setdefault(room, content or {})
            to_switch.append(room)
        async with self.sessionmaker() as s, s.begin():
            await State(s).set("join_lock", {"rooms": saved})

        async def one(room: str) -> None:
            if room not in saved:  # its rule could not be read: read it again
                content = await gateway.get_state_event(room, "m.room.join_rules") or {}
                if _closed(content):
                    return
                saved[room] = content
                async with self.sessionmaker() as s, s.begin():
                    await State(s).set("join_lock", {"rooms": saved})
            await gateway.put_state(room, "m.room.join_rules", {"join_rule": "knock"})

        return closed + await self.actions.across(one, to_switch)

    async def locked(self) -> bool:
        async with self.sessionmaker() as s:
            return (await State(s).get("lock")) is not None

    async def joins_locked(self) -> bool:
        async with self.sessionmaker() as s:
            return (await State(s).get("join_lock")) is not None

    async def unlock_joins(self) -> list[str]:
        async with self.sessionmaker() as s:
            state = await State(s).get("join_lock")
        if state is None:
            self.doors_closed = False
            return []
        saved: dict[str, Any] = state.get("rooms", {})
        rooms = await self.actions.across(
            lambda r: self.actions.gateway.put_state(r, "m.room.join_rules", saved[r]), list(saved)
        )
        async with self.sessionmaker() as s, s.begin():
            await State(s).delete("join_lock")
        self.doors_closed = False
        return rooms

    async def reapply_locks(self) -> None:
        async with self.sessionmaker() as s:
            lock = await State(s).get("lock")
            join_lock = await State(s).get("join_lock")
        if lock is not None:
            await self.lock()
        if join_lock is not None:
            await self.lock_joins()
