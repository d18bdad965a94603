"""Timed mutes: each is undone at its deadline. The deadlines are stored with the mutes,
so a restart keeps them."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.storage.models import utcnow

from .actions import Actions
from .management import ManagementRoom
from .repositories import Mutes

if TYPE_CHECKING:
    from forum.context import Clock


@dataclass(kw_only=True, eq=False)
class MuteTimer:
    actions: Actions
    sessionmaker: async_sessionmaker[AsyncSession]
    management: ManagementRoom
    clock: Clock = utcnow

    async def run(self) -> None:
        """Forever: undo each timed mute at its deadline; a new mute or an unmute
        (``actions.mute_changed``) makes it look again."""
        changed = self.actions.mute_changed
        while True:
            changed.clear()
            async with self.sessionmaker() as s:
                mutes = await Mutes(s).all()
            now = self.clock()
            for mute in mutes:
                if mute.until is not None and mute.until <= now:
                    await self.actions.unmute(mute.user_id)
                    await self.expired(mute.user_id)
            upcoming = [m.until for m in mutes if m.until is not None and m.until > now]
            wait = min([(u - now).total_seconds() for u in upcoming] + [60.0])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=max(wait, 0.05))

    async def expired(self, user: str) -> None:
        await self.actions.audit(
            actor=self.management.gateway.user_id, action="unmute", target=user,
            reason="expired", source="timer",
        )  # fmt: skip
        body = self.management.t("The mute of {user} has expired.").format(user=user)
        await self.management.say_about(user, body)
