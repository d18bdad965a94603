"""The consent conversation in the DM: the language question, the charter, the publication
question, and what is recorded and done when the person answers."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from forum.consent import ConsentRecords
from forum.events import Message, Reaction
from forum.public_names import PublicNames
from forum.signals import PUBLICATION_GRANTED, Signals
from forum.storage import utcnow

from . import messages
from .approval import Approval
from .models import (
    APPROVAL,
    CHARTER,
    LANGUAGE,
    LEFT,
    MEMBER,
    PENDING,
    PUBLICATION,
    ApprovalRow,
    PersonRow,
)
from .outbox import queue_admission
from .public_name import PublicNaming
from .repositories import People
from .shared import Shared
from .text import (
    ACCEPT_REACTIONS,
    NO_REACTIONS,
    YES_REACTIONS,
    Charter,
    guess_language,
    is_acceptance,
    yes_no,
)


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


class Conversation:
    def __init__(self, shared: Shared, approval: Approval, signals: Signals) -> None:
        self.shared = shared
        self.approval = approval
        self.signals = signals
        self.naming = PublicNaming(shared)

    async def ask_language(self, user_id: str, room_id: str) -> None:
        shared = self.shared
        langs = shared.settings.forum.languages
        choices = ", ".join(shared.i18n.language_name(x) for x in langs)
        parts = [shared.t(lang, messages.ASK_LANGUAGE, choices=choices) for lang in langs]
        event_id = await shared.say(room_id, "\n\n".join(parts))
        await shared.update_person(user_id, step=LANGUAGE, question_event_id=event_id)

    async def send_charter(self, user_id: str, room_id: str, lang: str) -> None:
        shared = self.shared
        charter = shared.charter(lang)
        intro = shared.t(
            lang, messages.CHARTER_INTRO, forum=shared.forum_name_in(lang), version=charter.version
        )
        event_id = await shared.say_charter(room_id, intro, charter)
        await shared.update_person(
            user_id,
            step=CHARTER,
            lang=lang,
            charter_event_id=event_id,
            charter_version=charter.version,
            question_event_id=None,
        )

    async def on_reply(self, person: PersonRow, body: str, ev: Message) -> bool:
        """A message answering the question pending in the flow (language, charter,
        publication; or anything from someone who left: they come back). False when no
        question of the flow is pending."""
        shared, room, event_id = self.shared, ev.room_id, ev.event_id
        lang = shared.lang_of(person)
        if person.step == LANGUAGE:
            languages = shared.settings.forum.languages
            chosen = guess_language(body, languages) or shared.settings.primary_language
            await self.send_charter(person.user_id, room, chosen)
        elif person.step == CHARTER:
            if is_acceptance(body):
                await self.accept_charter(person.user_id, "reply", event_id)
            else:
                await shared.say(
                    room, shared.t(lang, messages.CHARTER_REMINDER, prefix=shared.prefix)
                )
        elif person.step == PUBLICATION:
            answer = yes_no(body)
            if answer is None:
                await shared.say(room, shared.t(lang, messages.PUBLICATION_REMINDER))
            else:
                await self.answer_publication(person.user_id, answer, "reply", event_id)
        elif person.step == LEFT:
            await self.send_charter(person.user_id, room, lang)  # coming back
        else:
            return False
        return True

    async def on_reaction(self, person: PersonRow, key: str, ev: Reaction) -> bool:
        """A reaction to the charter or to the publication question (``key`` without skin
        tones). False when it reacts to neither while it is pending."""
        if person.step == CHARTER and ev.reacts_to == person.charter_event_id:
            if key in ACCEPT_REACTIONS:
                await self.accept_charter(person.user_id, "reaction", ev.event_id)
        elif person.step == PUBLICATION and ev.reacts_to == person.question_event_id:
            if key in YES_REACTIONS or key in NO_REACTIONS:
                granted = key in YES_REACTIONS
                await self.answer_publication(person.user_id, granted, "reaction", ev.event_id)
        else:
            return False
        return True

    async def accept_charter(self, user_id: str, method: str, event_id: str) -> None:
        shared = self.shared
        person = await shared.person(user_id)
        if person is None or not person.dm_room_id:
            return
        lang = shared.lang_of(person)
        charter = shared.charter(lang, person.charter_version)
        async with shared.sessionmaker() as s, s.begin():
            row = await record_charter(s, user_id, charter, method, event_id)
            row.step, row.question_event_id, row.updated_at = PUBLICATION, None, utcnow()
        await self.ask_publication(user_id, person.dm_room_id, lang)

    async def ask_publication(self, user_id: str, room_id: str, lang: str) -> None:
        text = self.shared.t(lang, messages.PUBLICATION_QUESTION, prefix=self.shared.prefix)
        event_id = await self.shared.say(room_id, text)
        await self.shared.update_person(user_id, question_event_id=event_id)

    def recorded_text(self, lang: str, granted: bool) -> str:
        """What the person is told once their publication answer is recorded."""
        return self.shared.t(lang, messages.PUBLICATION_YES if granted else messages.PUBLICATION_NO)

    async def answer_publication(
        self, user_id: str, granted: bool, method: str, event_id: str
    ) -> None:
        shared = self.shared
        person = await shared.person(user_id)
        if person is None or not person.dm_room_id:
            return
        lang = shared.lang_of(person)
        auto = shared.settings.membership.approval == "auto"
        default = await self.naming.default_for(user_id, person.dm_room_id) if granted else None
        await self.record_publication(
            user_id, granted, method, event_id, lang=lang, public_name=default
        )
        shared.notify_outbox()
        if granted:
            await self.signals.emit(PUBLICATION_GRANTED, user_id=user_id)
        lines = [self.recorded_text(lang, granted)]
        if granted and (name := await self.naming.current(user_id)):
            lines.append(self.naming.told(lang, name))
        if not auto:
            lines.append(shared.t(lang, messages.WAITING_APPROVAL))
        await shared.say(person.dm_room_id, "\n".join(lines))
        if not auto:
            await self.approval.post_card(user_id)

    async def record_publication(
        self,
        user_id: str,
        granted: bool,
        method: str,
        event_id: str,
        *,
        lang: str,
        public_name: str | None = None,
    ) -> None:
        """Commit, in one transaction, the publication answer and its consequence: the
        person is admitted (invites and welcome queued in the outbox, ``approval =
        "auto"``) or waits for a moderator; with a grant, ``public_name`` is recorded as
        their public name unless they have one. Nothing is sent yet."""
        shared = self.shared
        async with shared.sessionmaker() as s, s.begin():
            row = await People(s).get(user_id)
            assert row is not None
            await ConsentRecords(s).add(
                user_id,
                "publication",
                granted,
                method=method,
                charter_version=row.charter_version,
                event_id=event_id,
            )
            if granted and public_name:
                await PublicNames(s).ensure(user_id, public_name, method="consent")
            row.updated_at = utcnow()
            if shared.settings.membership.approval == "auto":
                row.step = MEMBER
                row.entries += 1
                await queue_admission(shared, s, row, lang)
            else:
                row.step = APPROVAL
                s.add(ApprovalRow(user_id=user_id, status=PENDING, created_at=utcnow()))
