"""Timed mutes: each is undone at its deadline. The deadlines are stored with the mutes,
so a restart keeps them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.storage.models import utcnow

from .actions import Actions
from .management import ManagementRoom
from .repositories import Mutes

if TYPE_CHECKING:
    from forum.context import Clock

log = logging.getLogger(__name__)

#: a timed mute that could not be lifted is tried again after this many seconds
RETRY_SECONDS = 10.0


@dataclass(kw_only=True, eq=False)
class MuteTimer:
    actions: Actions
    sessionmaker: async_sessionmaker[AsyncSession]
    management: ManagementRoom
    clock: Clock = utcnow

    async def run(self) -> None:
        """Forever: undo each timed mute at its deadline (see :meth:`step`)."""
        while True:
            await self.step()

    async def step(self) -> float | None:
        """One pass: undo the timed mutes whose deadline has come, each on its own (one
        that fails, or is lifted in some rooms only, keeps its record and is tried again
        on the next pass, at most :data:`RETRY_SECONDS` later; the others are lifted),
        then wait for the next deadline, a new mute or an unmute
        (``actions.mute_changed``)."""
        changed = self.actions.mute_changed
        changed.clear()
        async with self.sessionmaker() as s:
            mutes = await Mutes(s).all()
        now = self.clock()
        failed = False
        for mute in mutes:
            if mute.until is not None and mute.until <= now:
                try:
                    _was, _rooms, complete = await self.actions.unmute(mute.user_id)
                except Exception:
                    failed = True
                    log.exception("could not lift the timed mute of %s", mute.user_id)
                    continue
                if not complete:  # still recorded: tried again at the next look
                    failed = True
                    log.warning("the timed mute of %s is not lifted in every room", mute.user_id)
                    continue
                try:
                    await self.expired(mute.user_id)
                except Exception:
                    log.exception("the mute of %s was lifted but not announced", mute.user_id)
        upcoming = [m.until for m in mutes if m.until is not None and m.until > now]
        wait = min([(u - now).total_seconds() for u in upcoming] + [60.0])
        if failed:
            wait = min(wait, RETRY_SECONDS)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout=max(wait, 0.05))
        return None

    async def expired(self, user: str) -> None:
        await self.actions.audit(
            actor=self.management.gateway.user_id, action="unmute", target=user,
            reason="expired", source="timer",
        )  # fmt: skip
        body = self.management.t("The mute of {user} has expired.").format(user=user)
        await self.management.say_about(user, body)
