"""The end of a membership: the person left every forum room, typed ``!quitter``, or did
not accept a new charter in time. Their consent ends; they may be removed."""

from __future__ import annotations

import logging

from forum.consent import ConsentRecords
from forum.errors import MatrixError
from forum.signals import MEMBER_LEFT, PUBLICATION_WITHDRAWN, Signals
from forum.storage import Outbox, utcnow

from .models import LEFT, MEMBER
from .outbox import add_kicks
from .repositories import People
from .shared import Shared

log = logging.getLogger(__name__)


class Leaving:
    def __init__(self, shared: Shared, signals: Signals) -> None:
        self.shared = shared
        self.signals = signals

    async def check_left_everything(self, user_id: str) -> None:
        """A member left a forum room: when they are in none any more, they left."""
        shared = self.shared
        person = await shared.person(user_id)
        if person is None or person.step != MEMBER:
            return
        for room in shared.forum_rooms:
            try:
                state = await shared.membership_gateway.get_state_event(
                    room, "m.room.member", user_id
                )
            except MatrixError as exc:
                log.warning("membership of %s in %s unknown: %s", user_id, room, exc)
                return
            if state and state.get("membership") in {"join", "invite", "knock"}:
                return
        async with shared.lock(user_id):
            await self.end_membership(user_id, "left-rooms", None, kick=False)

    async def end_membership(
        self, user_id: str, method: str, event_id: str | None, *, kick: bool
    ) -> None:
        """Consent ended: publication withdrawn (if granted), charter ended, a pending
        request for approval closed, removed."""
        shared = self.shared
        async with shared.sessionmaker() as s, s.begin():
            records = ConsentRecords(s)
            status = await records.status(user_id)
            if status.publication:
                await records.add(user_id, "publication", False, method=method, event_id=event_id)
            if status.charter_version is not None:
                await records.add(
                    user_id,
                    "charter",
                    False,
                    method=method,
                    charter_version=status.charter_version,
                    event_id=event_id,
                )
            people = People(s)
            await people.withdraw_approvals(user_id, method)
            row = await people.get(user_id)
            was_muted = False
            if row is not None:
                was_muted = row.muted
                row.step, row.reconsent_version, row.grace_deadline = LEFT, None, None
                row.muted, row.updated_at = False, utcnow()
            if kick:
                stamp = utcnow().isoformat()
                await add_kicks(Outbox(s), user_id, shared.forum_rooms, method, stamp)
            await shared.add_erasure(s, user_id)
        shared.notify_outbox()
        if was_muted:
            await shared.set_muted(user_id, False)
        if status.publication:
            await self.signals.emit(PUBLICATION_WITHDRAWN, user_id=user_id)
        await self.signals.emit(MEMBER_LEFT, user_id=user_id)
