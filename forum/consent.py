"""Consent records: append-only, the source of truth for who may be quoted.

DESIGN.md "Membership and consent": records are never updated or deleted; a withdrawal
is a new record; the current status of a person is derived from their latest record per
scope. The membership bot writes them; the digest reads them (both through this module,
so that ``bridge`` does not depend on ``moderation``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import Boolean, Index, Integer, String, Text, func, select
from sqlalchemy.orm import Mapped, mapped_column

from forum.storage.models import Base, UTCDateTime, utcnow
from forum.storage.repositories import Repository

Scope = Literal["charter", "publication"]
SCOPES: tuple[Scope, ...] = ("charter", "publication")


class ConsentRow(Base):
    __tablename__ = "consent_records"
    __table_args__ = (Index("ix_consent_records_user_scope", "user_id", "scope", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(Text, nullable=False)
    scope: Mapped[str] = mapped_column(String(32), nullable=False)
    granted: Mapped[bool] = mapped_column(Boolean, nullable=False)
    charter_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    text_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    method: Mapped[str] = mapped_column(Text, nullable=False)
    event_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


@dataclass(frozen=True)
class ConsentRecord:
    id: int
    user_id: str
    scope: str
    granted: bool
    charter_version: int | None
    text_sha256: str | None
    method: str
    event_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: ConsentRow) -> ConsentRecord:
        return cls(
            row.id,
            row.user_id,
            row.scope,
            row.granted,
            row.charter_version,
            row.text_sha256,
            row.method,
            row.event_id,
            row.created_at,
        )


@dataclass(frozen=True)
class ConsentStatus:
    """Derived from the latest record of each scope."""

    user_id: str
    charter_version: int | None
    """The charter version accepted last, None if none or withdrawn."""
    publication: bool
    charter_at: datetime | None = None
    publication_at: datetime | None = None


class ConsentRecords(Repository):
    """Append-only consent records (the caller owns the transaction)."""

    async def add(
        self,
        user_id: str,
        scope: Scope,
        granted: bool,
        *,
        method: str,
        charter_version: int | None = None,
        text_sha256: str | None = None,
        event_id: str | None = None,
    ) -> ConsentRecord:
        if scope not in SCOPES:
            raise ValueError(f"unknown consent scope {scope!r}")
        row = ConsentRow(
            user_id=user_id,
            scope=scope,
            granted=granted,
            method=method,
            charter_version=charter_version,
            text_sha256=text_sha256,
            event_id=event_id,
            created_at=utcnow(),
        )
        self.session.add(row)
        await self.session.flush()
        return ConsentRecord.of(row)

    async def history(self, user_id: str) -> list[ConsentRecord]:
        rows = await self.session.scalars(
            select(ConsentRow).where(ConsentRow.user_id == user_id).order_by(ConsentRow.id)
        )
        return [ConsentRecord.of(r) for r in rows]

    async def _latest(
        self, scope: Scope, users: Iterable[str] | None = None
    ) -> dict[str, ConsentRow]:
        latest = (
            select(func.max(ConsentRow.id))
            .where(ConsentRow.scope == scope)
            .group_by(ConsentRow.user_id)
        )
        if users is not None:
            latest = latest.where(ConsentRow.user_id.in_(list(users)))
        rows = await self.session.scalars(select(ConsentRow).where(ConsentRow.id.in_(latest)))
        return {r.user_id: r for r in rows}

    async def status(self, user_id: str) -> ConsentStatus:
        return (await self.statuses([user_id]))[user_id]

    async def statuses(self, users: Iterable[str] | None = None) -> dict[str, ConsentStatus]:
        """Status of ``users`` (every user with a record when None)."""
        users = None if users is None else list(users)
        charter = await self._latest("charter", users)
        publication = await self._latest("publication", users)
        ids = set(users) if users is not None else set(charter) | set(publication)
        out = {}
        for u in ids:
            c, p = charter.get(u), publication.get(u)
            out[u] = ConsentStatus(
                user_id=u,
                charter_version=c.charter_version if c and c.granted else None,
                publication=bool(p and p.granted),
                charter_at=c.created_at if c else None,
                publication_at=p.created_at if p else None,
            )
        return out

    async def publication_consenters(self) -> set[str]:
        """Everyone whose latest publication record is a grant."""
        return {u for u, r in (await self._latest("publication")).items() if r.granted}

    async def granted_since(self, user_id: str) -> datetime | None:
        """When the current publication consent started (None if not granted now)."""
        r = (await self._latest("publication", [user_id])).get(user_id)
        return r.created_at if r and r.granted else None
