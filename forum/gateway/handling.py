"""The handlers of one account's sync loop (:mod:`.sync`): who is called for which event,
and what becomes of an event once its handlers ran.

Handlers are isolated: one that raises leaves its event unprocessed (issue #10, point 3).
The event and the handler's name are stored (:class:`~forum.storage.FailedHandlers`) and
only that handler is called again, after an exponential backoff kept in the database (so a
restart resumes it), until it succeeds (then the event is marked processed) or has failed
``handler_max_attempts`` times (then it is abandoned, logged with ``log.error``, and the
event is not dispatched again). An encrypted event this device cannot read waits for its
key the same way, kept as the reserved handler :data:`AWAITING_KEY`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.errors import MatrixError
from forum.events import Invite, RoomEvent, Undecryptable, parse_room_event
from forum.gateway.crypto import Crypto
from forum.gateway.transport import GatewayStats, Transport
from forum.retry import is_database_error, retry_call, retrying
from forum.storage import FailedHandler, FailedHandlers, ProcessedEvents, utcnow

log = logging.getLogger(__name__)

E = TypeVar("E")
Handler = Callable[[Any], Awaitable[None]]

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
class Registration:
    kind: type
    handler: Handler
    include_own: bool
    name: str
    skip_rooms: frozenset[str] = frozenset()


@dataclass(eq=False)
class Handling:
    """The registered handlers of ``transport``'s account, their calls and their
    failures (see the module's documentation)."""

    transport: Transport
    sessionmaker: async_sessionmaker[AsyncSession]
    _: KW_ONLY
    stats: GatewayStats
    clock: Callable[[], datetime] = utcnow
    crypto: Crypto | None = None
    handler_max_attempts: int = 8
    handler_retry_initial: float = 2.0
    handler_retry_cap: float = 600.0
    key_wait: float = 5.0
    """How long an encrypted event we cannot read waits for its key (asked for once)
    before its handlers are told it is :class:`~forum.events.Undecryptable`."""
    _registrations: list[Registration] = field(init=False, default_factory=list)

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
            Registration(kind, handler, include_own, name, frozenset(skip_rooms))
        )

    def handlers_for(self, event: RoomEvent | Invite) -> list[Registration]:
        own = isinstance(event, RoomEvent) and event.sender == self.user_id
        return [
            r
            for r in self._registrations
            if isinstance(event, r.kind)
            and (r.include_own or not own)
            and event.room_id not in r.skip_rooms
        ]

    async def bookkeeping(
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

    async def handle_lane(self, lane: list[tuple[RoomEvent | Invite, list[Registration]]]) -> int:
        handled = 0
        for ev, regs in lane:
            if self.awaits_key(ev):
                await self._wait_for_key(ev)
                continue
            await self._handle_one(ev, regs)
            handled += 1
        return handled

    def awaits_key(self, ev: RoomEvent | Invite) -> bool:
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

        await self.bookkeeping(f"event {ev.event_id}", keep)

    async def _key_waited(self, failed: FailedHandler) -> None:
        """The wait of an encrypted event is over: its handlers get its clear form if the
        key came meanwhile, else they are told it is :class:`Undecryptable`."""
        clear = self.crypto.decrypt(failed.room_id, failed.event) if self.crypto else None
        ev = parse_room_event(failed.room_id, clear or failed.event)

        async def done(s: AsyncSession) -> None:
            await FailedHandlers(s).succeeded(self.user_id, failed.event_id, AWAITING_KEY)

        await self.bookkeeping(f"event {failed.event_id}", done)
        if ev is None:
            return
        if clear is None:
            log.warning(
                "%s: the key of %s from %s never came; telling its handlers",
                self.user_id,
                failed.event_id,
                ev.sender,
            )
        await self._handle_one(ev, self.handlers_for(ev))

    async def _handle_one(self, ev: RoomEvent | Invite, regs: list[Registration]) -> None:
        """Call an event's handlers; it is then processed, or its failures are kept."""
        failures: list[tuple[Registration, str]] = []
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

        await self.bookkeeping(
            f"event {ev.event_id}", partial(self._record_outcome, ev=ev, retries=retries)
        )
        self.stats.events_dispatched += 1

    async def _record_outcome(
        self,
        s: AsyncSession,
        *,
        ev: RoomEvent | Invite,
        retries: list[tuple[Registration, str, datetime | None]],
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

    async def _call(self, reg: Registration, ev: Any) -> Exception | None:
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

    async def retry_due(self) -> int:
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

            await self.bookkeeping(f"event {failed.event_id}", succeeded)
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

        await self.bookkeeping(f"event {failed.event_id}", failed_again)
