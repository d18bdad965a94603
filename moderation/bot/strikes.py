"""Graduated steps: each offence moves a person one step up the configured ladder
(warn, mute, ban...), back to the first step after a quiet period. Stored strikes for
real runs; a simulated tally for dry runs, never stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.bounded import LRUDict
from forum.storage.models import utcnow

from .repositories import Strikes
from .tuning import Tuning

if TYPE_CHECKING:
    from forum.context import Clock

#: The last strike of a person: its step index and when it was given.
Strike = tuple[int, datetime]


@dataclass(kw_only=True, eq=False)
class StrikeLadder:
    """The stored strikes: :meth:`strike` gives the step of a new offence."""

    tuning: Tuning
    sessionmaker: async_sessionmaker[AsyncSession]
    clock: Clock = utcnow

    @property
    def steps(self) -> list[str]:
        return list(self.tuning.current.steps)

    def step_after(self, last: Strike | None, now: datetime) -> int:
        """The step index for an offence at ``now`` after the strike ``last``: the next
        step, or the first again after a quiet period."""
        quiet = timedelta(hours=self.tuning.current.step_reset_hours)
        if last is None or now - last[1] > quiet:
            return 0
        return min(last[0] + 1, len(self.steps) - 1)

    async def stored(self, user: str) -> Strike | None:
        async with self.sessionmaker() as s:
            current = await Strikes(s).get(user)
        return (current.step, current.last_at) if current else None

    async def strike(self, user: str) -> str:
        """Record an offence of ``user``; the step it calls for."""
        now = self.clock()
        async with self.sessionmaker() as s, s.begin():
            strikes = Strikes(s)
            current = await strikes.get(user)
            index = self.step_after((current.step, current.last_at) if current else None, now)
            await strikes.set(user, index, now)
        return self.steps[index]


class SimulatedStrikes:
    """The steps a real run would take, counted on a tally seeded from the stored strikes,
    so that repeated offences in a dry run show the graduation while the stored strikes
    stay untouched."""

    def __init__(self, ladder: StrikeLadder) -> None:
        self.ladder = ladder
        self.tally: LRUDict[str, Strike] = LRUDict()

    def reset(self) -> None:
        self.tally.clear()

    async def strike(self, user: str) -> str:
        now = self.ladder.clock()
        last = self.tally.get(user)
        if last is None:
            last = await self.ladder.stored(user)
        index = self.ladder.step_after(last, now)
        self.tally[user] = (index, now)
        return self.ladder.steps[index]
