"""Room state: read and write state events, power levels, aliases, a Space's hierarchy."""

from __future__ import annotations

from typing import Any

from forum.gateway.endpoints import Endpoints
from forum.gateway.transport import CLIENT_V1, path
from forum.matrix import PowerLevels


class StateEndpoints(Endpoints):
    async def get_state(self, room_id: str) -> list[dict[str, Any]]:
        data = await self.request("GET", path("rooms", room_id, "state"))
        value = data.get("value")
        return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []

    async def get_state_event(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None:
        return await self._get_or_none(path("rooms", room_id, "state", event_type, state_key))

    async def put_state(
        self, room_id: str, event_type: str, content: dict[str, Any], state_key: str = ""
    ) -> str:
        data = await self.request(
            "PUT", path("rooms", room_id, "state", event_type, state_key), body=content
        )
        return str(data.get("event_id", ""))

    async def power_levels(self, room_id: str) -> PowerLevels:
        """Power levels decided from the state events (correct for room version 12)."""
        state = await self.get_state(room_id)
        pl = next(
            (
                e.get("content")
                for e in state
                if e.get("type") == "m.room.power_levels" and e.get("state_key") == ""
            ),
            None,
        )
        create = next((e for e in state if e.get("type") == "m.room.create"), None)
        return PowerLevels.from_state(pl, create)

    async def resolve_alias(self, alias: str) -> str | None:
        data = await self._get_or_none(path("directory", "room", alias))
        return None if data is None else str(data["room_id"])

    async def put_alias(self, alias: str, room_id: str) -> None:
        await self.request("PUT", path("directory", "room", alias), body={"room_id": room_id})

    async def hierarchy(self, space_id: str, max_depth: int = 1) -> list[dict[str, Any]]:
        rooms: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            query: dict[str, str | int] = {"max_depth": max_depth, "limit": 50}
            if token:
                query["from"] = token
            data = await self.request(
                "GET", path("rooms", space_id, "hierarchy"), query=query, api=CLIENT_V1
            )
            rooms.extend(r for r in data.get("rooms") or [] if isinstance(r, dict))
            token = data.get("next_batch")
            if not token:
                return rooms
