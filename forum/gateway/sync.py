"""The sync loop of one account: filter, gap filling, dispatch, idempotency.

It syncs with a filter (timeline limit 100 by default), fills the gap of a limited
timeline from ``/messages``, dispatches the project's own event types
(:mod:`forum.events`) to the handlers registered for them, isolates failing handlers,
skips events already processed and stores ``next_batch`` only after the handlers ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.errors import MatrixError, Unauthorized
from forum.events import Invite, RoomEvent, parse_room_event
from forum.gateway.transport import GatewayStats, Transport, path
from forum.retry import retry_call, retrying
from forum.storage import ProcessedEvents, SyncTokens

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


@dataclass(eq=False)
class SyncLoop:
    """Owns ``/sync`` for the transport's account and calls the registered handlers."""

    transport: Transport
    sessionmaker: async_sessionmaker[AsyncSession]
    _: KW_ONLY
    stats: GatewayStats
    relogin: Callable[[], Awaitable[None]]
    sync_timeout_ms: int
    timeline_limit: int
    next_batch: str | None = field(init=False, default=None)
    _registrations: list[_Registration] = field(init=False, default_factory=list)
    _stopping: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _synced: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    @property
    def user_id(self) -> str:
        return self.transport.user_id

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

    def filter(self) -> dict[str, Any]:
        return {
            "room": {
                "timeline": {"limit": self.timeline_limit},
                "state": {"lazy_load_members": False},
                "ephemeral": {"not_types": ["*"]},
                "account_data": {"not_types": ["*"]},
            },
            "presence": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
        }

    async def load_token(self) -> str | None:
        async with self.sessionmaker() as s:
            self.next_batch = await SyncTokens(s).get(self.user_id)
        return self.next_batch

    async def sync_once(self, timeout_ms: int | None = None) -> int:
        """One ``/sync``: dispatch new events, then persist the token. Returns events handled."""
        since = self.next_batch
        data = await self._poll(timeout_ms)
        return await self._process(data, since)

    async def _poll(self, timeout_ms: int | None = None) -> dict[str, Any]:
        query: dict[str, str | int] = {
            "filter": json.dumps(self.filter(), separators=(",", ":")),
            "timeout": self.sync_timeout_ms if timeout_ms is None else timeout_ms,
        }
        since = self.next_batch
        if since:
            query["since"] = since
        wait = query["timeout"] / 1000 if isinstance(query["timeout"], int) else 30
        return await self.transport.request(
            "GET", "/sync", query=query, timeout=wait + self.transport.request_timeout
        )

    async def _process(self, data: dict[str, Any], since: str | None) -> int:
        batch = await self._collect(data, since)
        handled = await self._dispatch(batch)
        token = data.get("next_batch")
        if isinstance(token, str):
            async with self.sessionmaker() as s, s.begin():
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
            page = await self.transport.request(
                "GET",
                path("rooms", room_id, "messages"),
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
        async with self.sessionmaker() as s:
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
            async with self.sessionmaker() as s, s.begin():
                await ProcessedEvents(s).mark(self.user_id, ev.event_id)
            handled += 1
            self.stats.events_dispatched += 1
        return handled

    async def run(self) -> None:
        """Sync until :meth:`stop`. Survives homeserver outages (with backoff)."""
        if self.next_batch is None:
            await self.load_token()
        while not self._stopping.is_set():
            # A new policy after each batch handled: the backoff starts again from 1 s.
            policy = retrying(
                None,
                retryable=lambda exc: isinstance(exc, MatrixError),
                initial=1.0,
                cap=60.0,
                sleep=self._sleep_or_stop,
                on_retry=self._log_retry,
            )
            await retry_call(policy, self._poll_and_handle)

    async def _poll_and_handle(self) -> None:
        """Poll once and handle what came; a refused token is replaced by a new login."""
        if self._stopping.is_set():
            return
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
        except Unauthorized:
            log.error("%s: access token refused; logging in again", self.user_id)
            await self.relogin()

    def _log_retry(self, error: BaseException, wait: float) -> None:
        log.warning("%s: sync failed (%s); retrying in %.0fs", self.user_id, error, wait)

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    def stop(self) -> None:
        self._stopping.set()

    async def wait_synced(self, timeout: float = 30) -> None:
        await asyncio.wait_for(self._synced.wait(), timeout)
