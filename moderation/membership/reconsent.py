"""A new charter version: members who accepted an older one are asked again and have a
grace period; when it ends they are muted or removed (``on_expiry``)."""

from __future__ import annotations

import logging
from datetime import timedelta

from forum.consent import ConsentRecords
from forum.errors import MatrixError
from forum.events import Reaction
from forum.storage import utcnow

from . import messages
from .consent import record_charter
from .leaving import Leaving
from .models import MEMBER, PersonRow
from .repositories import People
from .shared import Shared
from .text import ACCEPT_REACTIONS, is_acceptance

log = logging.getLogger(__name__)


class Reconsent:
    def __init__(self, shared: Shared, leaving: Leaving) -> None:
        self.shared = shared
        self.leaving = leaving

    async def on_reply(self, person: PersonRow, body: str, event_id: str) -> bool:
        """An "I accept" to the new charter, if one waits for ``person``."""
        if not (person.reconsent_version and is_acceptance(body)):
            return False
        await self.accept_reconsent(person.user_id, "reply", event_id)
        return True

    async def on_reaction(self, person: PersonRow, key: str, ev: Reaction) -> None:
        """A ✅ on the new charter's message."""
        if (
            person.reconsent_version
            and ev.reacts_to == person.reconsent_event_id
            and key in ACCEPT_REACTIONS
        ):
            await self.accept_reconsent(person.user_id, "reaction", ev.event_id)

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
        shared = self.shared
        charter_settings = shared.settings.membership.charter
        current = charter_settings.version
        grace = timedelta(days=charter_settings.grace_days)
        async with shared.sessionmaker() as s:
            statuses = await ConsentRecords(s).statuses()
            people = {p.user_id: p for p in await People(s).all()}
        for user_id, status in sorted(statuses.items()):
            person = people.get(user_id)
            if (
                person is None
                or person.step != MEMBER
                or not person.dm_room_id
                or status.charter_version is None
                or status.charter_version >= current
                or person.reconsent_version == current
            ):
                continue
            try:
                await self._ask(person, current, grace)
            except Exception as exc:  # one person's failure must not stop the others
                log.warning(
                    "could not ask %s to accept charter v%d (asked again at the next look): %s",
                    user_id,
                    current,
                    exc,
                )

    async def _ask(self, person: PersonRow, current: int, grace: timedelta) -> None:
        shared = self.shared
        charter_settings = shared.settings.membership.charter
        user_id = person.user_id
        assert person.dm_room_id is not None
        async with shared.lock(user_id):
            lang = shared.lang_of(person)
            consequence = shared.t(
                lang,
                messages.CONSEQUENCE_MUTE
                if charter_settings.on_expiry == "mute"
                else messages.CONSEQUENCE_REMOVE,
            )
            intro = shared.t(
                lang,
                messages.RECONSENT,
                version=current,
                days=charter_settings.grace_days,
                consequence=consequence,
            )
            event_id = await shared.say_charter(
                person.dm_room_id, intro, shared.charter(lang, current)
            )
            await shared.update_person(
                user_id,
                reconsent_version=current,
                reconsent_event_id=event_id,
                grace_deadline=utcnow() + grace,
            )

    async def check_deadlines(self) -> None:
        shared = self.shared
        async with shared.sessionmaker() as s:
            due = await People(s).due_deadlines(utcnow())
        for person in due:
            lang = shared.lang_of(person)
            try:
                if shared.settings.membership.charter.on_expiry == "mute":
                    await shared.set_muted(person.user_id, True)
                    await shared.update_person(person.user_id, muted=True, grace_deadline=None)
                    notice = messages.MUTED
                else:
                    async with shared.lock(person.user_id):
                        await self.leaving.end_membership(
                            person.user_id, "charter-expired", None, kick=True
                        )
                    notice = messages.REMOVED
                if person.dm_room_id:
                    await shared.say(person.dm_room_id, shared.t(lang, notice))
            except Exception:
                log.exception("could not apply the charter deadline of %s", person.user_id)

    async def accept_reconsent(self, user_id: str, method: str, event_id: str) -> None:
        shared = self.shared
        person = await shared.person(user_id)
        if person is None or not person.reconsent_version or not person.dm_room_id:
            return
        lang = shared.lang_of(person)
        charter = shared.charter(lang, person.reconsent_version)
        async with shared.sessionmaker() as s, s.begin():
            row = await record_charter(s, user_id, charter, method, event_id)
            row.charter_version, row.reconsent_version = charter.version, None
            row.reconsent_event_id, row.grace_deadline = None, None
            was_muted, row.muted, row.updated_at = row.muted, False, utcnow()
        if was_muted:
            await shared.set_muted(user_id, False)
        thanks = shared.t(lang, messages.RECONSENT_THANKS, version=charter.version)
        await shared.say(person.dm_room_id, thanks)
