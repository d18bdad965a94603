"""The membership bot's own tables: the flow state of each person and the approvals.

Consent itself lives in :mod:`forum.consent` (append-only records); these tables only
say where each person is in the flow (DM room, step, language), the pending moderator
approvals, flood counters and charter grace deadlines.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from forum.storage.models import Base, UTCDateTime, utcnow

# Steps of the flow.
LANGUAGE = "language"  # asked which language
CHARTER = "charter"  # charter sent, waiting for acceptance
PUBLICATION = "publication"  # asked about publication
APPROVAL = "approval"  # waiting for a moderator
MEMBER = "member"  # admitted (invites queued)
DENIED = "denied"
LEFT = "left"

# Statuses of an approval request (``withdrawn``: the person left before a decision).
PENDING = "pending"
APPROVED = "approved"
REFUSED = "denied"
WITHDRAWN = "withdrawn"


class PersonRow(Base):
    __tablename__ = "membership_people"

    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    dm_room_id: Mapped[str | None] = mapped_column(Text, nullable=True, index=True)
    lang: Mapped[str | None] = mapped_column(String(16), nullable=True)
    step: Mapped[str] = mapped_column(String(32), nullable=False)
    door: Mapped[str] = mapped_column(String(16), nullable=False)
    knocked_rooms: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    charter_event_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    charter_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    question_event_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    entries: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    reconsent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reconsent_event_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    grace_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    muted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    window_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    flood_noticed: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class ApprovalRow(Base):
    __tablename__ = "membership_approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(Text, nullable=False, index=True)
    card_event_id: Mapped[str | None] = mapped_column(Text, nullable=True, index=True)
    status: Mapped[str] = mapped_column(
        String(16), nullable=False
    )  # PENDING, APPROVED, REFUSED, WITHDRAWN
    decided_by: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


def person_dict(row: PersonRow) -> dict[str, Any]:
    return {
        "user_id": row.user_id,
        "dm_room_id": row.dm_room_id,
        "language": row.lang,
        "step": row.step,
        "door": row.door,
        "knocked_rooms": list(row.knocked_rooms or []),
        "charter_version_offered": row.charter_version,
        "entries": row.entries,
        "reconsent_version": row.reconsent_version,
        "grace_deadline": row.grace_deadline.isoformat() if row.grace_deadline else None,
        "muted": row.muted,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def approval_dict(row: ApprovalRow) -> dict[str, Any]:
    return {
        "status": row.status,
        "decided_by": row.decided_by,
        "reason": row.reason,
        "created_at": row.created_at.isoformat(),
        "decided_at": row.decided_at.isoformat() if row.decided_at else None,
    }
