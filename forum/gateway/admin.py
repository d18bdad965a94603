"""The homeserver itself: is it there."""

from __future__ import annotations

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
