"""Typed declarative models of the foundation tables.

Every timestamp is a timezone-aware UTC ``datetime`` in Python. :class:`UTCDateTime`
stores it portably: ``timestamptz`` on PostgreSQL, a naive-UTC ISO string on SQLite
(so string comparison there is chronological), and always hands back an aware UTC value.

The schema itself is created by the Alembic migrations in ``migrations/``, never by
``Base.metadata.create_all``; these models must stay in step with them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, stored the same way on every backend.

    Naive datetimes are refused on the way in: their meaning is ambiguous.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSON on SQLite, JSONB on PostgreSQL.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class SyncToken(Base):
    """The ``next_batch`` of each bot account, stored after its handlers ran."""

    __tablename__ = "sync_tokens"

    account: Mapped[str] = mapped_column(Text, primary_key=True)
    next_batch: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class BotSessionRow(Base):
    """A bot account's login: device id and access token (a secret: never log it)."""

    __tablename__ = "bot_sessions"

    account: Mapped[str] = mapped_column(Text, primary_key=True)
    homeserver: Mapped[str] = mapped_column(Text)
    device_id: Mapped[str] = mapped_column(Text)
    access_token: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Room(Base):
    """A room the forum manages, by stable key ("space", "lobby", "topic:<slug>")."""

    __tablename__ = "rooms"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    room_id: Mapped[str] = mapped_column(Text, unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    alias: Mapped[str | None] = mapped_column(Text)
    detached: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ProcessedEvent(Base):
    """An event a bot account has fully handled (handlers are idempotent by event id)."""

    __tablename__ = "processed_events"

    account: Mapped[str] = mapped_column(Text, primary_key=True)
    event_id: Mapped[str] = mapped_column(Text, primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class OutboxRow(Base):
    """An action to carry out after the transaction that wrote it commits.

    ``next_attempt_at`` is NULL once the worker gave up on the item (too many attempts).
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    dedupe_key: Mapped[str | None] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow, index=True)
    done_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)


class FailedHandlerRow(Base):
    """A handler that raised on an event: the event stays unprocessed and the handler is
    tried again at ``next_attempt_at`` (NULL once abandoned after too many attempts)."""

    __tablename__ = "failed_handlers"

    account: Mapped[str] = mapped_column(Text, primary_key=True)
    event_id: Mapped[str] = mapped_column(Text, primary_key=True)
    handler: Mapped[str] = mapped_column(Text, primary_key=True)
    room_id: Mapped[str] = mapped_column(Text)
    event: Mapped[dict[str, Any]]
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ServiceLeaseRow(Base):
    """Who runs the forum: the process holding the lease acts, the others stand by.

    ``token`` grows at every change of holder (the fencing token: a write of a process
    whose token is no longer the row's is refused); ``expires_at`` is pushed forward by
    the holder every few seconds and a standby takes the lease once it has passed.
    """

    __tablename__ = "service_lease"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    holder: Mapped[str | None] = mapped_column(Text)
    token: Mapped[int] = mapped_column(default=0, server_default="0")
    acquired_at: Mapped[datetime | None]
    renewed_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
