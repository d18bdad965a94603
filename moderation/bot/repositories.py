"""Repositories of the moderation bot. The caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NotRequired, TypedDict, Unpack

from sqlalchemy import delete, func, or_, select, update

from forum.storage.models import utcnow
from forum.storage.repositories import Repository, _insert, upsert

from .models import AuditEntry, Case, DirectRoom, FirstJoin, KeyValue, Mute, PolicyBan, Strike


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    created_at: datetime
    actor: str
    action: str
    target: str
    rooms: list[str]
    reason: str | None
    event_id: str | None
    source: str
    dry_run: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "when": self.created_at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "rooms": self.rooms,
            "reason": self.reason,
            "event_id": self.event_id,
            "source": self.source,
            "dry_run": self.dry_run,
        }


class AuditFields(TypedDict):
    """What an audit entry says: who did what to whom, where, why, and how it came."""

    actor: str
    action: str
    target: str
    rooms: NotRequired[Sequence[str]]
    reason: NotRequired[str | None]
    event_id: NotRequired[str | None]
    source: NotRequired[str]
    """"command" (the default), "protection", "policy", "case" ..."""
    dry_run: NotRequired[bool]


class Audit(Repository):
    async def add(self, **fields: Unpack[AuditFields]) -> int:
        row = AuditEntry(
            actor=fields["actor"],
            action=fields["action"],
            target=fields["target"],
            rooms={"rooms": list(fields.get("rooms", ()))},
            reason=fields.get("reason"),
            event_id=fields.get("event_id"),
            source=fields.get("source", "command"),
            dry_run=fields.get("dry_run", False),
            created_at=utcnow(),
        )
        self.session.add(row)
        await self.session.flush()
        return row.id

    async def entries(self, user: str | None = None, limit: int = 1000) -> list[AuditRecord]:
        stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if user:
            stmt = stmt.where(or_(AuditEntry.target == user, AuditEntry.actor == user))
        rows = (await self.session.scalars(stmt)).all()
        return [
            AuditRecord(
                r.id,
                r.created_at,
                r.actor,
                r.action,
                r.target,
                list((r.rooms or {}).get("rooms", [])),
                r.reason,
                r.event_id,
                r.source,
                r.dry_run,
            )
            for r in reversed(rows)
        ]


class Mutes(Repository):
    async def set(
        self, user_id: str, until: datetime | None, reason: str | None, actor: str
    ) -> None:
        values = {"until": until, "reason": reason, "actor": actor, "created_at": utcnow()}
        await upsert(self.session, Mute, {"user_id": user_id}, values)

    async def make_due(self, user_id: str, when: datetime) -> None:
        """The mute ends at ``when`` (a lifting left unfinished: the timer finishes it)."""
        await self.session.execute(update(Mute).where(Mute.user_id == user_id).values(until=when))

    async def remove(self, user_id: str) -> bool:
        res = await self.session.execute(delete(Mute).where(Mute.user_id == user_id))
        return bool(getattr(res, "rowcount", 0))

    async def all(self) -> list[Mute]:
        return list((await self.session.scalars(select(Mute))).all())

    async def get(self, user_id: str) -> Mute | None:
        return await self.session.get(Mute, user_id)


class Strikes(Repository):
    async def get(self, user_id: str) -> Strike | None:
        return await self.session.get(Strike, user_id)

    async def set(self, user_id: str, step: int, when: datetime) -> None:
        await upsert(self.session, Strike, {"user_id": user_id}, {"step": step, "last_at": when})


class DirectRooms(Repository):
    async def get(self, user_id: str) -> str | None:
        row = await self.session.get(DirectRoom, user_id)
        return row.room_id if row else None

    async def set(self, user_id: str, room_id: str) -> None:
        await upsert(self.session, DirectRoom, {"user_id": user_id}, {"room_id": room_id})

    async def user_of(self, room_id: str) -> str | None:
        stmt = select(DirectRoom.user_id).where(DirectRoom.room_id == room_id)
        user: str | None = await self.session.scalar(stmt)
        return user


class Cases(Repository):
    async def open(self, **fields: Any) -> Case | None:
        """A new case, or ``None`` when ``external_id`` was seen already (replays)."""
        stmt = (
            _insert(self.session, Case)
            .values(status="open", created_at=utcnow(), **fields)
            .on_conflict_do_nothing(index_elements=[Case.external_id])
            .returning(Case.id)
        )
        new_id: int | None = await self.session.scalar(stmt)
        return None if new_id is None else await self.session.get(Case, new_id)

    async def get(self, case_id: int) -> Case | None:
        return await self.session.get(Case, case_id)

    async def open_count(self) -> int:
        stmt = select(func.count()).select_from(Case).where(Case.status == "open")
        return int(await self.session.scalar(stmt) or 0)

    async def open_cases(self, limit: int = 30) -> list[Case]:
        """The open cases, oldest first."""
        stmt = select(Case).where(Case.status == "open").order_by(Case.id).limit(limit)
        return list(await self.session.scalars(stmt))

    async def by_card(self, event_id: str) -> Case | None:
        case: Case | None = await self.session.scalar(
            select(Case).where(Case.card_event_id == event_id)
        )
        return case


class State(Repository):
    async def get(self, key: str) -> dict[str, Any] | None:
        row = await self.session.get(KeyValue, key)
        return dict(row.value) if row else None

    async def set(self, key: str, value: dict[str, Any]) -> None:
        await upsert(self.session, KeyValue, {"key": key}, {"value": value})

    async def delete(self, key: str) -> None:
        await self.session.execute(delete(KeyValue).where(KeyValue.key == key))

    async def with_prefix(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every value whose key starts with ``prefix``, by key, in key order."""
        stmt = (
            select(KeyValue)
            .where(KeyValue.key.startswith(prefix, autoescape=True))
            .order_by(KeyValue.key)
        )
        return {row.key: dict(row.value) for row in await self.session.scalars(stmt)}


class FirstJoins(Repository):
    async def record(self, user_id: str, when: datetime) -> None:
        stmt = _insert(self.session, FirstJoin).values(user_id=user_id, joined_at=when)
        await self.session.execute(stmt.on_conflict_do_nothing(index_elements=[FirstJoin.user_id]))

    async def get(self, user_id: str) -> datetime | None:
        row = await self.session.get(FirstJoin, user_id)
        return row.joined_at if row else None


class PolicyBans(Repository):
    async def add(self, rule_key: str, user_id: str) -> None:
        stmt = _insert(self.session, PolicyBan).values(rule_key=rule_key, user_id=user_id)
        await self.session.execute(stmt.on_conflict_do_nothing())

    async def users_of(self, rule_key: str) -> list[str]:
        stmt = select(PolicyBan.user_id).where(PolicyBan.rule_key == rule_key)
        return list((await self.session.scalars(stmt)).all())

    async def remove(self, rule_key: str, user_id: str | None = None) -> None:
        """Forget the bans of ``rule_key`` (of one user, or all)."""
        stmt = delete(PolicyBan).where(PolicyBan.rule_key == rule_key)
        if user_id is not None:
            stmt = stmt.where(PolicyBan.user_id == user_id)
        await self.session.execute(stmt)

    async def keys_in(self, room_id: str) -> list[str]:
        """The rule keys of a list room that still have bans recorded."""
        stmt = (
            select(PolicyBan.rule_key)
            .where(PolicyBan.rule_key.startswith(f"{room_id}|", autoescape=True))
            .distinct()
        )
        return list((await self.session.scalars(stmt)).all())

    async def other_rules_of(self, user_id: str, rule_key: str) -> list[str]:
        stmt = select(PolicyBan.rule_key).where(
            PolicyBan.user_id == user_id, PolicyBan.rule_key != rule_key
        )
        return list((await self.session.scalars(stmt)).all())
