"""Links and media from people who joined the forum less than the configured hours ago."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.events import Message
from forum.storage.models import utcnow

from ..repositories import FirstJoins
from ..text import has_link
from ..tuning import Tuning
from .base import Events, Protection, _

if TYPE_CHECKING:
    from forum.context import Clock

MEDIA = frozenset({"m.image", "m.video", "m.file", "m.audio"})


class NewMemberLinks(Protection):
    kind = "new-member-link"
    label = _("a link or media from a new member")

    def __init__(
        self,
        tuning: Tuning,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        clock: Clock = utcnow,
    ) -> None:
        super().__init__(tuning)
        self.sessionmaker = sessionmaker
        self.clock = clock

    async def check(self, ev: Message) -> Events | None:
        if ev.msgtype not in MEDIA and not has_link(ev.body, ev.formatted_body):
            return None
        if await self.is_new(ev.sender):
            return [(ev.room_id, ev.event_id)]
        return None

    async def is_new(self, user: str) -> bool:
        hours = self.tuning.current.new_member_hours
        if hours <= 0:
            return False
        async with self.sessionmaker() as s:
            joined = await FirstJoins(s).get(user)
        return joined is not None and self.clock() - joined < timedelta(hours=hours)
