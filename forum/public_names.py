"""Public names: the name under which a member may be quoted in the public digest.

Recorded at publication consent (the person's display name then, by default), changed
only by the person (``!nom-public`` / ``!public-name`` to the membership bot; a pseudonym
is allowed), never by a later change of display name. The membership bot writes them; the
digest reads them (both through this module, so that ``bridge`` does not depend on
``moderation``). A change is followed by an outbox item of :data:`RELABEL_KIND`, written
in the same transaction, that the digest carries out: the person's stored quotes take the
new name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Boolean, Index, String, Text, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from forum.names import skeleton
from forum.storage.models import Base, UTCDateTime, utcnow
from forum.storage.repositories import Repository, upsert

#: The outbox kind (``forum.storage.Outbox``) of a relabelling the digest owns and carries
#: out: the stored quotes of a person take their current public name (read when carried
#: out, so that an older item never brings back an older name). payload: {"user_id": ...}
RELABEL_KIND = "digest.relabel"


class PublicNameRow(Base):
    __tablename__ = "public_names"
    __table_args__ = (Index("ix_public_names_skeleton", "skeleton"),)

    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    #: :func:`forum.names.skeleton` of ``name``: look-alikes are found by it
    skeleton: Mapped[str] = mapped_column(Text, nullable=False)
    #: True when the person chose it; False for the default (their display name then)
    chosen: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    #: how it was set: "consent" (the default at publication consent), "default" (first
    #: needed, for a consent given before public names existed), "command"
    method: Mapped[str] = mapped_column(String(32), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


@dataclass(frozen=True)
class PublicName:
    user_id: str
    name: str
    chosen: bool
    method: str
    updated_at: datetime

    @classmethod
    def of(cls, row: PublicNameRow) -> PublicName:
        return cls(row.user_id, row.name, row.chosen, row.method, row.updated_at)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "chosen": self.chosen,
            "method": self.method,
            "updated_at": self.updated_at.isoformat(),
        }


class PublicNames(Repository):
    """The public names (the caller owns the transaction)."""

    async def get(self, user_id: str) -> PublicName | None:
        row = await self.session.get(PublicNameRow, user_id)
        return PublicName.of(row) if row else None

    async def get_many(self, users: Iterable[str]) -> dict[str, PublicName]:
        users = list(users)
        out: dict[str, PublicName] = {}
        for i in range(0, len(users), 500):
            rows = await self.session.scalars(
                select(PublicNameRow).where(PublicNameRow.user_id.in_(users[i : i + 500]))
            )
            out.update({r.user_id: PublicName.of(r) for r in rows})
        return out

    async def set(self, user_id: str, name: str, *, chosen: bool, method: str) -> None:
        """Record ``name`` (already checked: :func:`forum.names.clean_public_name`)."""
        values = {
            "name": name,
            "skeleton": skeleton(name),
            "chosen": chosen,
            "method": method,
            "updated_at": utcnow(),
        }
        await upsert(self.session, PublicNameRow, {"user_id": user_id}, values)

    async def ensure(self, user_id: str, default: str, *, method: str) -> str:
        """The person's public name; ``default`` is recorded as it when they have none
        (never replacing one recorded before, even by a concurrent writer)."""
        current = await self.get(user_id)
        if current is not None:
            return current.name
        await self.session.execute(
            _insert_ignore(self.session)
            .values(
                user_id=user_id,
                name=default,
                skeleton=skeleton(default),
                chosen=False,
                method=method,
                updated_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["user_id"])
        )
        current = await self.get(user_id)
        return current.name if current else default

    async def holders(self, name: str, *, excluding: str) -> list[PublicName]:
        """The other people whose public name is ``name`` or looks like it."""
        wanted = skeleton(name)
        if not wanted:
            return []
        rows = await self.session.scalars(
            select(PublicNameRow).where(
                PublicNameRow.skeleton == wanted, PublicNameRow.user_id != excluding
            )
        )
        return [PublicName.of(r) for r in rows]


def _insert_ignore(session: AsyncSession) -> postgresql.Insert | sqlite.Insert:
    """An INSERT of a public name that does nothing when the person has one."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    return insert(PublicNameRow)
