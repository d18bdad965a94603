"""Tables of the moderation bot (created by migration ``0004_moderation``, never create_all)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from forum.storage.models import Base, utcnow


class AuditEntry(Base):
    """One moderation action: who, what, to whom, where, why, when, triggered by what."""

    __tablename__ = "moderation_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(Text, index=True)
    rooms: Mapped[dict[str, Any]]
    reason: Mapped[str | None] = mapped_column(Text)
    event_id: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(32))
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Mute(Base):
    """A muted person; ``until`` NULL means until a moderator unmutes."""

    __tablename__ = "moderation_mutes"

    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    until: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Strike(Base):
    """A person's current graduated step (index into the configured steps)."""

    __tablename__ = "moderation_strikes"

    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    step: Mapped[int] = mapped_column(Integer)
    last_at: Mapped[datetime]


class DirectRoom(Base):
    """The DM room the bot uses with one person (reused for every warning)."""

    __tablename__ = "moderation_dm_rooms"

    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    room_id: Mapped[str] = mapped_column(Text, index=True)


class Case(Base):
    """A report, shown as a card in the management room."""

    __tablename__ = "moderation_cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(Text, unique=True)
    room_id: Mapped[str | None] = mapped_column(Text)
    event_id: Mapped[str | None] = mapped_column(Text)
    reported_user: Mapped[str | None] = mapped_column(Text)
    reporter: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    quoted: Mapped[str | None] = mapped_column(Text)
    card_event_id: Mapped[str | None] = mapped_column(Text, index=True)
    status: Mapped[str] = mapped_column(String(16), default="open")
    handled_by: Mapped[str | None] = mapped_column(Text)
    handled_action: Mapped[str | None] = mapped_column(String(16))


class KeyValue(Base):
    """Small persistent state: dry-run switch, locks, report-poll cursor."""

    __tablename__ = "moderation_state"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[dict[str, Any]]


class FirstJoin(Base):
    """When a person was first seen joining a forum room (for new-member protections)."""

    __tablename__ = "moderation_first_joins"

    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    joined_at: Mapped[datetime]


class PolicyBan(Base):
    """A ban carried out because of a subscribed policy rule (undone with the rule)."""

    __tablename__ = "moderation_policy_bans"

    rule_key: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
