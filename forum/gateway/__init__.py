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
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, Unpack

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.errors import MatrixError, NotFound, Unauthorized
from forum.events import Invite, RoomEvent, parse_room_event
from forum.gateway.session import Session
from forum.gateway.transport import CLIENT_V1, CLIENT_V3, GatewayStats, RequestOptions, Transport
from forum.gateway.transport import path as _path
from forum.matrix import PowerLevels
from forum.storage import ProcessedEvents, SyncTokens

__all__ = ["CLIENT_V1", "CLIENT_V3", "Gateway", "GatewayStats"]

log = logging.getLogger(__name__)

E = TypeVar("E")
Handler = Callable[[Any], Awaitable[None]]

MAX_GAP_EVENTS = 2000


@dataclass
class _Registration:
    kind: type
    handler: Handler
    include_own: bool
    name: str


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
        self._sessionmaker = sessionmaker
        self._sync_timeout_ms = sync_timeout_ms
        self._timeline_limit = timeline_limit
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
        self._registrations: list[_Registration] = []
        self._stopping = asyncio.Event()
        self._synced = asyncio.Event()
        self._direct_lock = asyncio.Lock()
        self.next_batch: str | None = None
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
        self._stopping.set()
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
        name = getattr(handler, "__qualname__", repr(handler))
        self._registrations.append(_Registration(kind, handler, include_own, name))

    def _handlers_for(self, event: RoomEvent | Invite) -> list[_Registration]:
        own = isinstance(event, RoomEvent) and event.sender == self.user_id
        return [
            r
            for r in self._registrations
            if isinstance(event, r.kind) and (r.include_own or not own)
        ]

    def sync_filter(self) -> dict[str, Any]:
        return {
            "room": {
                "timeline": {"limit": self._timeline_limit},
                "state": {"lazy_load_members": False},
                "ephemeral": {"not_types": ["*"]},
                "account_data": {"not_types": ["*"]},
            },
            "presence": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
        }

    async def load_token(self) -> str | None:
        async with self._sessionmaker() as s:
            self.next_batch = await SyncTokens(s).get(self.user_id)
        return self.next_batch

    async def sync_once(self, timeout_ms: int | None = None) -> int:
        """One ``/sync``: dispatch new events, then persist the token. Returns events handled."""
        since = self.next_batch
        data = await self._poll(timeout_ms)
        return await self._process(data, since)

    async def _poll(self, timeout_ms: int | None = None) -> dict[str, Any]:
        query: dict[str, str | int] = {
            "filter": json.dumps(self.sync_filter(), separators=(",", ":")),
            "timeout": self._sync_timeout_ms if timeout_ms is None else timeout_ms,
        }
        since = self.next_batch
        if since:
            query["since"] = since
        wait = query["timeout"] / 1000 if isinstance(query["timeout"], int) else 30
        return await self.request(
            "GET", "/sync", query=query, timeout=wait + self._transport.request_timeout
        )

    async def _process(self, data: dict[str, Any], since: str | None) -> int:
        batch = await self._collect(data, since)
        handled = await self._dispatch(batch)
        token = data.get("next_batch")
        if isinstance(token, str):
            async with self._sessionmaker() as s, s.begin():
                await SyncTokens(s).set(self.user_id, token)
            self.next_batch = token
        self._synced.set()
        return handled

    async def _collect(self, data: dict[str, Any], since: str | None) -> list[RoomEvent | Invite]:
        out: list[RoomEvent | Invite] = []
        rooms: dict[str, Any] = data["rooms"] if isinstance(data.get("rooms"), dict) else {}
        for room_id, room in (rooms.get("invite") or {}).items():
            out.append(self._invite_from(room_id, room))
        for section in ("join", "leave"):
            for room_id, room in (rooms.get(section) or {}).items():
                timeline = room.get("timeline") or {}
                raw_events = [e for e in timeline.get("events") or [] if isinstance(e, dict)]
                if timeline.get("limited") and since and timeline.get("prev_batch"):
                    gap = await self._fill_gap(room_id, timeline["prev_batch"], since)
                    known = {e.get("event_id") for e in raw_events}
                    raw_events = [e for e in gap if e.get("event_id") not in known] + raw_events
                for raw in raw_events:
                    ev = parse_room_event(room_id, raw)
                    if ev is None:
                        log.warning("malformed event skipped in %s", room_id)
                        continue
                    out.append(ev)
        return out

    def _invite_from(self, room_id: str, room: dict[str, Any]) -> Invite:
        state = tuple(
            e for e in (room.get("invite_state") or {}).get("events") or [] if isinstance(e, dict)
        )
        sender, is_direct, event_id = "", False, ""
        for ev in state:
            if ev.get("type") == "m.room.member" and ev.get("state_key") == self.user_id:
                sender = ev.get("sender") or ""
                content = ev.get("content") or {}
                is_direct = bool(content.get("is_direct"))
                event_id = ev.get("event_id") or ""
        return Invite(
            room_id=room_id,
            sender=sender,
            is_direct=is_direct,
            event_id=event_id or f"invite:{room_id}:{sender}",
            state=state,
        )

    async def _fill_gap(self, room_id: str, prev_batch: str, since: str) -> list[dict[str, Any]]:
        """Events between our last sync and a limited timeline, oldest first."""
        collected: list[dict[str, Any]] = []
        token: str | None = prev_batch
        while token and len(collected) < MAX_GAP_EVENTS:
            page = await self.request(
                "GET",
                _path("rooms", room_id, "messages"),
                query={"from": token, "to": since, "dir": "b", "limit": 100},
            )
            chunk = [e for e in page.get("chunk") or [] if isinstance(e, dict)]
            if not chunk:
                break
            collected.extend(chunk)
            end = page.get("end")
            token = end if isinstance(end, str) and end != token else None
        if len(collected) >= MAX_GAP_EVENTS:
            log.warning("gap in %s larger than %d events; oldest skipped", room_id, MAX_GAP_EVENTS)
        collected.reverse()
        return collected

    async def _dispatch(self, events: list[RoomEvent | Invite]) -> int:
        todo = [(ev, regs) for ev in events if (regs := self._handlers_for(ev))]
        if not todo:
            return 0
        async with self._sessionmaker() as s:
            seen = await ProcessedEvents(s).seen_many(self.user_id, [ev.event_id for ev, _ in todo])
        handled = 0
        for ev, regs in todo:
            if ev.event_id in seen:
                continue
            seen.add(ev.event_id)
            for reg in regs:
                try:
                    await reg.handler(ev)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.stats.handler_failures += 1
                    log.exception(
                        "handler %s failed on %s %s in %s",
                        reg.name,
                        type(ev).__name__,
                        ev.event_id,
                        ev.room_id,
                    )
            async with self._sessionmaker() as s, s.begin():
                await ProcessedEvents(s).mark(self.user_id, ev.event_id)
            handled += 1
            self.stats.events_dispatched += 1
        return handled

    async def run(self) -> None:
        """Sync until :meth:`stop`. Survives homeserver outages (with backoff)."""
        if self.next_batch is None:
            await self.load_token()
        delay = 1.0
        while not self._stopping.is_set():
            try:
                # Only the long poll is interrupted by stop(); a batch that arrived is
                # handled and its token stored before the loop ends.
                since = self.next_batch
                poll = asyncio.ensure_future(self._poll())
                stopping = asyncio.ensure_future(self._stopping.wait())
                try:
                    await asyncio.wait({poll, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                    if not poll.done():
                        poll.cancel()
                        await asyncio.gather(poll, return_exceptions=True)
                if poll.cancelled():
                    return
                await self._process(poll.result(), since)
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Unauthorized:
                log.error("%s: access token refused; logging in again", self.user_id)
                await self._session.forget()
                try:
                    await self.login()
                except MatrixError:
                    log.exception("%s: login failed; retrying in %.0fs", self.user_id, delay)
                    await self._sleep_or_stop(delay)
                    delay = min(delay * 2, 60)
            except MatrixError as exc:
                log.warning("%s: sync failed (%s); retrying in %.0fs", self.user_id, exc, delay)
                await self._sleep_or_stop(delay)
                delay = min(delay * 2, 60)

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    def stop(self) -> None:
        self._stopping.set()

    async def wait_synced(self, timeout: float = 30) -> None:
        await asyncio.wait_for(self._synced.wait(), timeout)

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
