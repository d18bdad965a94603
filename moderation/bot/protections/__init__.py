"""The protections of the forum rooms, one file each behind one interface
(:class:`~.base.Protection`): banned words, mention spam, links and media from new members,
flooding; join waves watch the joins. :class:`MessageGuard` runs the message protections
and hands an offence to the consequences in force."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from forum.events import Message

from ..actions import Actions
from ..consequences import DryRunSwitch, Offence
from .base import Protection
from .flood import Flood
from .join_wave import JoinWave
from .mentions import MentionSpam
from .new_members import NewMemberLinks
from .words import BannedWords

__all__ = [
    "BannedWords",
    "Flood",
    "JoinWave",
    "MentionSpam",
    "MessageGuard",
    "NewMemberLinks",
    "Protection",
]


class MessageGuard:
    """Every message goes past each protection in turn; the first that finds an offence
    decides, unless the sender is a moderator or a bot."""

    def __init__(
        self,
        protections: Sequence[Protection],
        *,
        actions: Actions,
        consequences: DryRunSwitch,
        gettext: Callable[[str], str],
    ) -> None:
        self.protections = list(protections)
        self.actions = actions
        self.consequences = consequences
        self.t = gettext

    async def protect(self, ev: Message) -> None:
        for protection in self.protections:
            protection.observe(ev)
        for protection in self.protections:
            events = await protection.check(ev)
            if events is not None:
                break
        else:
            return
        if await self.actions.is_exempt(ev.sender, ev.room_id):
            return
        protection.acted(ev)
        label = self.t(protection.label)
        reason = self.t("Automatic moderation: {what}").format(what=label)
        offence = Offence(ev, protection.kind, label, reason, events)
        await self.consequences.current.offence(offence)
