"""A new charter version: members who accepted an older one are asked again and have a
grace period; when it ends they are muted or removed (``on_expiry``). The answers come
through the conversation (:mod:`.consent`); the rules are the flow's (:mod:`.flow`)."""

from __future__ import annotations

import logging
from datetime import timedelta

from forum.consent import ConsentRecords
from forum.errors import MatrixError
from forum.storage import utcnow

from . import flow
from .effects import FlowRunner
from .models import CHARTER, MEMBER
from .repositories import People
from .shared import Shared

log = logging.getLogger(__name__)


class Reconsent:
    def __init__(self, shared: Shared, runner: FlowRunner) -> None:
        self.shared = shared
        self.runner = runner

    async def start(self) -> None:
        """Keep muted people muted (provisioning may have reconciled the power levels)."""
        shared = self.shared
        async with shared.sessionmaker() as s:
            muted = [p.user_id for p in await People(s).all() if p.muted]
        for user_id in muted:
            try:
                await shared.set_muted(user_id, True)
            except MatrixError:
                log.exception("could not keep %s muted", user_id)

    async def step(self) -> float:
        """Ask for the new charter whoever was not asked yet, then apply the deadlines;
        returns the seconds until the next look. Each person is handled on their own: one
        who cannot be reached (who closed their DM, say) is logged and left for the next
        look, and the others are asked and their deadlines applied."""
        await self.ask_reconsent()
        await self.check_deadlines()
        return self.shared.options.deadline_poll_seconds

    async def ask_reconsent(self) -> None:
        """Everyone whose charter is older than the configured version: members are asked
        again (with a grace period), people still reading the charter get the new one."""
        shared = self.shared
        charter_settings = shared.settings.membership.charter
        current = charter_settings.version
        grace = timedelta(days=charter_settings.grace_days)
        async with shared.sessionmaker() as s:
            statuses = await ConsentRecords(s).statuses()
            people = await People(s).all()
        for person in people:
            status = statuses.get(person.user_id)
            accepted = status.charter_version if status else None
            outdated = (person.step == MEMBER and accepted is not None and accepted < current) or (
                person.step == CHARTER
                and person.charter_version is not None
                and person.charter_version < current
            )
            if not outdated or not person.dm_room_id:
                continue
            try:
                async with shared.lock(person.user_id):
                    await self.runner.run(
                        person.user_id, flow.CharterChanged(current, utcnow() + grace)
                    )
            except Exception as exc:  # one person's failure must not stop the others
                log.warning(
                    "could not ask %s to accept charter v%d (asked again at the next look): %s",
                    person.user_id,
                    current,
                    exc,
                )

    async def check_deadlines(self) -> None:
        shared = self.shared
        async with shared.sessionmaker() as s:
            due = await People(s).due_deadlines(utcnow())
        for person in due:
            try:
                async with shared.lock(person.user_id):
                    await self.runner.run(person.user_id, flow.GraceExpired(utcnow()))
            except Exception:  # one person's failure must not stop the others
                log.exception("could not apply the charter deadline of %s", person.user_id)
