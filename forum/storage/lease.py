"""The service lease: of the ``forum run`` processes on one database, the one holding the
lease acts (syncs, answers, carries out the outbox); the others stand by and take it over
when it ends.

The lease is a row of ``service_lease``: its holder, an ``expires_at`` the holder pushes
forward every ``seconds / 3`` and a fencing ``token`` raised at every change of holder. A
standby takes the row once ``expires_at`` has passed (on PostgreSQL by the server's clock,
so that the machines' clocks do not matter), or at once when it gets the exclusive hold
below. The holder counts its lease as valid
until ``seconds`` (less a margin) after the start of its last successful renewal, on its
own monotonic clock: it stops acting before any standby may start.

Exclusivity that dies with the process: on PostgreSQL the candidate holds a session-level
advisory lock on a dedicated connection, on SQLite an exclusive ``flock`` of a file beside
the database (``forum.db.lease``). Only the process holding it competes for the row. So
while the holder keeps it, a renewal that fails because the database is locked or slow
(a long write elsewhere, a backup) does not make it step down: nobody else can take the
row meanwhile (issue #11: a locked database stops nothing). The holder steps down when
it loses that hold (PostgreSQL: the lock's connection broke or stopped answering). A
free hold means its holder is gone (SQLite: the process, one machine; PostgreSQL: the
session, which the server ended), so the row is then taken at once, without waiting for
its expiry; an old holder whose session the server ended while it lives finds out at its
next renewal (``seconds / 3``) and steps down, and its writes are fenced meanwhile.

Fencing: once armed (:attr:`forum.storage.Database.guard`), every write unit of work of
the holder first checks, in its own transaction, that the row still names it with its
token (PostgreSQL: ``FOR SHARE``, so that a takeover waits for the writes under way and
is seen by every later one). A process that lost the lease has its writes refused with
:class:`LeaseLost`; nothing of its bookkeeping can overwrite the new holder's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Table, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import func

from .db import WRITE_OPTION, StorageError, _driver_errors
from .models import ServiceLeaseRow, utcnow

log = logging.getLogger(__name__)

LEASE_NAME = "forum"
#: Seconds the advisory lock's connection may take to answer a check, at least (five
#: leases if longer): a database starved of CPU answers late, but its lock holds.
ANSWER_WITHIN = 30.0
#: The advisory lock of the candidates on PostgreSQL (any constant other than the
#: migrations' will do).
_PG_LEASE_LOCK_ID = 0x666F72756D4C  # "forumL"
_TABLE: Table = ServiceLeaseRow.__table__  # type: ignore[assignment]

Role = Literal["standby", "active", "stepped-down"]


class LeaseLost(StorageError):
    """This process does not hold the service lease (any more): it must not act."""


def default_holder(instance: str | None = None) -> str:
    """A name for this process, unique among the candidates: ``instance`` (or the host's
    name), the process id and a random suffix."""
    return f"{instance or socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class LeaseState:
    """The row as last read."""

    holder: str | None
    token: int
    expires_at: datetime | None


def _errors() -> tuple[type[BaseException], ...]:
    return (SQLAlchemyError, OSError, TimeoutError, *_driver_errors())


class Lease:
    """The lease of one process. :meth:`acquire` waits for it (standing by), :meth:`keep`
    renews it until it is lost, :meth:`check` fences a write, :meth:`release` hands it
    over at once on a clean stop.

    ``seconds``: how long the lease lasts without renewal, hence the longest a standby
    waits after the holder died; ``poll``: how often a standby looks.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        holder: str,
        *,
        name: str = LEASE_NAME,
        seconds: float = 6.0,
        poll: float = 1.0,
    ) -> None:
        if seconds < 1:
            raise ValueError("a lease lasts at least one second")
        self.engine = engine
        self.holder = holder
        self.name = name
        self.seconds = seconds
        self.poll = poll
        self.renew_every = seconds / 3
        self.margin = min(1.0, seconds / 10)
        self.answer_within = max(ANSWER_WITHIN, 5 * seconds)
        """How long the lock's connection may take to answer (see :meth:`_still_exclusive`)."""
        self.role: Role = "standby"
        self.token: int | None = None
        self.current: LeaseState | None = None
        """The row as last read (the holder, for ``/healthz``)."""
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self.acquired_at: float | None = None
        """``time.time()`` when this process took the lease."""
        self._valid_until = 0.0
        self._lock_conn: AsyncConnection | None = None
        self._pinging: asyncio.Future[None] | None = None
        self._locked = False
        self._flock_fd: int | None = None
        database = engine.url.database
        self._flock_path = (
            f"{database}.lease"
            if engine.dialect.name == "sqlite" and database not in (None, "", ":memory:")
            else None
        )
        self._on_lost: list[Callable[[], None]] = []
        self._stray: set[asyncio.Future[None]] = set()

    # --- what it is ----------------------------------------------------------------------
    @property
    def postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @property
    def held(self) -> bool:
        """Held and, by this process's clock, not expired (or, SQLite, its ``flock``
        still held: nobody else can take it)."""
        return self.role == "active" and (
            self._flock_fd is not None or time.monotonic() < self._valid_until
        )

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (synchronous, must not raise) the moment the lease is lost."""
        self._on_lost.append(callback)

    def describe(self) -> dict[str, Any]:
        """What ``/healthz`` shows: this process's role and name, the holder's name, the
        fencing token and when the holder's lease ends."""
        current = self.current
        return {
            "role": self.role,
            "instance": self.holder,
            "holder": current.holder if current else None,
            "token": current.token if current else None,
            "expires_at": current.expires_at.isoformat()
            if current and current.expires_at
            else None,
        }

    # --- standing by ---------------------------------------------------------------------
    def _write(self) -> Any:
        return self.engine.execution_options(**{WRITE_OPTION: True}).begin()

    async def _now(self, conn: AsyncConnection) -> datetime:
        """The database's clock on PostgreSQL (shared by every machine), ours on SQLite
        (one machine)."""
        if self.postgres:
            now = await conn.scalar(select(func.clock_timestamp()))
            assert isinstance(now, datetime)
            return now
        return utcnow()

    async def _advisory_lock(self) -> bool:
        """PostgreSQL: hold the candidates' advisory lock on a dedicated connection."""
        if self._locked:
            return True
        if self._lock_conn is None:
            conn = await self.engine.connect()
            try:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
            except BaseException:
                await conn.close()
                raise
            self._lock_conn = conn
        got = await self._lock_conn.scalar(
            text("SELECT pg_try_advisory_lock(:id)"), {"id": _PG_LEASE_LOCK_ID}
        )
        self._locked = bool(got)
        return self._locked

    def _file_lock(self) -> bool:
        """SQLite: hold the exclusive ``flock`` of the file beside the database (freed by
        the system when this process dies, however it dies)."""
        if self._flock_fd is not None:
            return True
        if self._flock_path is None:
            return True
        fd = os.open(self._flock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._flock_fd = fd
        return True

    async def _still_exclusive(self) -> bool:
        """Whether this process still holds its exclusive hold (PostgreSQL: the lock's
        connection answers within :attr:`answer_within`).

        The advisory lock passes to another process only once the server has ended this
        connection, and then the connection fails: a slow answer (the server or this
        process starved of CPU) is waited for, not taken as a loss. Only a connection
        that answers nothing for that long is (a network cut off, say)."""
        if self._flock_fd is not None:
            return True
        if self._lock_conn is None or not self._locked:
            return False
        try:
            async with asyncio.timeout(self.answer_within):
                await asyncio.shield(self._ping())
        except TimeoutError:
            return False
        except _errors():
            return False
        return True

    def _ping(self) -> asyncio.Future[None]:
        """A ``SELECT 1`` on the lock's connection: one at a time, shared by whoever asks
        meanwhile, and never cancelled by one who gives up waiting (a statement cancelled
        in flight leaves the connection busy, and the next check would fail on it)."""
        if self._pinging is None or self._pinging.done():
            conn = self._lock_conn
            assert conn is not None

            async def ping() -> None:
                await conn.execute(text("SELECT 1"))

            self._pinging = asyncio.ensure_future(ping())
            # its failure is its waiters' to handle; one nobody waits for any more is dropped
            self._pinging.add_done_callback(lambda f: f.cancelled() or f.exception())
        return self._pinging

    async def read(self) -> LeaseState | None:
        """The row as it is now (None: nobody ever held the lease)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(_TABLE).where(_TABLE.c.name == self.name))).first()
        self.current = None if row is None else LeaseState(row.holder, row.token, row.expires_at)
        return self.current

    async def try_acquire(self) -> bool:
        """Take the lease if nobody holds it or its holder's lease has expired."""
        if self.role == "active":
            return True
        if self.postgres and not await self._advisory_lock():
            await self.read()
            return False
        if not self.postgres and not self._file_lock():
            await self.read()
            return False
        # with the exclusive hold, whoever held the row is gone (its process, or on
        # PostgreSQL its session, which the server ended) or let it go: take it at once
        free_row = self._flock_fd is not None or (self.postgres and self._locked)
        started = time.monotonic()
        async with self._write() as conn:
            now = await self._now(conn)
            query = select(_TABLE).where(_TABLE.c.name == self.name)
            if self.postgres:
                query = query.with_for_update()
            row = (await conn.execute(query)).first()
            expires = now + timedelta(seconds=self.seconds)
            values = {
                "holder": self.holder,
                "acquired_at": now,
                "renewed_at": now,
                "expires_at": expires,
            }
            if row is None:
                token = 1
                await conn.execute(insert(_TABLE).values(name=self.name, token=token, **values))
            elif free_row or row.holder is None or row.expires_at is None or row.expires_at <= now:
                token = row.token + 1
                await conn.execute(
                    update(_TABLE).where(_TABLE.c.name == self.name).values(token=token, **values)
                )
            else:
                self.current = LeaseState(row.holder, row.token, row.expires_at)
                return False
        self.token = token
        self.current = LeaseState(self.holder, token, expires)
        self._valid_until = started + self.seconds - self.margin
        self.role = "active"
        self.acquired_at = time.time()
        log.info("took the service lease (token %d) as %s", token, self.holder)
        return True

    async def acquire(self) -> None:
        """Wait until this process holds the lease, looking every ``poll`` seconds (a
        database error is logged and the wait goes on)."""
        told = False
        while True:
            try:
                if await self.try_acquire():
                    return
            except _errors() as exc:
                log.warning(
                    "service lease: cannot reach the database: %s: %s", type(exc).__name__, exc
                )
            else:
                if not told and self.current is not None:
                    log.info(
                        "standing by: the forum is run by %s (lease until %s)",
                        self.current.holder,
                        self.current.expires_at,
                    )
                    told = True
            await asyncio.sleep(self.poll)

    # --- holding it ----------------------------------------------------------------------
    async def renew(self) -> None:
        """Push the lease's end forward. Raises :class:`LeaseLost` when another process
        took it or (PostgreSQL) the advisory lock's connection broke."""
        if self.role != "active":
            raise LeaseLost("this process does not hold the service lease")
        started = time.monotonic()
        if self._lock_conn is not None:
            try:
                await asyncio.shield(self._ping())
            except _errors() as exc:
                raise LeaseLost(
                    f"the connection holding the advisory lock broke: {type(exc).__name__}"
                ) from exc
        async with self._write() as conn:
            now = await self._now(conn)
            expires = now + timedelta(seconds=self.seconds)
            result = await conn.execute(
                update(_TABLE)
                .where(
                    _TABLE.c.name == self.name,
                    _TABLE.c.holder == self.holder,
                    _TABLE.c.token == self.token,
                )
                .values(renewed_at=now, expires_at=expires)
            )
            if result.rowcount != 1:
                raise LeaseLost("another process took the service lease")
        assert self.token is not None
        self.current = LeaseState(self.holder, self.token, expires)
        self._valid_until = started + self.seconds - self.margin

    async def keep(self) -> None:
        """Renew the lease every ``seconds / 3`` until it is lost, then raise
        :class:`LeaseLost` (after stepping down: see :meth:`on_lost`). A renewal that fails
        or hangs (the database unreachable or locked) is tried again until the lease would
        expire; a hanging one is not waited for past that moment (a driver may take long
        to give up a statement). Once lost, the advisory lock is let go."""
        try:
            await self._keep()
        except LeaseLost:
            await self.close()
            raise

    async def _keep(self) -> None:
        while True:
            left = self._valid_until - time.monotonic()
            await asyncio.sleep(max(0.0, min(self.renew_every, left)))
            left = self._valid_until - time.monotonic()
            if left <= 0 and await self._still_exclusive():
                # the database is locked or slow, but nobody else can take the lease
                log.warning("service lease: not renewed in time; kept (the exclusive lock holds)")
                self._valid_until = time.monotonic() + self.renew_every
                left = self._valid_until - time.monotonic()
            if left <= 0:
                self._lose("the lease could not be renewed before it expired")
            renewal = asyncio.ensure_future(self.renew())
            # retrieved even when the keeper is cancelled meanwhile (the service stopping)
            renewal.add_done_callback(lambda f: f.cancelled() or f.exception())
            done, _ = await asyncio.wait([renewal], timeout=min(self.renew_every, left))
            if not done:
                renewal.cancel()
                self._stray.add(renewal)
                renewal.add_done_callback(self._forget_stray)
                log.warning(
                    "service lease: the database did not answer the renewal; %.1f s left",
                    self._valid_until - time.monotonic(),
                )
                continue
            exc = renewal.exception()
            if isinstance(exc, LeaseLost):
                self._lose(str(exc))
            elif isinstance(exc, _errors()):
                log.warning(
                    "service lease: renewal failed (%s: %s); %.1f s left",
                    type(exc).__name__,
                    exc,
                    self._valid_until - time.monotonic(),
                )
            elif exc is not None:
                raise exc

    def _forget_stray(self, task: asyncio.Future[None]) -> None:
        self._stray.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: it failed late, as expected

    def _lose(self, reason: str) -> None:
        if self.role == "active":
            log.error("lost the service lease: %s; stepping down", reason)
            self.role = "stepped-down"
            self._valid_until = 0.0
            self.lost_reason = reason
            self.lost.set()
            for callback in self._on_lost:
                try:
                    callback()
                except Exception:
                    log.exception("stepping down failed")
        raise LeaseLost(reason)

    async def check(self, conn: AsyncConnection) -> None:
        """Fence a write: raise :class:`LeaseLost` unless this process holds the lease
        (by its clock and by the row, read in the write's own transaction)."""
        if self.role != "active":
            raise LeaseLost("this process does not hold the service lease")
        if not self.held:
            if await self._still_exclusive():
                # the renewal is late (the database locked or slow), but nobody else can
                # take the lease meanwhile: the write goes on (as in :meth:`keep`)
                self._valid_until = max(self._valid_until, time.monotonic() + self.renew_every)
            else:
                self._lose("the lease expired before it could be renewed")
        query = select(_TABLE.c.token, _TABLE.c.holder).where(_TABLE.c.name == self.name)
        if self.postgres:
            query = query.with_for_update(read=True)
        row = (await conn.execute(query)).first()
        if row is None or row.token != self.token or row.holder != self.holder:
            self._lose("the lease row names another holder")

    async def release(self) -> None:
        """Hand the lease over (a clean stop): a standby may take it at once."""
        try:
            if self.role == "active":
                self.role = "standby"
                self._valid_until = 0.0
                # PostgreSQL: a server that never answers is not waited for. SQLite: its
                # busy timeout bounds the wait and fails cleanly; cancelling the write from
                # here instead could leave its connection holding the file's write lock,
                # which then failed the next process's open ("database is locked")
                limit = 5 if self.postgres else None
                try:
                    async with asyncio.timeout(limit), self._write() as conn:
                        await conn.execute(
                            update(_TABLE)
                            .where(
                                _TABLE.c.name == self.name,
                                _TABLE.c.holder == self.holder,
                                _TABLE.c.token == self.token,
                            )
                            .values(holder=None, expires_at=None)
                        )
                except _errors() as exc:
                    log.warning(
                        "service lease: could not hand it over (%s); it ends by itself", exc
                    )
        finally:
            await self.close()

    async def close(self) -> None:
        """Drop the advisory lock's connection (without handing the row over)."""
        for stray in list(self._stray):  # a renewal the database never answered
            with contextlib.suppress(BaseException):
                await stray
        fd, self._flock_fd = self._flock_fd, None
        if fd is not None:
            os.close(fd)  # the flock goes with it
        conn, self._lock_conn = self._lock_conn, None
        self._locked = False
        pinging, self._pinging = self._pinging, None
        if pinging is not None and not pinging.done():
            # the connection is dropped anyway; a server that never answers is not waited for
            pinging.cancel()
            await asyncio.wait([pinging], timeout=5)
        if conn is not None:
            try:
                # never back to the pool with the session's lock: close it for good
                await conn.invalidate()
                await conn.close()
            except _errors() as exc:
                log.debug("service lease: closing its connection: %s", exc)
