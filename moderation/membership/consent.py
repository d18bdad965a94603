"""The consent conversation in the DM: what the person writes or reacts becomes an input
of the flow (:mod:`.flow`), carried out by :class:`~.effects.FlowRunner`."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from forum.consent import ConsentRecords
from forum.events import Message, Reaction
from forum.storage import utcnow

from . import flow
from .effects import FlowRunner, Outcome
from .models import PersonRow
from .repositories import People
from .shared import Shared
from .text import Charter


async def record_charter(
    s: AsyncSession, user_id: str, charter: Charter, method: str, event_id: str
) -> PersonRow:
    """The append-only record of an accepted charter version (its text's SHA-256); returns
    the person's row, to update in the same transaction."""
    await ConsentRecords(s).add(
        user_id,
        "charter",
        True,
        method=method,
        charter_version=charter.version,
        text_sha256=charter.sha256,
        event_id=event_id,
    )
    row = await People(s).get(user_id)
    assert row is not None
    return row


def sent_at(ev: Message | Reaction) -> datetime | None:
    """When the event was sent (its server's clock), None when unknown."""
    if ev.origin_server_ts <= 0:
        return None
    return datetime.fromtimestamp(ev.origin_server_ts / 1000, UTC)


class Conversation:
    def __init__(self, shared: Shared, runner: FlowRunner) -> None:
        self.shared = shared
        self.runner = runner
        self.naming = runner.naming

    async def on_reply(self, person: PersonRow, body: str, ev: Message) -> bool:
        """A message answering one of the flow's questions (or anything from someone who
        left: they come back). False when it answers none of them."""
        shared = self.shared
        state = await self.runner.state(person.user_id)
        event = flow.reply_input(
            state,
            body,
            event_id=ev.event_id,
            to=ev.reply_to,
            sent_at=sent_at(ev),
            at=utcnow(),
            languages=tuple(shared.settings.forum.languages),
            primary=shared.settings.primary_language,
        )
        if event is None:
            return False
        return (await self.advance(person.user_id, event)).handled

    async def on_reaction(self, person: PersonRow, key: str, ev: Reaction) -> bool:
        """A reaction (``key`` without skin tones) to one of the flow's questions."""
        state = await self.runner.state(person.user_id)
        event = flow.reaction_input(state, key, event_id=ev.event_id, to=ev.reacts_to, at=utcnow())
        if event is None:
            return False
        return (await self.advance(person.user_id, event)).handled

    async def advance(self, user_id: str, event: flow.Input) -> Outcome:
        """Advance the flow; a publication answer is committed first (with its admission
        or request in the outbox), then carried out."""
        if isinstance(event, flow.PublicationAnswered | flow.PublicationSet):
            outcome = await self.record_publication(user_id, event)
            await self.runner.finish(outcome)
            return outcome
        return await self.runner.run(user_id, event)

    async def record_publication(
        self, user_id: str, event: flow.PublicationAnswered | flow.PublicationSet
    ) -> Outcome:
        """Commit, in one transaction, the publication answer and its consequence: the
        person is admitted (invites and welcome queued in the outbox, ``approval =
        "auto"``) or waits for a moderator. Nothing is sent yet."""
        return await self.runner.commit(user_id, event)
