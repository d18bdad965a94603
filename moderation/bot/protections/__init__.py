"""The protections of the forum rooms, one file each behind one interface
(:class:`~.base.Protection`): banned words, mention spam, links and media from new members,
flooding; join waves watch the joins.

Each decides purely (:func:`evaluate`: a message's content, its sender and the
:class:`Facts` gathered for it, to a :class:`Finding` or ``None``), so that the bot and
the homeserver's spam check judge alike. :class:`MessageGuard` gathers the facts of each
message of the forum rooms, runs the protections and hands an offence to the
consequences in force."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.events import Message
from forum.storage.models import utcnow

from ..actions import Actions
from ..consequences import DryRunSwitch, Offence
from ..repositories import FirstJoins
from ..tuning import Tuning
from .base import Facts, Finding, Protection, Sent, evaluate, wants_join_time
from .flood import Flood, FloodWindows
from .join_wave import JoinWave
from .mentions import MentionSpam
from .new_members import NewMemberLinks
from .words import BannedWords

__all__ = [
    "BannedWords",
    "Facts",
    "Finding",
    "Flood",
    "FloodWindows",
    "JoinWave",
    "MentionSpam",
    "MessageGuard",
    "NewMemberLinks",
    "Protection",
    "Sent",
    "default_protections",
    "evaluate",
    "wants_join_time",
]


def default_protections() -> list[Protection]:
    """The message protections, in the order they are asked."""
    return [BannedWords(), MentionSpam(), NewMemberLinks(), Flood()]


class MessageGuard:
    """Every message goes past each protection in turn; the first that finds an offence
    decides, unless the sender is a moderator or a bot."""

    def __init__(
        self,
        protections: Sequence[Protection],
        *,
        tuning: Tuning,
        actions: Actions,
        consequences: DryRunSwitch,
        sessionmaker: async_sessionmaker[AsyncSession],
        gettext: Callable[[str], str],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.protections = list(protections)
        self.tuning = tuning
        self.actions = actions
        self.consequences = consequences
        self.sessionmaker = sessionmaker
        self.t = gettext
        self.clock = clock
        self.windows = FloodWindows()

    async def facts(self, ev: Message) -> Facts:
        """What the protections need to know about ``ev`` beyond its content."""
        settings = self.tuning.current
        recent = self.windows.observe(ev, settings.flood_seconds)
        joined_at = None
        if wants_join_time(self.protections, ev.content):
            async with self.sessionmaker() as s:
                joined_at = await FirstJoins(s).get(ev.sender)
        return Facts(settings, self.clock(), joined_at, recent)

    async def protect(self, ev: Message) -> None:
        facts = await self.facts(ev)
        finding = evaluate(self.protections, ev.content, ev.sender, facts)
        if finding is None:
            return
        if await self.actions.is_exempt(ev.sender, ev.room_id):
            return
        if finding.earlier:  # they are removed now: counting starts again
            self.windows.clear(ev.sender)
        events = list(dict.fromkeys([*finding.earlier, (ev.room_id, ev.event_id)]))
        label = self.t(finding.label)
        reason = self.t("Automatic moderation: {what}").format(what=label)
        offence = Offence(ev, finding.kind, label, reason, events)
        await self.consequences.current.offence(offence)
