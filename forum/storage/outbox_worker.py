"""Carries out the outbox: the actions that must follow a committed database change.

Items run in *lanes*: those of one lane (a payload's ``lane``, else its ``user_id``, else
its ``room_id``; items with none of them share one lane) one after another in id order,
different lanes side by side (at most ``concurrency`` items at once). One person's
invites and welcome stay in order; a hundred newcomers do not wait for each other behind
a slow homeserver.

Delivery is *at least once*: an item is marked done in its own transaction after its
executor returned, so a crash (or a cancellation) between the two runs it again on the
next start. **Executors must therefore be idempotent** (for example: inviting someone
who is already invited is a success, a message carries a transaction id or a dedupe
key the executor checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .models import utcnow
from .repositories import Outbox, OutboxItem

log = logging.getLogger(__name__)

Executor = Callable[[dict[str, Any]], Awaitable[None]]


def lane_of(payload: dict[str, Any]) -> str:
    """The lane of an item (see the module's docstring)."""
    for key in ("lane", "user_id", "room_id"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


@dataclass(eq=False)
class OutboxWorker:
    """Runs due outbox items through the executor registered for their ``kind``.

    A failed item is retried after an exponential backoff
    (``backoff_base * 2 ** (attempts - 1)`` seconds, capped at ``backoff_max``) and
    abandoned after ``max_attempts`` attempts. An item of unknown kind is a recorded
    failure, retried like any other (a later release may know the kind).
    """

    sessionmaker: async_sessionmaker[AsyncSession]
    executors: Mapping[str, Executor]
    """Read at each item: registrations may add kinds."""
    _: KW_ONLY
    poll_interval: float = 1.0
    max_attempts: int = 20
    batch_size: int = 50
    backoff_base: float = 2.0
    backoff_max: float = 3600.0
    concurrency: int = 8
    """Items carried out at the same time (of different lanes)."""
    clock: Callable[[], datetime] = utcnow
    _wakeup: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    def notify(self) -> None:
        """Wake :meth:`run` now (call after committing a transaction that added items)."""
        self._wakeup.set()

    def backoff(self, attempts: int) -> timedelta:
        """The delay before the next try, after ``attempts`` failed attempts."""
        seconds = self.backoff_base * 2 ** max(attempts - 1, 0)
        return timedelta(seconds=min(seconds, self.backoff_max))

    async def run_once(self) -> int:
        """Execute the items due now: each lane's in id order, the lanes side by side.
        Returns how many were due. A database error is raised once every lane stopped."""
        async with self.sessionmaker() as session:
            items = await Outbox(session).due(self.clock(), limit=self.batch_size)
        lanes: dict[str, list[OutboxItem]] = {}
        for item in items:
            lanes.setdefault(lane_of(item.payload), []).append(item)
        slots = asyncio.Semaphore(max(1, self.concurrency))

        async def run_lane(queue: list[OutboxItem]) -> None:
            for item in queue:
                async with slots:
                    await self._execute(item)

        outcomes = await asyncio.gather(
            *(run_lane(q) for q in lanes.values()), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return len(items)

    async def _execute(self, item: OutboxItem) -> None:
        executor = self.executors.get(item.kind)
        error: str | None
        if executor is None:
            error = f"no executor for outbox kind {item.kind!r}"
            log.error("outbox item %d: %s", item.id, error)
        else:
            try:
                await executor(item.payload)
            except Exception as exc:  # any failure of the action is recorded and retried
                error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "outbox item %d (%s) failed on attempt %d",
                    item.id,
                    item.kind,
                    item.attempts + 1,
                    exc_info=True,
                )
            else:
                error = None
        async with self.sessionmaker() as session, session.begin():
            outbox = Outbox(session)
            if error is None:
                await outbox.mark_done(item.id)
                return
            attempts = item.attempts + 1
            retry_at: datetime | None = None
            if attempts < self.max_attempts:
                retry_at = self.clock() + self.backoff(attempts)
            else:
                log.error(
                    "outbox item %d (%s) abandoned after %d attempts: %s",
                    item.id,
                    item.kind,
                    attempts,
                    error,
                )
            await outbox.mark_failed(item.id, error, retry_at)

    async def step(self) -> None:
        """One round (for :meth:`forum.tasks.TaskSupervisor.every`): run the due items,
        then, unless more may be due now, wait ``poll_interval`` or a :meth:`notify`."""
        self._wakeup.clear()
        attempted = await self.run_once()
        if attempted >= self.batch_size:
            return  # more may be due right now
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.poll_interval):
                await self._wakeup.wait()

    async def run(self) -> None:
        """Loop until cancelled (:meth:`step` again and again). Database errors are
        logged and the loop goes on."""
        while True:
            try:
                await self.step()
            except (SQLAlchemyError, OSError):
                log.exception("outbox worker: database error; retrying")
                await asyncio.sleep(self.poll_interval)
