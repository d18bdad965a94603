"""The homeserver itself: is it there."""

from __future__ import annotations

import urllib.parse

from forum.errors import MatrixError
from forum.gateway.endpoints import Endpoints


class AdminEndpoints(Endpoints):
    async def ping(self) -> bool:
        """True when the homeserver answers; never raises."""
        try:
            await self.request(
                "GET", "/versions", api="/_matrix/client", timeout=5, retry_unavailable=False
            )
        except MatrixError:
            return False
        return True

    async def lift_rate_limits(self, user_id: str) -> None:
        """Lift the homeserver's rate limits for ``user_id`` (Synapse admin API: the caller
        must be a server admin; raises :class:`~forum.errors.Forbidden` otherwise)."""
        await self.request(
            "POST",
            f"/users/{urllib.parse.quote(user_id, safe='')}/override_ratelimit",
            body={"messages_per_second": 0, "burst_count": 0},
            api="/_synapse/admin/v1",
        )
