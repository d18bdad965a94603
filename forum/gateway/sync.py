"""The sync loop of one account: filter, gap filling, dispatch, idempotency.

It syncs with a filter (timeline limit 100 by default), fills the gap of a limited
timeline from ``/messages``, dispatches the project's own event types
(:mod:`forum.events`) to the handlers registered for them (in lanes, :mod:`.lanes`),
skips events already processed and stores ``next_batch`` only after the handlers ran.
The handlers' calls, their failures and retries, and encrypted events waiting for their
key are :mod:`.handling`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.errors import MatrixError, Unauthorized
from forum.events import Invite, RoomEvent, parse_room_event
from forum.gateway.crypto import ENCRYPTED, Crypto
from forum.gateway.handling import Handling, Registration
from forum.gateway.lanes import split_lanes
from forum.gateway.transport import GatewayStats, Transport, path
from forum.retry import is_database_error, retry_call, retrying
from forum.storage import FailedHandlers, ProcessedEvents, SyncTokens, utcnow

log = logging.getLogger(__name__)

MAX_GAP_EVENTS = 2000


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
    handler_max_attempts: int = 8
    handler_retry_initial: float = 2.0
    handler_retry_cap: float = 600.0
    clock: Callable[[], datetime] = utcnow
    crypto: Crypto | None = None
    lanes: int = 4
    """How many lanes of a batch (:mod:`.lanes`: events that share no room and no person)
    are handled at once; 1 handles a batch's events one after another."""
    key_wait: float = 5.0
    """How long an encrypted event we cannot read waits for its key (asked for once)
    before its handlers are told it is :class:`~forum.events.Undecryptable`."""
    next_batch: str | None = field(init=False, default=None)
    handling: Handling = field(init=False)
    _stopping: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _synced: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    synced_callbacks: list[Callable[[], None]] = field(init=False, default_factory=list)
    """Called after each batch handled and its token stored (a health record)."""

    def __post_init__(self) -> None:
        self.handling = Handling(
            self.transport,
            self.sessionmaker,
            stats=self.stats,
            clock=self.clock,
            crypto=self.crypto,
            handler_max_attempts=self.handler_max_attempts,
            handler_retry_initial=self.handler_retry_initial,
            handler_retry_cap=self.handler_retry_cap,
            key_wait=self.key_wait,
        )

    @property
    def user_id(self) -> str:
        return self.transport.user_id

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

    async def _poll_timeout(self) -> int:
        """The long poll's timeout, cut short when a failed handler is due sooner."""
        async with self.sessionmaker() as s:
            due = await FailedHandlers(s).next_due(self.user_id)
        if due is None:
            return self.sync_timeout_ms
        until = int((due - self.clock()).total_seconds() * 1000) + 1
        return max(0, min(self.sync_timeout_ms, until))

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
        if self.crypto is not None:
            try:
                await self.crypto.receive(data)
            except Exception:  # the batch is still handled: what nio could not read
                # stays encrypted, and its senders are told
                log.exception("%s: nio could not handle a /sync response", self.user_id)
        batch = await self._collect(data, since)
        await self.handling.retry_due()
        handled = await self._dispatch(batch)
        token = data.get("next_batch")
        if isinstance(token, str):

            async def store(s: AsyncSession) -> None:
                await SyncTokens(s).set(self.user_id, token)

            await self.handling.bookkeeping("the sync token", store)
            self.next_batch = token
        if self.crypto is not None:
            try:
                await self.crypto.maintain()
            except MatrixError as exc:  # tried again after the next batch
                log.warning("%s: keeping the encryption keys up failed: %s", self.user_id, exc)
        self.stats.last_synced = time.time()
        for callback in self.synced_callbacks:
            callback()
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
                    if self.crypto is not None and raw.get("type") == ENCRYPTED:
                        raw = self.crypto.decrypt(room_id, raw) or raw
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
        handling = self.handling
        todo = [
            (ev, regs)
            for ev in events
            if (regs := handling.handlers_for(ev)) or handling.awaits_key(ev)
        ]
        if not todo:
            return 0
        ids = [ev.event_id for ev, _ in todo]
        async with self.sessionmaker() as s:
            seen = await ProcessedEvents(s).seen_many(self.user_id, ids)
            # an event with a failed handler is the retry's business, not a new event
            seen |= await FailedHandlers(s).event_ids_among(self.user_id, ids)
        fresh = []
        for ev, regs in todo:
            if ev.event_id not in seen:
                seen.add(ev.event_id)
                fresh.append((ev, regs))
        if self.lanes <= 1:  # the batch's own order, one event after another
            return await self.handling.handle_lane(fresh)
        lanes = split_lanes(fresh, self.user_id)
        if len(lanes) == 1:
            return await self.handling.handle_lane(lanes[0])
        # Lanes share no room and no person: up to ``self.lanes`` of them at once, each in
        # its own order. One that raises (the service stopping) cancels the others.
        gate = asyncio.Semaphore(self.lanes)

        async def run(lane: list[tuple[RoomEvent | Invite, list[Registration]]]) -> int:
            async with gate:
                return await self.handling.handle_lane(lane)

        try:
            async with asyncio.TaskGroup() as group:
                runs = [group.create_task(run(lane)) for lane in lanes]
        except ExceptionGroup as failed:  # raised as one event's handling would raise it
            raise failed.exceptions[0] from None
        return sum(r.result() for r in runs)

    async def run(self) -> None:
        """Sync until :meth:`stop`. Survives homeserver outages (with backoff)."""
        if self.next_batch is None:
            await self.load_token()
        while not self._stopping.is_set():
            # A new policy after each batch handled: the backoff starts again from 1 s.
            policy = retrying(
                None,
                # a read of the bookkeeping that failed (before any handler ran) is
                # harmless to do again with the whole poll
                retryable=lambda exc: isinstance(exc, MatrixError) or is_database_error(exc),
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
            poll = asyncio.ensure_future(self._poll(await self._poll_timeout()))
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
