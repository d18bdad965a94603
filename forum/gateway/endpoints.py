"""What every group of endpoint wrappers stands on: the account and one checked request.

The groups (:mod:`.rooms`, :mod:`.state`, :mod:`.membership`, :mod:`.account`,
:mod:`.admin`) are mixins of :class:`forum.gateway.Gateway`; each wrapper builds one
request and shapes its answer, nothing more.
"""

from __future__ import annotations

from typing import Any, Unpack

from forum.errors import NotFound
from forum.gateway.transport import RequestOptions, Transport


class Endpoints:
    """The base of the endpoint groups: ``user_id`` and :meth:`request`."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self.user_id = transport.user_id

    async def request(
        self, method: str, path: str, **options: Unpack[RequestOptions]
    ) -> dict[str, Any]:
        """One checked request (see :meth:`forum.gateway.transport.Transport.request`)."""
        return await self._transport.request(method, path, **options)

    async def _get_or_none(self, path: str) -> dict[str, Any] | None:
        """GET ``path``; ``None`` when the homeserver has no such thing (404)."""
        try:
            return await self.request("GET", path)
        except NotFound:
            return None
