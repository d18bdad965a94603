"""Membership: invite, kick, ban, unban, join, knock, leave; who is in a room, and where we are."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from forum.gateway.state import StateEndpoints
from forum.gateway.transport import path


class MembershipEndpoints(StateEndpoints):
    async def _membership_action(
        self, action: str, room_id: str, user_id: str, reason: str | None
    ) -> None:
        body: dict[str, Any] = {"user_id": user_id}
        if reason:
            body["reason"] = reason
        await self.request("POST", path("rooms", room_id, action), body=body)

    async def invite(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        await self._membership_action("invite", room_id, user_id, reason)

    async def kick(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        await self._membership_action("kick", room_id, user_id, reason)

    async def ban(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        await self._membership_action("ban", room_id, user_id, reason)

    async def unban(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        await self._membership_action("unban", room_id, user_id, reason)

    async def _enter(self, action: str, room: str, via: Iterable[str], reason: str | None) -> str:
        """Join or knock on a room by id or alias, through the ``via`` servers."""
        body = {"reason": reason} if reason else {}
        data = await self.request(
            "POST",
            path(action, room),
            query={"server_name": list(via)} if via else None,
            body=body,
        )
        return str(data["room_id"])

    async def join(self, room: str, via: Iterable[str] = (), reason: str | None = None) -> str:
        """Join a room by id or alias, with ``via`` servers (needed for v12 room ids)."""
        return await self._enter("join", room, via, reason)

    async def knock(self, room: str, reason: str | None = None, via: Iterable[str] = ()) -> str:
        return await self._enter("knock", room, via, reason)

    async def leave(self, room_id: str, reason: str | None = None) -> None:
        body = {"reason": reason} if reason else {}
        await self.request("POST", path("rooms", room_id, "leave"), body=body)

    async def members(
        self, room_id: str, membership: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Member events' contents by user id (``membership`` filters, e.g. ``knock``)."""
        query = {"membership": membership} if membership else None
        data = await self.request("GET", path("rooms", room_id, "members"), query=query)
        out: dict[str, dict[str, Any]] = {}
        for ev in data.get("chunk") or []:
            if isinstance(ev, dict) and isinstance(ev.get("state_key"), str):
                out[ev["state_key"]] = ev.get("content") or {}
        return out

    async def membership(self, room_id: str, user_id: str) -> str | None:
        """``user_id``'s membership in ``room_id`` ("join", "invite", "leave"...), or
        ``None`` if they never had one."""
        content = await self.get_state_event(room_id, "m.room.member", user_id)
        value = (content or {}).get("membership")
        return value if isinstance(value, str) else None

    async def joined_rooms(self) -> list[str]:
        data = await self.request("GET", "/joined_rooms")
        return [r for r in data.get("joined_rooms") or [] if isinstance(r, str)]
