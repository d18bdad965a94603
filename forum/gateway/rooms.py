"""Rooms and messages: send, react, redact, create rooms and DMs, read events, report."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from forum.gateway.account import AccountEndpoints
from forum.gateway.transport import Transport, path


class RoomEndpoints(AccountEndpoints):
    def __init__(self, transport: Transport) -> None:
        super().__init__(transport)
        self._direct_lock = asyncio.Lock()

    async def send_event(
        self, room_id: str, event_type: str, content: dict[str, Any], *, txn_id: str | None = None
    ) -> str:
        """Send an event. ``txn_id``: a transaction id the caller derives from what the
        event is for, so that sending it again (a replay after a crash) gets the same
        event back from the homeserver instead of a second one; a fresh one by default."""
        data = await self.request(
            "PUT",
            path("rooms", room_id, "send", event_type, txn_id or self._transport.txn_id()),
            body=content,
        )
        return str(data["event_id"])

    async def send_text(
        self,
        room_id: str,
        body: str,
        html: str | None = None,
        *,
        notice: bool = True,
        reply_to: str | None = None,
        mentions: Iterable[str] = (),
        txn_id: str | None = None,
    ) -> str:
        content: dict[str, Any] = {"msgtype": "m.notice" if notice else "m.text", "body": body}
        if html is not None:
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = html
        if reply_to:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        content["m.mentions"] = {"user_ids": list(mentions)}
        return await self.send_event(room_id, "m.room.message", content, txn_id=txn_id)

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        return await self.send_event(
            room_id,
            "m.reaction",
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}},
        )

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        body = {"reason": reason} if reason else {}
        data = await self.request(
            "PUT", path("rooms", room_id, "redact", event_id, self._transport.txn_id()), body=body
        )
        return str(data.get("event_id", ""))

    async def create_room(self, payload: dict[str, Any]) -> str:
        data = await self.request("POST", "/createRoom", body=payload)
        return str(data["room_id"])

    async def create_dm(self, user_id: str, *, name: str | None = None) -> str:
        """Open an unencrypted direct chat with ``user_id`` (recorded in ``m.direct``)."""
        payload: dict[str, Any] = {
            "preset": "trusted_private_chat",
            "is_direct": True,
            "invite": [user_id],
        }
        if name:
            payload["name"] = name
        room_id = await self.create_room(payload)
        await self.remember_dm(user_id, room_id)
        return room_id

    async def remember_dm(self, user_id: str, room_id: str) -> None:
        """Record ``room_id`` as a direct chat with ``user_id`` in ``m.direct`` (a DM the
        person opened, too: other features find it there); nothing when it is already."""
        async with self._direct_lock:  # read-modify-write of one account data event
            direct = await self.get_account_data("m.direct") or {}
            rooms = [r for r in direct.get(user_id, []) if isinstance(r, str)]
            if room_id in rooms:
                return
            direct[user_id] = [*rooms, room_id]
            await self.set_account_data("m.direct", direct)

    async def messages(
        self,
        room_id: str,
        *,
        from_token: str | None = None,
        direction: str = "b",
        limit: int = 100,
        to_token: str | None = None,
    ) -> dict[str, Any]:
        query: dict[str, str | int] = {"dir": direction, "limit": limit}
        if from_token:
            query["from"] = from_token
        if to_token:
            query["to"] = to_token
        return await self.request("GET", path("rooms", room_id, "messages"), query=query)

    async def get_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        return await self.request("GET", path("rooms", room_id, "event", event_id))

    async def report_event(self, room_id: str, event_id: str, reason: str) -> None:
        await self.request(
            "POST", path("rooms", room_id, "report", event_id), body={"reason": reason}
        )
