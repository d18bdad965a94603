"""The Matrix gateway: the only code of the project that talks to the homeserver.

One :class:`Gateway` per bot account. It logs in (stored token, given token or
password), owns a sync loop with a filter (timeline limit 100, gaps filled from
``/messages``), dispatches the project's own event types (:mod:`forum.events`) to the
handlers registered for them, isolates failing handlers, persists ``next_batch`` only after
the handlers ran and skips events already processed. Every request is checked in one
place (:meth:`Gateway.request`), which maps errors to :mod:`forum.errors` and retries 429
(honouring ``retry_after_ms``) and 5xx / connection failures a bounded number of times.

matrix-nio provides the login and the HTTP transport (its ``AsyncClient``); requests are
built here so that every result is checked the same way, including the endpoints nio does
not cover (joins and knocks with ``via``, members by membership, reports, hierarchy).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, Unpack

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.errors import MatrixError, NotFound
from forum.gateway.session import Session
from forum.gateway.sync import SyncLoop
from forum.gateway.transport import CLIENT_V1, CLIENT_V3, GatewayStats, RequestOptions, Transport
from forum.gateway.transport import path as _path
from forum.matrix import PowerLevels

__all__ = ["CLIENT_V1", "CLIENT_V3", "Gateway", "GatewayStats"]

log = logging.getLogger(__name__)

E = TypeVar("E")


class Gateway:
    """A logged-in Matrix account with an owned sync loop and checked requests."""

    def __init__(
        self,
        *,
        homeserver_url: str,
        user_id: str,
        sessionmaker: async_sessionmaker[AsyncSession],
        password: str | None = None,
        access_token: str | None = None,
        device_name: str = "forum",
        request_timeout: float = 30.0,
        max_retries: int = 8,
        sync_timeout_ms: int = 30_000,
        timeline_limit: int = 100,
    ) -> None:
        self.homeserver_url = homeserver_url.rstrip("/")
        self.user_id = user_id
        self.stats = GatewayStats()
        self._transport = Transport(
            self.homeserver_url,
            user_id,
            stats=self.stats,
            request_timeout=request_timeout,
            max_retries=max_retries,
        )
        self._session = Session(
            self._transport,
            sessionmaker,
            password=password,
            access_token=access_token,
            device_name=device_name,
        )
        self._sync = SyncLoop(
            self._transport,
            sessionmaker,
            stats=self.stats,
            relogin=self._relogin,
            sync_timeout_ms=sync_timeout_ms,
            timeline_limit=timeline_limit,
        )
        self._direct_lock = asyncio.Lock()
        self.device_id: str | None = None

    # --- identity -------------------------------------------------------------------
    @property
    def access_token(self) -> str | None:
        return self._transport.access_token

    @property
    def max_retries(self) -> int:
        return self._transport.max_retries

    @max_retries.setter
    def max_retries(self, value: int) -> None:
        self._transport.max_retries = value

    async def login(self) -> None:
        """Log in: a given token, then a stored token, then the password."""
        self.device_id = await self._session.login()

    async def close(self) -> None:
        self._sync.stop()
        await self._transport.close()

    # --- checked requests ------------------------------------------------------------
    async def request(
        self, method: str, path: str, **options: Unpack[RequestOptions]
    ) -> dict[str, Any]:
        """One checked request (see :meth:`Transport.request`)."""
        return await self._transport.request(method, path, **options)

    # --- handlers and the sync loop ---------------------------------------------------
    def on(
        self, kind: type[E], handler: Callable[[E], Awaitable[None]], *, include_own: bool = False
    ) -> None:
        """Call ``handler`` for every event of ``kind`` (a class of :mod:`forum.events`).

        Events sent by this account are skipped unless ``include_own``.
        """
        self._sync.on(kind, handler, include_own=include_own)

    @property
    def next_batch(self) -> str | None:
        return self._sync.next_batch

    @next_batch.setter
    def next_batch(self, token: str | None) -> None:
        self._sync.next_batch = token

    def sync_filter(self) -> dict[str, Any]:
        return self._sync.filter()

    async def load_token(self) -> str | None:
        return await self._sync.load_token()

    async def sync_once(self, timeout_ms: int | None = None) -> int:
        """One ``/sync``: dispatch new events, then persist the token. Returns events handled."""
        return await self._sync.sync_once(timeout_ms)

    async def run(self) -> None:
        """Sync until :meth:`stop`. Survives homeserver outages (with backoff)."""
        await self._sync.run()

    def stop(self) -> None:
        self._sync.stop()

    async def wait_synced(self, timeout: float = 30) -> None:
        await self._sync.wait_synced(timeout)

    async def _relogin(self) -> None:
        """The homeserver refused our token while syncing: forget it, log in again."""
        await self._session.forget()
        await self.login()

    # --- actions ---------------------------------------------------------------------
    async def send_event(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        data = await self.request(
            "PUT",
            _path("rooms", room_id, "send", event_type, self._transport.txn_id()),
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
    ) -> str:
        content: dict[str, Any] = {"msgtype": "m.notice" if notice else "m.text", "body": body}
        if html is not None:
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = html
        if reply_to:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        content["m.mentions"] = {"user_ids": list(mentions)}
        return await self.send_event(room_id, "m.room.message", content)

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        return await self.send_event(
            room_id,
            "m.reaction",
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}},
        )

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        body = {"reason": reason} if reason else {}
        data = await self.request(
            "PUT", _path("rooms", room_id, "redact", event_id, self._transport.txn_id()), body=body
        )
        return str(data.get("event_id", ""))

    async def _membership_action(
        self, action: str, room_id: str, user_id: str, reason: str | None
    ) -> None:
        body: dict[str, Any] = {"user_id": user_id}
        if reason:
            body["reason"] = reason
        await self.request("POST", _path("rooms", room_id, action), body=body)

    async def invite(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        await self._membership_action("invite", room_id, user_id, reason)

    async def kick(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        await self._membership_action("kick", room_id, user_id, reason)

    async def ban(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        await self._membership_action("ban", room_id, user_id, reason)

    async def unban(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        await self._membership_action("unban", room_id, user_id, reason)

    async def join(self, room: str, via: Iterable[str] = (), reason: str | None = None) -> str:
        """Join a room by id or alias, with ``via`` servers (needed for v12 room ids)."""
        body = {"reason": reason} if reason else {}
        data = await self.request(
            "POST",
            _path("join", room),
            query={"server_name": list(via)} if via else None,
            body=body,
        )
        return str(data["room_id"])

    async def knock(self, room: str, reason: str | None = None, via: Iterable[str] = ()) -> str:
        body = {"reason": reason} if reason else {}
        data = await self.request(
            "POST",
            _path("knock", room),
            query={"server_name": list(via)} if via else None,
            body=body,
        )
        return str(data["room_id"])

    async def leave(self, room_id: str, reason: str | None = None) -> None:
        body = {"reason": reason} if reason else {}
        await self.request("POST", _path("rooms", room_id, "leave"), body=body)

    async def create_room(self, payload: dict[str, Any]) -> str:
        data = await self.request("POST", "/createRoom", body=payload)
        return str(data["room_id"])

    async def get_state(self, room_id: str) -> list[dict[str, Any]]:
        data = await self.request("GET", _path("rooms", room_id, "state"))
        value = data.get("value")
        return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []

    async def get_state_event(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None:
        try:
            return await self.request(
                "GET", _path("rooms", room_id, "state", event_type, state_key)
            )
        except NotFound:
            return None

    async def put_state(
        self, room_id: str, event_type: str, content: dict[str, Any], state_key: str = ""
    ) -> str:
        data = await self.request(
            "PUT", _path("rooms", room_id, "state", event_type, state_key), body=content
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
        try:
            data = await self.request("GET", _path("directory", "room", alias))
        except NotFound:
            return None
        return str(data["room_id"])

    async def put_alias(self, alias: str, room_id: str) -> None:
        await self.request("PUT", _path("directory", "room", alias), body={"room_id": room_id})

    async def joined_rooms(self) -> list[str]:
        data = await self.request("GET", "/joined_rooms")
        return [r for r in data.get("joined_rooms") or [] if isinstance(r, str)]

    async def members(
        self, room_id: str, membership: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Member events' contents by user id (``membership`` filters, e.g. ``knock``)."""
        query = {"membership": membership} if membership else None
        data = await self.request("GET", _path("rooms", room_id, "members"), query=query)
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

    async def hierarchy(self, space_id: str, max_depth: int = 1) -> list[dict[str, Any]]:
        rooms: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            query: dict[str, str | int] = {"max_depth": max_depth, "limit": 50}
            if token:
                query["from"] = token
            data = await self.request(
                "GET", _path("rooms", space_id, "hierarchy"), query=query, api=CLIENT_V1
            )
            rooms.extend(r for r in data.get("rooms") or [] if isinstance(r, dict))
            token = data.get("next_batch")
            if not token:
                return rooms

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
        return await self.request("GET", _path("rooms", room_id, "messages"), query=query)

    async def get_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        return await self.request("GET", _path("rooms", room_id, "event", event_id))

    async def set_display_name(self, name: str) -> None:
        await self.request(
            "PUT", _path("profile", self.user_id, "displayname"), body={"displayname": name}
        )

    async def get_account_data(self, event_type: str) -> dict[str, Any] | None:
        try:
            return await self.request(
                "GET", _path("user", self.user_id, "account_data", event_type)
            )
        except NotFound:
            return None

    async def set_account_data(self, event_type: str, content: dict[str, Any]) -> None:
        await self.request(
            "PUT", _path("user", self.user_id, "account_data", event_type), body=content
        )

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
        async with self._direct_lock:  # read-modify-write of one account data event
            direct = await self.get_account_data("m.direct") or {}
            rooms = [r for r in direct.get(user_id, []) if isinstance(r, str)]
            direct[user_id] = [*rooms, room_id]
            await self.set_account_data("m.direct", direct)
        return room_id

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

    async def report_event(self, room_id: str, event_id: str, reason: str) -> None:
        await self.request(
            "POST", _path("rooms", room_id, "report", event_id), body={"reason": reason}
        )

    async def ping(self) -> bool:
        """True when the homeserver answers; never raises."""
        try:
            await self.request(
                "GET", "/versions", api="/_matrix/client", timeout=5, retry_unavailable=False
            )
        except MatrixError:
            return False
        return True
