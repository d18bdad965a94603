"""One repository per aggregate; each owns its queries.

A repository takes an :class:`AsyncSession` and works inside the caller's transaction:
it flushes when it must, never commits. Upserts and "insert unless present" use the
dialect's ``INSERT ... ON CONFLICT`` so a duplicate never raises and never spoils the
transaction, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from .models import (
    BotSessionRow,
    FailedHandlerRow,
    OutboxRow,
    ProcessedEvent,
    Room,
    SyncToken,
    utcnow,
)

ROOM_KINDS = frozenset({"space", "lobby", "announcements", "management", "policy", "topic"})

# Keeps IN (...) lists well under every backend's bound-parameter limit.
_CHUNK = 500


def _insert(session: AsyncSession, model: type[Any]) -> Any:
    """A dialect-specific INSERT that supports ``on_conflict_do_*``."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")


async def upsert(
    session: AsyncSession,
    model: type[Any],
    key: Mapping[str, Any],
    values: Mapping[str, Any],
    *,
    when_new: Mapping[str, Any] | None = None,
) -> None:
    """Insert the row of ``model`` whose primary key is ``key`` with ``values`` (and the
    columns ``when_new``), or, when it exists, update its ``values`` only."""
    stmt = _insert(session, model).values(**key, **values, **(when_new or {}))
    stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=dict(values))
    await session.execute(stmt)


class Repository:
    """The queries of one aggregate, inside the caller's session (its transaction)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session


R = TypeVar("R")


def record_of(record: type[R], row: object) -> R:
    """A frozen record (a dataclass) filled from the ORM row's attributes of the same names:
    what repositories hand out, so that nothing outside a session touches a live row."""
    return record(**{f.name: getattr(row, f.name) for f in dataclasses.fields(record)})  # type: ignore[arg-type]


class SyncTokens(Repository):
    """The ``next_batch`` token of each bot account's sync loop."""

    async def get(self, account: str) -> str | None:
        stmt = select(SyncToken.next_batch).where(SyncToken.account == account)
        return cast("str | None", await self.session.scalar(stmt))

    async def set(self, account: str, token: str) -> None:
        values = {"next_batch": token, "updated_at": utcnow()}
        await upsert(self.session, SyncToken, {"account": account}, values)


@dataclass(frozen=True, slots=True)
class BotSession:
    account: str
    homeserver: str
    device_id: str
    access_token: str
    updated_at: datetime

    def __repr__(self) -> str:  # never show the token
        return (
            f"BotSession(account={self.account!r}, homeserver={self.homeserver!r}, "
            f"device_id={self.device_id!r}, access_token=<hidden>)"
        )


class BotSessions(Repository):
    """Stored logins of the bot accounts (device id and access token)."""

    async def get(self, account: str) -> BotSession | None:
        stmt = select(BotSessionRow).where(BotSessionRow.account == account)
        row = await self.session.scalar(stmt.execution_options(populate_existing=True))
        if row is None:
            return None
        return BotSession(
            account=row.account,
            homeserver=row.homeserver,
            device_id=row.device_id,
            access_token=row.access_token,
            updated_at=row.updated_at,
        )

    async def save(self, account: str, homeserver: str, device_id: str, access_token: str) -> None:
        values = {
            "homeserver": homeserver,
            "device_id": device_id,
            "access_token": access_token,
            "updated_at": utcnow(),
        }
        await upsert(self.session, BotSessionRow, {"account": account}, values)

    async def delete(self, account: str) -> None:
        await self.session.execute(delete(BotSessionRow).where(BotSessionRow.account == account))


@dataclass(frozen=True, slots=True)
class RoomRecord:
    key: str
    room_id: str
    kind: str
    alias: str | None
    detached: bool
    created_at: datetime
    updated_at: datetime


class RoomRegistry(Repository):
    """The rooms the forum manages, by stable key ("space", "lobby", "topic:<slug>")."""

    async def _one(self, *where: Any) -> RoomRecord | None:
        stmt = select(Room).where(*where).execution_options(populate_existing=True)
        row = await self.session.scalar(stmt)
        return None if row is None else record_of(RoomRecord, row)

    async def get(self, key: str) -> RoomRecord | None:
        return await self._one(Room.key == key)

    async def by_room_id(self, room_id: str) -> RoomRecord | None:
        return await self._one(Room.room_id == room_id)

    async def all(self, include_detached: bool = False) -> list[RoomRecord]:
        stmt = select(Room).order_by(Room.key).execution_options(populate_existing=True)
        if not include_detached:
            stmt = stmt.where(Room.detached.is_(False))
        rows = await self.session.scalars(stmt)
        return [record_of(RoomRecord, row) for row in rows]

    async def upsert(self, key: str, room_id: str, kind: str, alias: str | None) -> RoomRecord:
        """Record (or move) ``key`` to ``room_id``; an upserted room is attached again."""
        if kind not in ROOM_KINDS:
            raise ValueError(f"unknown room kind {kind!r}; expected one of {sorted(ROOM_KINDS)}")
        now = utcnow()
        values = {
            "room_id": room_id,
            "kind": kind,
            "alias": alias,
            "detached": False,
            "updated_at": now,
        }
        await upsert(self.session, Room, {"key": key}, values, when_new={"created_at": now})
        record = await self.get(key)
        assert record is not None
        return record

    async def mark_detached(self, key: str) -> bool:
        """Flag ``key`` as no longer managed. Returns False if there is no such key."""
        stmt = (
            update(Room)
            .where(Room.key == key)
            .values(detached=True, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        result = cast("CursorResult[Any]", await self.session.execute(stmt))
        return result.rowcount > 0


async def _event_ids_among(
    session: AsyncSession,
    table: type[ProcessedEvent] | type[FailedHandlerRow],
    account: str,
    ids: Iterable[str],
) -> set[str]:
    """Which of ``ids`` have a row of ``table`` for ``account`` (asked in chunks)."""
    wanted = list(dict.fromkeys(ids))
    found: set[str] = set()
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        stmt = select(table.event_id).where(table.account == account, table.event_id.in_(chunk))
        found.update(await session.scalars(stmt))
    return found


class ProcessedEvents(Repository):
    """Which events each bot account has handled: handlers are idempotent by event id."""

    async def seen(self, account: str, event_id: str) -> bool:
        stmt = select(ProcessedEvent.event_id).where(
            ProcessedEvent.account == account, ProcessedEvent.event_id == event_id
        )
        return await self.session.scalar(stmt) is not None

    async def seen_many(self, account: str, ids: Iterable[str]) -> set[str]:
        return await _event_ids_among(self.session, ProcessedEvent, account, ids)

    async def mark(self, account: str, event_id: str) -> bool:
        """Record ``event_id`` as handled. Returns False if it already was (no error)."""
        stmt = (
            _insert(self.session, ProcessedEvent)
            .values(account=account, event_id=event_id, processed_at=utcnow())
            .on_conflict_do_nothing(
                index_elements=[ProcessedEvent.account, ProcessedEvent.event_id]
            )
        )
        result = cast("CursorResult[Any]", await self.session.execute(stmt))
        return result.rowcount > 0

    async def prune(self, older_than: datetime) -> int:
        """Forget events processed before ``older_than``; returns how many."""
        stmt = delete(ProcessedEvent).where(ProcessedEvent.processed_at < older_than)
        result = cast("CursorResult[Any]", await self.session.execute(stmt))
        return result.rowcount


@dataclass(frozen=True, slots=True)
class FailedHandler:
    account: str
    event_id: str
    handler: str
    room_id: str
    event: dict[str, Any]
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime


class FailedHandlers(Repository):
    """Handlers that raised on an event, per bot account: the event stays unprocessed
    while one is pending (``next_attempt_at`` set) or abandoned (``next_attempt_at`` NULL)."""

    async def add(
        self,
        account: str,
        event_id: str,
        handler: str,
        *,
        room_id: str,
        event: dict[str, Any],
        error: str,
        retry_at: datetime | None,
    ) -> None:
        """Record a first failure of ``handler`` on ``event_id`` (one attempt made);
        an existing record is left alone."""
        stmt = (
            _insert(self.session, FailedHandlerRow)
            .values(
                account=account,
                event_id=event_id,
                handler=handler,
                room_id=room_id,
                event=event,
                attempts=1,
                next_attempt_at=retry_at,
                last_error=error[:4000],
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(
                index_elements=[
                    FailedHandlerRow.account,
                    FailedHandlerRow.event_id,
                    FailedHandlerRow.handler,
                ]
            )
        )
        await self.session.execute(stmt)

    async def event_ids_among(self, account: str, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` have a failed handler recorded (pending or abandoned)."""
        return await _event_ids_among(self.session, FailedHandlerRow, account, ids)

    async def due(self, account: str, now: datetime, limit: int = 50) -> list[FailedHandler]:
        """Pending failures whose next attempt has come, oldest first."""
        stmt = (
            select(FailedHandlerRow)
            .where(FailedHandlerRow.account == account, FailedHandlerRow.next_attempt_at <= now)
            .order_by(FailedHandlerRow.created_at, FailedHandlerRow.event_id)
            .limit(limit)
            .execution_options(populate_existing=True)
        )
        return [record_of(FailedHandler, row) for row in await self.session.scalars(stmt)]

    async def next_due(self, account: str) -> datetime | None:
        """When the earliest pending failure is due (None: nothing pending)."""
        stmt = select(func.min(FailedHandlerRow.next_attempt_at)).where(
            FailedHandlerRow.account == account
        )
        return cast("datetime | None", await self.session.scalar(stmt))

    async def succeeded(self, account: str, event_id: str, handler: str) -> bool:
        """Forget the failure of ``handler``; returns True if none is left for the event
        (then the caller marks it processed in the same transaction)."""
        await self.session.execute(
            delete(FailedHandlerRow).where(
                FailedHandlerRow.account == account,
                FailedHandlerRow.event_id == event_id,
                FailedHandlerRow.handler == handler,
            )
        )
        left = await self.session.scalar(
            select(func.count()).where(
                FailedHandlerRow.account == account, FailedHandlerRow.event_id == event_id
            )
        )
        return not left

    async def failed_again(
        self, account: str, event_id: str, handler: str, error: str, retry_at: datetime | None
    ) -> None:
        """Record one more failed attempt; retry at ``retry_at``, or never if it is None."""
        stmt = (
            update(FailedHandlerRow)
            .where(
                FailedHandlerRow.account == account,
                FailedHandlerRow.event_id == event_id,
                FailedHandlerRow.handler == handler,
            )
            .values(
                attempts=FailedHandlerRow.attempts + 1,
                last_error=error[:4000],
                next_attempt_at=retry_at,
            )
            .execution_options(synchronize_session=False)
        )
        await self.session.execute(stmt)

    async def abandoned(self, account: str, limit: int = 100) -> list[FailedHandler]:
        """Failures given up on, oldest first (for operators)."""
        stmt = (
            select(FailedHandlerRow)
            .where(FailedHandlerRow.account == account, FailedHandlerRow.next_attempt_at.is_(None))
            .order_by(FailedHandlerRow.created_at)
            .limit(limit)
            .execution_options(populate_existing=True)
        )
        return [record_of(FailedHandler, row) for row in await self.session.scalars(stmt)]


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    kind: str
    payload: dict[str, Any]
    dedupe_key: str | None
    created_at: datetime
    attempts: int
    next_attempt_at: datetime | None
    done_at: datetime | None
    last_error: str | None


class Outbox(Repository):
    """Actions to carry out once the transaction that wrote them has committed.

    Write an item in the same transaction as the change it follows; the
    :class:`~forum.storage.outbox_worker.OutboxWorker` carries it out afterwards.
    An item is *pending* until done; ``mark_failed(..., retry_at=None)`` abandons it.
    """

    async def add(
        self, kind: str, payload: dict[str, Any], dedupe_key: str | None = None
    ) -> int | None:
        """Queue an item; returns its id, or None if ``dedupe_key`` is already queued
        (the transaction stays usable)."""
        now = utcnow()
        stmt = (
            _insert(self.session, OutboxRow)
            .values(
                kind=kind,
                payload=payload,
                dedupe_key=dedupe_key,
                created_at=now,
                attempts=0,
                next_attempt_at=now,
            )
            .on_conflict_do_nothing(index_elements=[OutboxRow.dedupe_key])
            .returning(OutboxRow.id)
        )
        result = await self.session.execute(stmt)
        return cast("int | None", result.scalar_one_or_none())

    async def get(self, item_id: int) -> OutboxItem | None:
        stmt = (
            select(OutboxRow)
            .where(OutboxRow.id == item_id)
            .execution_options(populate_existing=True)
        )
        row = await self.session.scalar(stmt)
        return None if row is None else record_of(OutboxItem, row)

    async def due(self, now: datetime, limit: int = 50) -> list[OutboxItem]:
        """Pending items whose time has come, oldest first."""
        stmt = (
            select(OutboxRow)
            .where(OutboxRow.done_at.is_(None), OutboxRow.next_attempt_at <= now)
            .order_by(OutboxRow.id)
            .limit(limit)
            .execution_options(populate_existing=True)
        )
        return [record_of(OutboxItem, row) for row in await self.session.scalars(stmt)]

    async def mark_done(self, item_id: int) -> None:
        stmt = (
            update(OutboxRow)
            .where(OutboxRow.id == item_id)
            .values(done_at=utcnow(), attempts=OutboxRow.attempts + 1)
            .execution_options(synchronize_session=False)
        )
        await self.session.execute(stmt)

    async def mark_failed(self, item_id: int, error: str, retry_at: datetime | None) -> None:
        """Record a failed attempt; retry at ``retry_at``, or never if it is None."""
        stmt = (
            update(OutboxRow)
            .where(OutboxRow.id == item_id)
            .values(
                attempts=OutboxRow.attempts + 1,
                last_error=error[:4000],
                next_attempt_at=retry_at,
            )
            .execution_options(synchronize_session=False)
        )
        await self.session.execute(stmt)

    async def pending_count(self) -> int:
        """Items not done and not abandoned."""
        stmt = select(func.count()).where(
            OutboxRow.done_at.is_(None), OutboxRow.next_attempt_at.is_not(None)
        )
        return int(await self.session.scalar(stmt) or 0)

    async def oldest_pending(self) -> datetime | None:
        """When the oldest item not done and not abandoned was written (None: none is)."""
        stmt = select(func.min(OutboxRow.created_at)).where(
            OutboxRow.done_at.is_(None), OutboxRow.next_attempt_at.is_not(None)
        )
        oldest = await self.session.scalar(stmt)
        if oldest is not None and oldest.tzinfo is None:  # SQLite keeps no zone: UTC
            oldest = oldest.replace(tzinfo=UTC)
        return oldest

    async def abandoned(self, limit: int = 100) -> Sequence[OutboxItem]:
        """Items the worker gave up on, oldest first (for operators)."""
        stmt = (
            select(OutboxRow)
            .where(OutboxRow.done_at.is_(None), OutboxRow.next_attempt_at.is_(None))
            .order_by(OutboxRow.id)
            .limit(limit)
            .execution_options(populate_existing=True)
        )
        return [record_of(OutboxItem, row) for row in await self.session.scalars(stmt)]
