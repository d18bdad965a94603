"""Media and the account itself: uploads, display name, account data."""

from __future__ import annotations

from typing import Any

from forum.gateway.endpoints import Endpoints
from forum.gateway.transport import path


class AccountEndpoints(Endpoints):
    async def upload(self, data: bytes, content_type: str, filename: str) -> str:
        resp = await self.request(
            "POST",
            "/upload",
            query={"filename": filename},
            raw_body=data,
            content_type=content_type,
            api="/_matrix/media/v3",
        )
        return str(resp["content_uri"])

    async def set_display_name(self, name: str) -> None:
        await self.request(
            "PUT", path("profile", self.user_id, "displayname"), body={"displayname": name}
        )

    async def get_account_data(self, event_type: str) -> dict[str, Any] | None:
        return await self._get_or_none(path("user", self.user_id, "account_data", event_type))

    async def set_account_data(self, event_type: str, content: dict[str, Any]) -> None:
        await self.request(
            "PUT", path("user", self.user_id, "account_data", event_type), body=content
        )
