"""Power levels as both bots use them: mutes, the moderator check and the edits of
``m.room.power_levels``, all through the one editor of the moderation account
(:class:`forum.gateway.powers.PowerLevelEditor`: edits of a room serialised, read again
before writing, verified after). The moderation bot (``!mute``, protections, locks) and
the membership bot (a member who did not accept a new charter in time) mute the same way
and can no longer overwrite each other's change."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from forum.gateway.powers import Change, PowerLevelEditor

#: The level of a muted person: below ``events_default`` 0, so they cannot post.
MUTED_LEVEL = -1


def _where(pl: dict[str, Any], open_rooms_only: bool) -> bool:
    """Whether a mute concerns the room: every room, or only where members post
    (``events_default`` 0; a locked room or the announcements room is left alone)."""
    return not open_rooms_only or pl.get("events_default", 0) == 0


def muting(user_id: str, *, open_rooms_only: bool = False) -> Change:
    """The change that mutes ``user_id`` (level :data:`MUTED_LEVEL`)."""

    def change(pl: dict[str, Any]) -> bool:
        if not _where(pl, open_rooms_only):
            return False
        users = pl.setdefault("users", {})
        if users.get(user_id) == MUTED_LEVEL:
            return False
        users[user_id] = MUTED_LEVEL
        return True

    return change


def unmuting(user_id: str, *, open_rooms_only: bool = False) -> Change:
    """The change that lifts a mute of ``user_id`` (their level returns to the default)."""

    def change(pl: dict[str, Any]) -> bool:
        if not _where(pl, open_rooms_only):
            return False
        users = pl.get("users")
        if not isinstance(users, dict):
            return False
        level = users.get(user_id)
        if isinstance(level, int) and not isinstance(level, bool) and level <= MUTED_LEVEL:
            del users[user_id]
            return True
        return False

    return change


@dataclass(eq=False)
class Powers:
    """Power levels over the moderation account's editor, for both bots."""

    editor: PowerLevelEditor
    moderator_level: int

    async def edit(self, room_id: str, change: Change) -> bool:
        return await self.editor.edit(room_id, change)

    async def set_muted(
        self, user_id: str, muted: bool, room_id: str, *, open_rooms_only: bool = False
    ) -> bool:
        """Mute ``user_id`` in ``room_id`` or lift it; whether the levels changed."""
        make = muting if muted else unmuting
        return await self.editor.edit(room_id, make(user_id, open_rooms_only=open_rooms_only))

    def forget(self, room_id: str) -> None:
        self.editor.forget(room_id)

    async def level(self, room_id: str, user_id: str, *, fresh: bool = False) -> float:
        return (await self.editor.levels(room_id, fresh=fresh)).level(user_id)

    async def is_moderator(
        self, user_id: str, rooms: Iterable[str], *, fresh: bool = False
    ) -> bool:
        """Whether ``user_id`` has the moderators' level in any of ``rooms`` (creators of a
        room of version 12 included: their power is infinite). ``fresh``: the levels read
        now (for a bot that does not watch the power-level events of these rooms)."""
        for room in dict.fromkeys(rooms):
            if await self.level(room, user_id, fresh=fresh) >= self.moderator_level:
                return True
        return False
