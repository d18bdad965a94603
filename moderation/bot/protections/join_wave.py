"""Join waves: when more distinct people than configured join (or knock) within the
configured seconds, the topic rooms become knock-only (lifted by ``!unlock-joins``)."""

from __future__ import annotations

import asyncio
from collections import deque

from forum.events import Membership

from ..consequences import DryRunSwitch
from ..locks import RoomLocks
from ..tuning import Tuning
from .base import received_at


class JoinWave:
    """Watches the joins and knocks on the forum rooms (not a message protection: it sees
    arrivals; one person counts once in a window, knock and join alike)."""

    def __init__(self, tuning: Tuning, *, locks: RoomLocks, consequences: DryRunSwitch) -> None:
        self.tuning = tuning
        self.locks = locks
        self.consequences = consequences
        #: Recent joins: (when, user id), oldest first.
        self.join_times: deque[tuple[float, str]] = deque()
        self._acting = asyncio.Lock()

    async def joined_event(self, ev: Membership) -> None:
        """A join or a knock, dated by when our homeserver received it (not ``origin_server_ts``,
        which a remote server sets)."""
        await self.joined(ev.target, received_at(ev.raw))

    async def joined(self, user: str, now: float) -> None:
        wave = self.arrived(user, now)
        if wave is not None:
            await self.act(wave)

    def arrived(self, user: str, now: float) -> int | None:
        """Count an arrival at ``now``; the number of distinct people when it completes a
        wave (the window starts again: arrivals handled meanwhile start a new one)."""
        cfg = self.tuning.current
        joins = self.join_times
        joins.append((now, user))
        while joins and joins[0][0] < now - cfg.join_wave_seconds:
            joins.popleft()
        distinct = {u for _, u in joins}
        if len(distinct) < cfg.join_wave_joins:
            return None
        joins.clear()
        return len(distinct)

    async def act(self, joined: int) -> None:
        """The consequences of a wave of ``joined`` people, once while the lock stands."""
        async with self._acting:  # a second wave seen while the first one locks the rooms
            if await self.locks.joins_locked():  # finds them locked
                return
            seconds = int(self.tuning.current.join_wave_seconds)
            await self.consequences.current.join_wave(joined, seconds)
