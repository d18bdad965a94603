"""The one writer of ``m.room.power_levels`` for an account: every edit of a room's power
levels, from whichever bot, goes through :class:`PowerLevelEditor`.

Matrix has no compare-and-set for state: two writers that each read the content, change
it and put it back overwrite each other's change. So an edit here is a *change function*
applied to the content as it is on the homeserver right now: edits of one room are
serialised, the content is read again before each write, and the write is checked
afterwards (read once more); a change that another writer swept away in between is
applied again, a bounded number of times. Room version 12: the creators have infinite
power and the homeserver refuses a ``users`` map naming them, so an edit never writes
one (a change about a creator is dropped). Reads of the levels are cached per room until
an edit or :meth:`PowerLevelEditor.forget`."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any, Protocol

from forum.bounded import LockTable
from forum.errors import MatrixError
from forum.matrix import CREATOR_POWER_VERSIONS, PowerLevels

log = logging.getLogger(__name__)

POWER_LEVELS = "m.room.power_levels"

#: Changes ``content`` in place; whether it changed anything (nothing is written if not).
Change = Callable[[dict[str, Any]], bool]


class StateAccess(Protocol):
    async def get_state(self, room_id: str) -> list[dict[str, Any]]: ...

    async def get_state_event(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None: ...

    async def put_state(
        self, room_id: str, event_type: str, content: dict[str, Any], state_key: str = ""
    ) -> str: ...


class PowerEditConflict(MatrixError):
    """Another writer swept the change away every time it was made (a failed request to
    its callers, like any other)."""


def creators_of(create_event: dict[str, Any] | None) -> frozenset[str]:
    """The users a room's create event gives infinite power (room version 12 and later):
    its sender and ``additional_creators``; none in earlier versions."""
    if not create_event:
        return frozenset()
    content = create_event.get("content") or {}
    if str(content.get("room_version", "1")) not in CREATOR_POWER_VERSIONS:
        return frozenset()
    found = {create_event.get("sender")}
    extra = content.get("additional_creators")
    if isinstance(extra, list):
        found.update(extra)
    return frozenset(u for u in found if isinstance(u, str))


def without_creators(content: dict[str, Any], creators: frozenset[str]) -> None:
    """Drop the creators from the ``users`` map of ``content`` (in place)."""
    users = content.get("users")
    if isinstance(users, dict):
        for creator in creators & users.keys():
            del users[creator]


class PowerLevelEditor:
    """Serialised, re-read, verified edits of the power levels of rooms, and their cached
    reads. One per account (:attr:`forum.gateway.Gateway.powers`): every component using
    that account edits through it."""

    def __init__(self, state: StateAccess, *, attempts: int = 4) -> None:
        self._state = state
        self.attempts = attempts
        self._locks = LockTable()
        self._cache: dict[str, PowerLevels] = {}
        self._creators: dict[str, frozenset[str]] = {}
        self.edits = 0
        """Writes made (each verified)."""
        self.reapplied = 0
        """Writes made again because another writer had swept the change away."""

    def forget(self, room_id: str) -> None:
        """The levels of ``room_id`` changed (a state event seen): read them again."""
        self._cache.pop(room_id, None)

    async def levels(self, room_id: str, *, fresh: bool = False) -> PowerLevels:
        """The power levels of ``room_id`` (cached until an edit or :meth:`forget`;
        ``fresh``: read now, for a caller that does not see the room's state events)."""
        cached = None if fresh else self._cache.get(room_id)
        if cached is None:
            state = await self._state.get_state(room_id)
            create = next((e for e in state if e.get("type") == "m.room.create"), None)
            self._creators[room_id] = creators_of(create)
            content = next(
                (
                    e.get("content")
                    for e in state
                    if e.get("type") == POWER_LEVELS and e.get("state_key") == ""
                ),
                None,
            )
            cached = self._cache[room_id] = PowerLevels.from_state(content, create)
        return cached

    async def creators(self, room_id: str) -> frozenset[str]:
        """The room's creators (read once: the create event never changes)."""
        found = self._creators.get(room_id)
        if found is None:
            await self.levels(room_id)
            found = self._creators[room_id]
        return found

    async def edit(self, room_id: str, change: Change) -> bool:
        """Apply ``change`` to the power levels of ``room_id`` as they are now; whether
        anything was written. Raises the gateway's errors (``Forbidden``...) and
        :class:`PowerEditConflict` when the change kept being overwritten."""
        async with self._locks(room_id):
            creators = await self.creators(room_id)
            wrote = False
            for attempt in range(self.attempts + 1):
                current = await self._state.get_state_event(room_id, POWER_LEVELS)
                if current is None:
                    # Writing one from nothing would drop every default the room has.
                    log.warning("no power levels in %s: edit not made", room_id)
                    return wrote
                new = copy.deepcopy(current)
                if not change(new):
                    return wrote  # done (or nothing to do); after a write, verified
                without_creators(new, creators)
                if new == current:
                    return wrote  # the change was about a creator: nothing to write
                if attempt == self.attempts:
                    break
                if wrote:
                    self.reapplied += 1
                    log.info("power levels of %s overwritten meanwhile: edit made again", room_id)
                await self._state.put_state(room_id, POWER_LEVELS, new)
                self.edits += 1
                wrote = True
                self.forget(room_id)
            raise PowerEditConflict(f"power levels of {room_id}: change overwritten each time")
