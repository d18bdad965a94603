"""The member's public name (:mod:`forum.public_names`): the default recorded at
publication consent, the look-alike guard and the change asked with ``!nom-public``."""

from __future__ import annotations

import asyncio
import hashlib
import logging

from forum.errors import MatrixError
from forum.names import (
    PUBLIC_NAME_MAX,
    NameRefused,
    clean_public_name,
    holder_of,
    localpart,
)
from forum.public_names import RELABEL_KIND, PublicNames
from forum.storage import Outbox

from . import messages
from .shared import Shared

log = logging.getLogger(__name__)

REFUSALS = {
    "empty": messages.PUBLIC_NAME_EMPTY,
    "too_long": messages.PUBLIC_NAME_TOO_LONG,
    "invisible": messages.PUBLIC_NAME_INVISIBLE,
    "taken": messages.PUBLIC_NAME_TAKEN,
}


class PublicNaming:
    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    async def current(self, user_id: str) -> str | None:
        async with self.shared.sessionmaker() as s:
            found = await PublicNames(s).get(user_id)
        return found.name if found else None

    async def display_name(self, user_id: str, room_id: str | None) -> str | None:
        """The person's display name now, as the DM with them shows it."""
        if room_id is None:
            return None
        try:
            content = await self.shared.membership_gateway.get_state_event(
                room_id, "m.room.member", user_id
            )
        except MatrixError:
            return None
        name = (content or {}).get("displayname")
        return name if isinstance(name, str) else None

    async def _members(self, room_id: str) -> dict[str, str | None]:
        try:
            page = await self.shared.moderation_gateway.members(room_id, "join")
        except MatrixError:
            log.warning("public names: cannot read the members of %s", room_id)
            return {}
        out: dict[str, str | None] = {}
        for user, content in page.items():
            name = content.get("displayname")
            out[user] = name if isinstance(name, str) else None
        return out

    async def names_of_others(self, user_id: str) -> dict[str, list[str | None]]:
        """The names other people go by: every forum member's display names; and for the
        moderators (listed in the settings, or in the management room) and the bots,
        their user id's localpart too."""
        shared = self.shared
        settings = shared.settings
        rooms = list(dict.fromkeys([*shared.forum_rooms, *filter(None, [shared.management])]))
        pages = await asyncio.gather(*(self._members(r) for r in rooms))
        staff = {*settings.moderator_ids, settings.membership_bot_id, settings.moderation_bot_id}
        if shared.management:
            staff |= set(pages[rooms.index(shared.management)])
        out: dict[str, list[str | None]] = {u: [localpart(u)] for u in staff}
        for page in pages:
            for user, name in page.items():
                out.setdefault(user, []).append(name)
        out.pop(user_id, None)
        return out

    async def refusal(self, user_id: str, name: str) -> NameRefused | None:
        """Why ``user_id`` may not take ``name`` (already cleaned): another person's
        public name, a member's display name or a moderator's name, or a look-alike of
        one; None when it is free."""
        async with self.shared.sessionmaker() as s:
            holders = await PublicNames(s).holders(name, excluding=user_id)
        if holders:
            return NameRefused("taken", holders[0].user_id)
        holder = holder_of(name, await self.names_of_others(user_id))
        return NameRefused("taken", holder) if holder else None

    async def default_for(self, user_id: str, room_id: str | None) -> str:
        """The public name recorded at publication consent: the display name now; the
        user id's localpart when the display name cannot be used (someone else's, or
        shaped like it); last, a neutral name no one else has. Someone who has a public
        name keeps it."""
        current = await self.current(user_id)
        if current is not None:
            return current
        candidates = [await self.display_name(user_id, room_id), localpart(user_id)]
        for candidate in candidates:
            if not candidate:
                continue
            try:
                name = clean_public_name(candidate)
            except NameRefused:
                continue
            if await self.refusal(user_id, name) is None:
                return name
        digest = hashlib.sha256(user_id.encode()).hexdigest()[:6]
        return f"{self.shared.t(self.shared.settings.primary_language, messages.MEMBER)}-{digest}"

    def told(self, lang: str, name: str) -> str:
        """What the person is told of their public name (and how to change it)."""
        return self.shared.t(lang, messages.PUBLIC_NAME_IS, name=name, prefix=self.shared.prefix)

    def refused_text(self, lang: str, refused: NameRefused) -> str:
        return self.shared.t(
            lang, REFUSALS[refused.reason], limit=PUBLIC_NAME_MAX, prefix=self.shared.prefix
        )

    async def change(self, user_id: str, raw: str) -> str | NameRefused:
        """``user_id`` asks for ``raw`` as public name: recorded (with, in the same
        transaction, the digest's relabelling of their quotes), or refused."""
        try:
            name = clean_public_name(raw)
        except NameRefused as bad:
            return bad
        taken = await self.refusal(user_id, name)
        if taken is not None:
            return taken
        shared = self.shared
        async with shared.sessionmaker() as s, s.begin():
            await PublicNames(s).set(user_id, name, chosen=True, method="command")
            if RELABEL_KIND in shared.outbox.executors:
                await Outbox(s).add(RELABEL_KIND, {"user_id": user_id})
        shared.notify_outbox()
        return name
