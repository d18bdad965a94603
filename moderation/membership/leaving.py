"""The end of a membership: the person left every forum room, typed ``!quitter``, or did
not accept a new charter in time. Their consent ends; they may be removed."""

from __future__ import annotations

import logging

from forum.errors import MatrixError
from forum.storage import utcnow

from . import flow
from .effects import FlowRunner
from .models import MEMBER
from .shared import Shared

log = logging.getLogger(__name__)


class Leaving:
    def __init__(self, shared: Shared, runner: FlowRunner) -> None:
        self.shared = shared
        self.runner = runner

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
        request for approval closed, their words erased, removed (``kick``)."""
        await self.runner.run(user_id, flow.Left(method, utcnow(), event_id, kick))
