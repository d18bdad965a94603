"""A new charter version: members who accepted an older one are asked again and have a
grace period; when it ends they are muted or removed (``on_expiry``). The answers come
through the conversation (:mod:`.consent`); the rules are the flow's (:mod:`.flow`)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

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
        self._reminded: set[tuple[str, datetime]] = set()
        """Deadlines reminded of by this process (the outbox keys each reminder by its
        deadline, so a restart sends none twice either)."""

    @property
    def reminder(self) -> timedelta | None:
        """How long before a deadline the reminder comes; None when there is none (no
        reminder configured, or a grace period not longer than that: the request itself
        is then the reminder)."""
        charter = self.shared.settings.membership.charter
        before = timedelta(hours=charter.reminder_hours)
        if not before or before >= timedelta(days=charter.grace_days):
            return None
        return before

    async def remind(self) -> None:
        """A reminder to whoever has a re-consent deadline within :attr:`reminder`."""
        before = self.reminder
        if before is None:
            return
        shared = self.shared
        now = utcnow()
        async with shared.sessionmaker() as s:
            near = await People(s).deadlines_before(now + before)
        for person in near:
            deadline = person.grace_deadline
            if deadline is None or (person.user_id, deadline) in self._reminded:
                continue
            try:
                async with shared.lock(person.user_id):
                    await self.runner.run(person.user_id, flow.GraceNear(utcnow(), before))
            except MatrixError:
                log.exception("could not remind %s of the charter deadline", person.user_id)
                continue
            self._reminded.add((person.user_id, deadline))

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
        await self.remind()
        shared = self.shared
        async with shared.sessionmaker() as s:
            due = await People(s).due_deadlines(utcnow())
        for person in due:
            try:
                async with shared.lock(person.user_id):
                    await self.runner.run(person.user_id, flow.GraceExpired(utcnow()))
            except Exception:  # one person's failure must not stop the others
                log.exception("could not apply the charter deadline of %s", person.user_id)
