"""Queries of the membership bot on its own tables (the caller owns the transaction)."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import select

from forum.storage import Repository
from forum.storage.models import utcnow

from .models import LANGUAGE, PENDING, WITHDRAWN, ApprovalRow, PersonRow


class People(Repository):
    """Queries on the flow state (the caller owns the transaction)."""

    async def get(self, user_id: str) -> PersonRow | None:
        return await self.session.get(PersonRow, user_id, populate_existing=True)

    async def create(self, user_id: str, door: str, lang: str | None) -> PersonRow:
        row = PersonRow(
            user_id=user_id,
            door=door,
            lang=lang,
            step=LANGUAGE,
            knocked_rooms=[],
            entries=0,
            muted=False,
            window_count=0,
            flood_noticed=False,
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        self.session.add(row)
        await self.session.flush()
        return row

    async def by_dm_room(self, room_id: str) -> PersonRow | None:
        stmt = select(PersonRow).where(PersonRow.dm_room_id == room_id)
        return cast("PersonRow | None", await self.session.scalar(stmt))

    async def all(self) -> list[PersonRow]:
        return list(await self.session.scalars(select(PersonRow).order_by(PersonRow.user_id)))

    async def due_deadlines(self, now: datetime) -> list[PersonRow]:
        stmt = select(PersonRow).where(
            PersonRow.grace_deadline.is_not(None), PersonRow.grace_deadline <= now
        )
        return list(await self.session.scalars(stmt))

    async def deadlines_before(self, moment: datetime) -> list[PersonRow]:
        """People whose re-consent deadline is at or before ``moment``, still speaking."""
        stmt = select(PersonRow).where(
            PersonRow.grace_deadline.is_not(None),
            PersonRow.grace_deadline <= moment,
            PersonRow.muted.is_(False),
        )
        return list(await self.session.scalars(stmt))

    async def pending_approval(self, user_id: str) -> ApprovalRow | None:
        stmt = (
            select(ApprovalRow)
            .where(ApprovalRow.user_id == user_id, ApprovalRow.status == PENDING)
            .order_by(ApprovalRow.id.desc())
        )
        return cast("ApprovalRow | None", await self.session.scalar(stmt))

    async def last_approval(self, user_id: str) -> ApprovalRow | None:
        stmt = (
            select(ApprovalRow)
            .where(ApprovalRow.user_id == user_id)
            .order_by(ApprovalRow.id.desc())
            .limit(1)
        )
        return cast("ApprovalRow | None", await self.session.scalar(stmt))

    async def withdraw_approvals(self, user_id: str, reason: str) -> None:
        """Close ``user_id``'s pending requests: they can no longer be approved."""
        stmt = select(ApprovalRow).where(
            ApprovalRow.user_id == user_id, ApprovalRow.status == PENDING
        )
        for approval in await self.session.scalars(stmt):
            approval.status, approval.reason, approval.decided_at = WITHDRAWN, reason, utcnow()

    async def approval_by_card(self, event_id: str) -> ApprovalRow | None:
        stmt = select(ApprovalRow).where(ApprovalRow.card_event_id == event_id)
        return cast("ApprovalRow | None", await self.session.scalar(stmt))

    async def approvals(self, user_id: str) -> list[ApprovalRow]:
        stmt = select(ApprovalRow).where(ApprovalRow.user_id == user_id).order_by(ApprovalRow.id)
        return list(await self.session.scalars(stmt))
