"""The sync loop of one account: filter, gap filling, dispatch, idempotency.

It syncs with a filter (timeline limit 100 by default), fills the gap of a limited
timeline from ``/messages``, dispatches the project's own event types
(:mod:`forum.events`) to the handlers registered for them, isolates failing handlers,
skips events already processed and stores ``next_batch`` only after the handlers ran.

A handler that raises leaves its event unprocessed (issue #10, point 3): the event and
the handler's name are stored (:class:`~forum.storage.FailedHandlers`) and only that
handler is called again, after an exponential backoff kept in the database (so a restart
resumes it), until it succeeds (then the event is marked processed) or has failed
``handler_max_attempts`` times (then it is abandoned, logged with ``log.error``, and the
event is not dispatched again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.errors import MatrixError, Unauthorized
from forum.events import Invite, RoomEvent, Undecryptable, parse_room_event
from forum.gateway.crypto import ENCRYPTED, Crypto
from forum.gateway.lanes import split_lanes
from forum.gateway.transport import GatewayStats, Transport, path
from forum.retry import is_database_error, retry_call, retrying
from forum.storage import FailedHandler, FailedHandlers, ProcessedEvents, SyncTokens, utcnow

log = logging.getLogger(__name__)

E = TypeVar("E")
Handler = Callable[[Any], Awaitable[None]]

MAX_GAP_EVENTS = 2000
#: a failed bookkeeping write is tried again after this, doubling up to the cap
BOOKKEEPING_RETRY_INITIAL = 0.5
BOOKKEEPING_RETRY_CAP = 30.0

_INVITE_KEY = "forum.invite"
#: the reserved "handler" of an encrypted event waiting for its key (kept with the failed
#: handlers: stored, due at a time, resumed after a restart)
AWAITING_KEY = "forum.gateway:awaiting-room-key"


def handler_backoff(attempts: int, initial: float, cap: float) -> timedelta:
    """The delay before the next call of a handler that failed ``attempts`` times:
    ``initial`` doubling, up to ``cap`` seconds."""
    return timedelta(seconds=min(initial * 2 ** max(attempts - 1, 0), cap))


def stored_event(ev: RoomEvent | Invite) -> dict[str, Any]:
    """What is kept of an event whose handler failed: a room event's raw JSON; an invite
    (not a timeline event) under ``forum.invite``."""
    if isinstance(ev, RoomEvent):
        return ev.raw
    return {
        _INVITE_KEY: {
            "sender": ev.sender,
            "is_direct": ev.is_direct,
            "event_id": ev.event_id,
            "state": list(ev.state),
        }
    }


def revived_event(room_id: str, stored: dict[str, Any]) -> RoomEvent | Invite | None:
    """The event :func:`stored_event` kept; None if it cannot be read back."""
    invite = stored.get(_INVITE_KEY)
    if isinstance(invite, dict):
        return Invite(
            room_id=room_id,
            sender=str(invite.get("sender") or ""),
            is_direct=bool(invite.get("is_direct")),
            event_id=str(invite.get("event_id") or ""),
            state=tuple(e for e in invite.get("state") or [] if isinstance(e, dict)),
        )
    return parse_room_event(room_id, stored)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclass
class _Registration:
    kind: type
    handler: Handler
    include_own: bool
    name: str
    skip_rooms: frozenset[str] = frozenset()


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
    _registrations: list[_Registration] = field(init=False, default_factory=list)
    _stopping: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _synced: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    synced_callbacks: list[Callable[[], None]] = field(init=False, default_factory=list)
    """Called after each batch handled and its token stored (a health record)."""

    @property
    def user_id(self) -> str:
        return self.transport.user_id

    def on(
        self,
        kind: type[E],
        handler: Callable[[E], Awaitable[None]],
        *,
        include_own: bool = False,
        skip_rooms: Iterable[str] = (),
    ) -> None:
        """Call ``handler`` for every event of ``kind`` (a class of :mod:`forum.events`).

        Events sent by this account are skipped unless ``include_own``, and events in
        ``skip_rooms`` are (an event no handler wants is not even marked processed).
        """
        # The name is how a failed handler is found again (after a restart too): stable
        # across processes, unique among this loop's registrations.
        base = getattr(handler, "__qualname__", None) or type(handler).__qualname__
        taken = {r.name for r in self._registrations}
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}#{n}"
        self._registrations.append(
            _Registration(kind, handler, include_own, name, frozenset(skip_rooms))
        )

    def _handlers_for(self, event: RoomEvent | Invite) -> list[_Registration]:
        own = isinstance(event, RoomEvent) and event.sender == self.user_id
        return [
            r
            for r in self._registrations
            if isinstance(event, r.kind)
            and (r.include_own or not own)
            and event.room_id not in r.skip_rooms
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

    async def _bookkeeping(
        self, what: str, write: Callable[[AsyncSession], Awaitable[None]]
    ) -> None:
        """Run one bookkeeping write (processed ids, failed handlers, the sync token) in its
        own transaction; a database error is logged and the write retried with backoff
        until it succeeds (handlers already ran: redoing the whole batch would run them
        twice). Cancellation (the service stopping) goes through."""

        async def once() -> None:
            async with self.sessionmaker() as s, s.begin():
                await write(s)

        def failed(exc: BaseException, wait: float) -> None:
            self.stats.bookkeeping_retries += 1
            log.warning(
                "%s: database error in the gateway's bookkeeping (%s): %s; retrying in %.1f s",
                self.user_id,
                what,
                _describe(exc),
                wait,
            )

        policy = retrying(
            None,
            retryable=is_database_error,
            initial=BOOKKEEPING_RETRY_INITIAL,
            cap=BOOKKEEPING_RETRY_CAP,
            on_retry=failed,
        )
        await retry_call(policy, once)

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
        await self._retry_due()
        handled = await self._dispatch(batch)
        token = data.get("next_batch")
        if isinstance(token, str):

            async def store(s: AsyncSession) -> None:
                await SyncTokens(s).set(self.user_id, token)

            await self._bookkeeping("the sync token", store)
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
        todo = [
            (ev, regs) for ev in events if (regs := self._handlers_for(ev)) or self._awaits_key(ev)
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
            return await self._handle_lane(fresh)
        lanes = split_lanes(fresh, self.user_id)
        if len(lanes) == 1:
            return await self._handle_lane(lanes[0])
        # Lanes share no room and no person: up to ``self.lanes`` of them at once, each in
        # its own order. One that raises (the service stopping) cancels the others.
        gate = asyncio.Semaphore(self.lanes)

        async def run(lane: list[tuple[RoomEvent | Invite, list[_Registration]]]) -> int:
            async with gate:
                return await self._handle_lane(lane)

        try:
            async with asyncio.TaskGroup() as group:
                runs = [group.create_task(run(lane)) for lane in lanes]
        except ExceptionGroup as failed:  # raised as one event's handling would raise it
            raise failed.exceptions[0] from None
        return sum(r.result() for r in runs)

    async def _handle_lane(self, lane: list[tuple[RoomEvent | Invite, list[_Registration]]]) -> int:
        handled = 0
        for ev, regs in lane:
            if self._awaits_key(ev):
                await self._wait_for_key(ev)
                continue
            await self._handle_one(ev, regs)
            handled += 1
        return handled

    def _awaits_key(self, ev: RoomEvent | Invite) -> bool:
        """An encrypted event from someone else that this device could not read."""
        return (
            self.crypto is not None and isinstance(ev, Undecryptable) and ev.sender != self.user_id
        )

    async def _wait_for_key(self, ev: RoomEvent | Invite) -> None:
        """Ask the sender's device for the key once, and keep the event (in the store, as
        a failed handler due in ``key_wait`` seconds) until the key comes or the time is
        up (:meth:`_key_waited`)."""
        assert self.crypto is not None
        assert isinstance(ev, RoomEvent)
        try:
            await self.crypto.request_key(ev.room_id, ev.raw)
        except MatrixError as exc:
            log.warning("%s: asking for the key of %s failed: %s", self.user_id, ev.event_id, exc)
        retry_at = self.clock() + timedelta(seconds=self.key_wait)
        log.info(
            "%s: cannot decrypt %s in %s yet; key requested, waiting %.0f s",
            self.user_id,
            ev.event_id,
            ev.room_id,
            self.key_wait,
        )

        async def keep(s: AsyncSession) -> None:
            await FailedHandlers(s).add(
                self.user_id,
                ev.event_id,
                AWAITING_KEY,
                room_id=ev.room_id,
                event=stored_event(ev),
                error="the room key has not arrived",
                retry_at=retry_at,
            )

        await self._bookkeeping(f"event {ev.event_id}", keep)

    async def _key_waited(self, failed: FailedHandler) -> None:
        """The wait of an encrypted event is over: its handlers get its clear form if the
        key came meanwhile, else they are told it is :class:`Undecryptable`."""
        clear = self.crypto.decrypt(failed.room_id, failed.event) if self.crypto else None
        ev = parse_room_event(failed.room_id, clear or failed.event)

        async def done(s: AsyncSession) -> None:
            await FailedHandlers(s).succeeded(self.user_id, failed.event_id, AWAITING_KEY)

        await self._bookkeeping(f"event {failed.event_id}", done)
        if ev is None:
            return
        if clear is None:
            log.warning(
                "%s: the key of %s from %s never came; telling its handlers",
                self.user_id,
                failed.event_id,
                ev.sender,
            )
        await self._handle_one(ev, self._handlers_for(ev))

    async def _handle_one(self, ev: RoomEvent | Invite, regs: list[_Registration]) -> None:
        """Call an event's handlers; it is then processed, or its failures are kept."""
        failures: list[tuple[_Registration, str]] = []
        for reg in regs:
            exc = await self._call(reg, ev)
            if exc is not None:
                log.error(
                    "handler %s failed on %s %s in %s",
                    reg.name,
                    type(ev).__name__,
                    ev.event_id,
                    ev.room_id,
                    exc_info=exc,
                )
                failures.append((reg, _describe(exc)))
        retries = [
            (reg, error, self._retry_at(1, reg.name, ev.event_id, ev.room_id, error))
            for reg, error in failures
        ]

        await self._bookkeeping(
            f"event {ev.event_id}", partial(self._record_outcome, ev=ev, retries=retries)
        )
        self.stats.events_dispatched += 1

    async def _record_outcome(
        self,
        s: AsyncSession,
        *,
        ev: RoomEvent | Invite,
        retries: list[tuple[_Registration, str, datetime | None]],
    ) -> None:
        """The event is processed, or its failed handlers are kept for a retry."""
        if not retries:
            await ProcessedEvents(s).mark(self.user_id, ev.event_id)
        for reg, error, retry_at in retries:
            await FailedHandlers(s).add(
                self.user_id,
                ev.event_id,
                reg.name,
                room_id=ev.room_id,
                event=stored_event(ev),
                error=error,
                retry_at=retry_at,
            )

    async def _call(self, reg: _Registration, ev: Any) -> Exception | None:
        """Run one handler; its failure is returned (and counted), never raised, so that
        one handler cannot stop the others or the loop. Cancellation goes through."""
        try:
            await reg.handler(ev)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.handler_failures += 1
            return exc
        return None

    def _retry_at(
        self, attempts: int, handler: str, event_id: str, room_id: str, error: str
    ) -> datetime | None:
        """When to call a handler again after ``attempts`` failures; None (and an error
        logged) once it has had its ``handler_max_attempts``."""
        if attempts < self.handler_max_attempts:
            backoff = handler_backoff(attempts, self.handler_retry_initial, self.handler_retry_cap)
            return self.clock() + backoff
        log.error(
            "%s: handler %s abandoned on %s in %s after %d attempts: %s",
            self.user_id,
            handler,
            event_id,
            room_id,
            attempts,
            error,
        )
        return None

    async def _retry_due(self) -> int:
        """Call again the failed handlers whose time has come (only them: the event's
        other handlers already ran). Returns how many were tried."""
        async with self.sessionmaker() as s:
            due = await FailedHandlers(s).due(self.user_id, self.clock())
        for failed in due:
            await self._retry(failed)
        return len(due)

    async def _retry(self, failed: FailedHandler) -> None:
        if failed.handler == AWAITING_KEY:
            await self._key_waited(failed)
            return
        reg = next((r for r in self._registrations if r.name == failed.handler), None)
        ev = revived_event(failed.room_id, failed.event)
        error: str | None = None
        if reg is None:
            error = f"no handler named {failed.handler!r} is registered"
        elif ev is None:
            error = "the stored event cannot be read back"
        else:
            exc = await self._call(reg, ev)
            if exc is not None:
                error = _describe(exc)
                log.warning(
                    "handler %s failed again on %s in %s (attempt %d)",
                    failed.handler,
                    failed.event_id,
                    failed.room_id,
                    failed.attempts + 1,
                    exc_info=exc,
                )
        if error is None:

            async def succeeded(s: AsyncSession) -> None:
                if await FailedHandlers(s).succeeded(self.user_id, failed.event_id, failed.handler):
                    await ProcessedEvents(s).mark(self.user_id, failed.event_id)

            await self._bookkeeping(f"event {failed.event_id}", succeeded)
            log.info(
                "handler %s succeeded on %s after %d failed attempts",
                failed.handler,
                failed.event_id,
                failed.attempts,
            )
            return
        attempts = failed.attempts + 1
        retry_at = self._retry_at(attempts, failed.handler, failed.event_id, failed.room_id, error)

        async def failed_again(s: AsyncSession, error: str = error) -> None:
            await FailedHandlers(s).failed_again(
                self.user_id, failed.event_id, failed.handler, error, retry_at
            )

        await self._bookkeeping(f"event {failed.event_id}", failed_again)

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
