"""Helpers for the moderation bot's tests: a whole forum with the moderation component,
a moderator who joined every room, members who joined the forum, commands and waits."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from forum.app import Service
from forum.homeserver import EmbeddedHomeserver
from moderation.bot import FEATURE
from moderation.bot.bot import ModerationBot
from tests.forum_fixtures import CONFIG_DIR, forum_data, register_bots, settings_from
from tests.matrix_user import Event, TestUser

FAST = {
    "flood_messages": 5,
    "flood_seconds": 20,
    "mention_limit": 3,
    "new_member_hours": 1,
    "words": ["arnaque", "Idiot"],
    "join_wave_joins": 50,
    "join_wave_seconds": 30,
    "steps": ["warn", "mute:1h", "ban"],
    "step_reset_hours": 24,
    "report_poll_seconds": 0.5,
}


def is_message(room: str, sender: str | None = None, contains: str | None = None) -> Any:
    def pred(e: Event) -> bool:
        return (
            e["room_id"] == room
            and e["type"] == "m.room.message"
            and (sender is None or e["sender"] == sender)
            and (contains is None or contains in e["content"]["body"])
        )

    return pred


def is_reply(room: str, sender: str, event_id: str) -> Any:
    """``sender``'s message in ``room`` replying to ``event_id``."""

    def pred(e: Event) -> bool:
        return (
            e["room_id"] == room
            and e["sender"] == sender
            and e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == event_id
        )

    return pred


class ModForum:
    """A running forum with the moderation bot and a joined moderator."""

    def __init__(self, hs: EmbeddedHomeserver, service: Service, moderator: TestUser) -> None:
        self.hs = hs
        self.service = service
        self.mod = moderator
        self.users: list[TestUser] = [moderator]

    @property
    def ctx(self) -> Any:
        assert self.service.ctx is not None
        return self.service.ctx

    @property
    def bot(self) -> ModerationBot:
        return self.service.feature("moderation")  # type: ignore[no-any-return]

    @property
    def bot_id(self) -> str:
        return str(self.ctx.moderation_gateway.user_id)

    @property
    def ids(self) -> dict[str, str]:
        return dict(self.ctx.rooms)

    @property
    def mgmt(self) -> str:
        return self.ids["management"]

    @property
    def forum_rooms(self) -> list[str]:
        return list(self.ctx.rooms.forum_ids)

    @property
    def topic(self) -> str:
        return self.ids["topic:droits-enfants"]

    async def user(
        self, name: str, display_name: str | None = None, *, sync: bool = True
    ) -> TestUser:
        user = await TestUser.create(self.hs, name, display_name=display_name, sync=sync)
        self.users.append(user)
        return user

    async def member(
        self, name: str, display_name: str | None = None, *, sync: bool = True
    ) -> TestUser:
        """A person who joined the Space and every forum room."""
        user = await self.user(name, display_name, sync=sync)
        await self.join_forum(user)
        return user

    async def join_forum(self, user: TestUser) -> None:
        via = [self.hs.server_name]
        await self.ctx.moderation_gateway.invite(self.ids["space"], user.user_id)
        await user.join(self.ids["space"], via=via)
        others = [r for r in self.forum_rooms if r != self.ids["space"]]
        await asyncio.gather(*(user.join(r, via=via) for r in others))

    async def command(self, text: str, sender: TestUser | None = None, timeout: float = 20) -> str:
        """Send a command in the management room; the bot's reply (plain body)."""
        sender = sender or self.mod
        mark = sender.mark()
        event_id = await sender.send_text(self.mgmt, text)
        reply = await sender.wait_for(
            is_reply(self.mgmt, self.bot_id, event_id), timeout, after=mark
        )
        return str(reply["content"]["body"])

    async def wait_membership(
        self, user_id: str, membership: str, rooms: list[str] | None = None, after: int = 0,
        timeout: float = 20,
    ) -> None:  # fmt: skip
        """The moderator sees ``user_id`` become ``membership`` in every room of ``rooms``."""
        waiting = set(rooms or self.forum_rooms)

        def pred(e: Event) -> bool:
            if (
                e["type"] == "m.room.member"
                and e["state_key"] == user_id
                and e["content"]["membership"] == membership
                and e["room_id"] in waiting
                and e["_section"].endswith("timeline")
            ):
                waiting.discard(e["room_id"])
            return not waiting

        await self.mod.wait_for(pred, timeout, after=after)

    async def dm_room(self, user: TestUser, after: int = 0, timeout: float = 20) -> str:
        """Wait for the bot's DM invite to ``user``, join it, return its id."""
        invite = await user.wait_for(
            lambda e: (
                e["_section"] == "invite"
                and e["type"] == "m.room.member"
                and e["state_key"] == user.user_id
                and e["content"]["is_direct"] is True
            ),
            timeout,
            after=after,
        )
        room = str(invite["room_id"])
        await user.join(room)
        return room

    async def power(self, room: str, user_id: str) -> int:
        pl = await self.mod.get_state_event(room, "m.room.power_levels")
        return int(pl.get("users", {}).get(user_id, pl.get("users_default", 0)))

    async def wait_redacted(
        self, event_ids: list[str], after: int = 0, timeout: float = 20
    ) -> None:
        waiting = set(event_ids)

        def pred(e: Event) -> bool:
            if e["type"] == "m.room.redaction":
                waiting.discard(e.get("redacts") or e["content"].get("redacts"))
            return not waiting

        await self.mod.wait_for(pred, timeout, after=after)

    async def close_users(self) -> None:
        for u in self.users:
            await u.close()


async def start_moderated(
    hs: EmbeddedHomeserver,
    home: Path,
    *,
    moderation: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    moderator: TestUser | None = None,
) -> ModForum:
    """Start a forum with only the moderation component; the moderator joins everything."""
    mod = moderator or await TestUser.create(hs, "mod", display_name="Afi")
    if data is None:
        data = forum_data(hs, moderators=[mod.user_id])
        data["moderation"] = {**FAST, **(moderation or {})}
    settings = settings_from(data)
    await register_bots(hs, settings)
    await asyncio.to_thread(home.mkdir, parents=True, exist_ok=True)
    service = Service(settings, config_dir=CONFIG_DIR, home=home, features=[FEATURE], web_port=0)
    await service.start()
    forum = ModForum(hs, service, mod)
    ids = forum.ids
    via = [hs.server_name]
    rooms = [*forum.forum_rooms, ids["management"]]
    for room in rooms:
        await mod.wait_for_invite(room, timeout=30)
    await asyncio.gather(*(mod.join(r, via=via) for r in rooms))
    return forum


@asynccontextmanager
async def moderated_forum(hs: EmbeddedHomeserver, home: Path, **kw: Any) -> AsyncIterator[ModForum]:
    forum = await start_moderated(hs, home / secrets.token_hex(3), **kw)
    try:
        yield forum
    finally:
        await forum.service.stop()
        await forum.close_users()
