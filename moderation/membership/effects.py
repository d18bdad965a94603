"""The one executor of the consent flow's effects: derive the :class:`~.flow.State` of a
person from what is stored, call :func:`~.flow.advance`, and carry out what it returns.

What must follow a database change (consent records, invites, kicks, notices, erasure,
requests for approval) is written in one transaction with the new state; what talks to
the homeserver directly (questions, notices, mutes) and the signals come after it."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from forum.consent import ConsentRecords, ConsentRow, ConsentStatus
from forum.matrix import stable_txn_id
from forum.public_names import PublicNames
from forum.signals import MEMBER_LEFT, PUBLICATION_GRANTED, PUBLICATION_WITHDRAWN, Signals
from forum.storage import Outbox, utcnow

from . import flow, messages
from .flow import Effects, Input, State
from .models import APPROVED, PENDING, REFUSED, ApprovalRow, PersonRow
from .outbox import add_invites, add_kicks, add_notice, add_question, queue_admission
from .public_name import PublicNaming
from .repositories import People
from .shared import Shared
from .text import OFFER_ACCEPT, OFFER_YES_NO

log = logging.getLogger(__name__)

_SIGNALS = {
    "publication-granted": PUBLICATION_GRANTED,
    "publication-withdrawn": PUBLICATION_WITHDRAWN,
    "member-left": MEMBER_LEFT,
}


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def state_of(
    row: PersonRow | None,
    status: ConsentStatus,
    *,
    policy: flow.Policy,
    request: bool = False,
    consumed: frozenset[str] = frozenset(),
) -> State:
    """The flow state of a person from their row (None: never seen) and consent status.

    The row keeps two question events: the charter's, and the other question of the
    step (language or publication); the one of the current step is pending, the others
    were answered."""
    times = [t for t in (_aware(status.charter_at), _aware(status.publication_at)) if t]
    base = State(
        user_id=status.user_id,
        policy=policy,
        accepted=status.charter_version,
        publication=status.publication,
        answered_at=max(times) if times else None,
        consumed=consumed,
        request=request,
    )
    if row is None:
        return base
    step = cast("flow.Step", row.step)
    charter, other = row.charter_event_id, row.question_event_id
    question = charter if step == flow.CHARTER else other if step in _OTHER else None
    asked = frozenset(i for i in (charter, other) if i and i != question)
    return replace(
        base,
        step=step,
        lang=row.lang,
        dm=bool(row.dm_room_id),
        offered=row.charter_version,
        question=question,
        asked=asked,
        reconsent=row.reconsent_version,
        reconsent_question=row.reconsent_event_id,
        deadline=_aware(row.grace_deadline),
        muted=row.muted,
        entries=row.entries,
    )


_OTHER = frozenset({flow.LANGUAGE, flow.PUBLICATION})


@dataclass
class Outcome:
    user_id: str
    before: State
    after: State
    effects: Effects

    @property
    def handled(self) -> bool:
        return bool(self.effects) or self.after != self.before


def replay_safe(kind: str, user_id: str, room_id: str, since: datetime | None) -> str | None:
    """The transaction id of a question of ``kind`` asked of ``user_id`` in ``room_id``
    after the person's state changed at ``since``: asked again because a crash came
    between sending it and recording its event id (the event that led to it replayed, which
    changes no state), it is the same event, shown once. A later change of state (a new
    round) gives a new id. None when the moment is unknown."""
    if since is None:
        return None
    return stable_txn_id(kind, user_id, room_id, since.isoformat())


class FlowRunner:
    """Advance a person's flow and carry out the effects (the caller holds the person's
    lock)."""

    def __init__(
        self,
        shared: Shared,
        signals: Signals,
        post_card: Callable[[str], Awaitable[None]],
        help_text: Callable[[str], str],
        open_dm: Callable[[str], Awaitable[str]],
        dm_joined: Callable[[str, str], Awaitable[bool]],
    ) -> None:
        self.shared = shared
        self.signals = signals
        self.post_card = post_card
        self.help_text = help_text
        self.open_dm = open_dm
        self.dm_joined = dm_joined
        self.naming = PublicNaming(shared)
        self._last_said: dict[str, str | None] = {}
        """What each person's last bare answer meant (bursts are within seconds: memory
        is enough)."""

    @property
    def policy(self) -> flow.Policy:
        settings = self.shared.settings.membership
        return flow.Policy(
            charter_version=settings.charter.version,
            approval="auto" if settings.approval == "auto" else "moderators",
            on_expiry="mute" if settings.charter.on_expiry == "mute" else "remove",
        )

    async def load(self, s: AsyncSession, user_id: str, event_id: str | None = None) -> State:
        row = await People(s).get(user_id)
        status = await ConsentRecords(s).status(user_id)
        consumed: frozenset[str] = frozenset()
        if event_id is not None:
            found = await s.scalar(select(ConsentRow.id).where(ConsentRow.event_id == event_id))
            consumed = frozenset({event_id}) if found is not None else frozenset()
        request = await People(s).pending_approval(user_id) is not None
        state = state_of(row, status, policy=self.policy, request=request, consumed=consumed)
        return replace(state, last_said=self._last_said.get(user_id))

    async def state(self, user_id: str) -> State:
        async with self.shared.sessionmaker() as s:
            return await self.load(s, user_id)

    async def run(
        self,
        user_id: str,
        event: Input,
        *,
        approval: int | None = None,
    ) -> Outcome:
        """Advance ``user_id``'s flow by ``event`` and carry out the effects (``approval``:
        the request a moderator's decision is about, when it is a given card)."""
        outcome = await self.commit(user_id, event, approval=approval)
        await self.finish(outcome)
        return outcome

    async def commit(self, user_id: str, event: Input, *, approval: int | None = None) -> Outcome:
        """The first half of :meth:`run`: the new state and what follows a database change,
        committed in one transaction; nothing is sent yet."""
        event_id = getattr(event, "event_id", None)
        shared = self.shared
        default_name = None
        if isinstance(event, flow.PublicationAnswered | flow.PublicationSet) and event.granted:
            # The name the person may be quoted under unless they chose one: their display
            # name now (asked of the homeserver before the transaction opens).
            person = await shared.person(user_id)
            room = person.dm_room_id if person else None
            default_name = await self.naming.default_for(user_id, room)
        opened = await self._open_dm_first(user_id, event, event_id)
        async with shared.sessionmaker() as s, s.begin():
            before = await self.load(s, user_id, event_id)
            after, effects = flow.advance(before, event)
            if not effects and after == before:
                return Outcome(user_id, before, after, effects)
            row = await People(s).get(user_id)
            if row is not None:
                if any(isinstance(e, flow.OpenDm) for e in effects) and not row.dm_room_id:
                    row.dm_room_id = opened or await self.open_dm(user_id)
                self._save(row, after, changed=after != before)
            await self._in_transaction(s, user_id, row, effects, approval, default_name)
        self._last_said[user_id] = after.last_said
        return Outcome(user_id, before, after, effects)

    async def _open_dm_first(self, user_id: str, event: Input, event_id: str | None) -> str | None:
        """When ``event`` will open the person's DM, open it before the write transaction:
        a homeserver call, slow under load, must never hold the database's write lock
        (SQLite's other writers would fail with "database is locked"). The caller holds the
        person's lock; a DM opened but not used is found again in ``m.direct``."""
        async with self.shared.sessionmaker() as s:
            before = await self.load(s, user_id, event_id)
            row = await People(s).get(user_id)
        if row is None or row.dm_room_id:
            return None
        _, effects = flow.advance(before, event)
        if not any(isinstance(e, flow.OpenDm) for e in effects):
            return None
        return await self.open_dm(user_id)

    async def finish(self, outcome: Outcome) -> None:
        """The second half of :meth:`run`: what is sent, and the signals."""
        if outcome.effects:
            await self._after(outcome.user_id, outcome.effects)

    @staticmethod
    def _save(row: PersonRow, state: State, *, changed: bool = True) -> None:
        """``state`` into ``row``; its ``updated_at`` moves only when the state changed:
        an event replayed after a crash (which changes nothing) keeps the moment of the
        change the questions' transaction ids are derived from (:func:`replay_safe`)."""
        row.step = state.step
        row.lang = state.lang
        row.charter_version = state.offered
        if state.step == flow.CHARTER:
            row.charter_event_id = state.question
        elif state.step in {flow.LANGUAGE, flow.PUBLICATION}:
            row.question_event_id = state.question
        row.reconsent_version = state.reconsent
        row.reconsent_event_id = state.reconsent_question
        row.grace_deadline = state.deadline
        row.muted = state.muted
        row.entries = state.entries
        if changed:
            row.updated_at = utcnow()

    async def _in_transaction(
        self,
        s: AsyncSession,
        user_id: str,
        row: PersonRow | None,
        effects: Effects,
        approval: int | None,
        default_name: str | None = None,
    ) -> None:
        shared = self.shared
        lang = shared.lang_of(row)
        outbox = Outbox(s)
        people = People(s)
        for effect in effects:
            match effect:
                case flow.RecordConsent(scope="charter"):
                    charter = shared.charter(lang, effect.version) if effect.granted else None
                    await ConsentRecords(s).add(
                        user_id,
                        "charter",
                        effect.granted,
                        method=effect.method,
                        charter_version=effect.version,
                        text_sha256=charter.sha256 if charter else None,
                        event_id=effect.event_id,
                    )
                case flow.RecordConsent():
                    await ConsentRecords(s).add(
                        user_id,
                        "publication",
                        effect.granted,
                        method=effect.method,
                        charter_version=effect.version,
                        event_id=effect.event_id,
                    )
                    if effect.granted and default_name:
                        await PublicNames(s).ensure(user_id, default_name, method="consent")
                case flow.QueueAdmission():
                    assert row is not None
                    await queue_admission(shared, s, row, lang)
                case flow.InviteTo():
                    stamp = utcnow().isoformat()
                    await add_invites(outbox, user_id, list(effect.rooms), user_id, stamp)
                case flow.QueueApproval():
                    s.add(ApprovalRow(user_id=user_id, status=PENDING, created_at=utcnow()))
                case flow.Decide():
                    request = await self._request(s, people, user_id, approval)
                    assert request is not None
                    request.status = APPROVED if effect.approved else REFUSED
                    request.decided_by, request.reason = effect.moderator, effect.reason
                    request.decided_at = utcnow()
                case flow.CloseRequests():
                    await people.withdraw_approvals(user_id, effect.reason)
                case flow.Kick(rooms="knocked"):
                    declined = shared.t(lang, messages.REQUEST_DECLINED)
                    reason = effect.reason
                    kick_reason = f"{declined}: {reason}" if reason else declined
                    rooms = list(row.knocked_rooms or []) if row else []
                    await add_kicks(outbox, user_id, rooms, kick_reason, utcnow().isoformat())
                case flow.Kick():
                    stamp = utcnow().isoformat()
                    await add_kicks(outbox, user_id, shared.forum_rooms, effect.reason or "", stamp)
                case flow.Erase():
                    await shared.add_erasure(s, user_id)
                case flow.RemindReconsent() if row is not None and row.dm_room_id:
                    text = self.reminder(lang, effect)
                    key = f"reminder:{user_id}:v{effect.version}:{effect.deadline.isoformat()}"
                    await add_question(
                        outbox,
                        row.dm_room_id,
                        text,
                        key,
                        of=user_id,
                        reply_to=row.reconsent_event_id,
                    )
                case flow.Notify(queued=True):
                    text = self.text(lang, effect)
                    key = f"{effect.texts[0].msgid[:24]}:{user_id}:{utcnow().isoformat()}"
                    await add_notice(outbox, row.dm_room_id if row else None, text, key)
                case _:
                    pass

    @staticmethod
    async def _request(
        s: AsyncSession, people: People, user_id: str, approval: int | None
    ) -> ApprovalRow | None:
        if approval is not None:
            return await s.get(ApprovalRow, approval, populate_existing=True)
        return await people.pending_approval(user_id)

    def text(self, lang: str, notify: flow.Notify) -> str:
        shared = self.shared
        common = {"forum": shared.forum_name_in(lang), "prefix": shared.prefix}
        return "\n".join(
            shared.t(lang, t.msgid, **{**common, **dict(t.params)}) for t in notify.texts
        )

    async def _after(self, user_id: str, effects: Effects) -> None:
        shared = self.shared
        queued = (
            flow.QueueAdmission
            | flow.InviteTo
            | flow.Kick
            | flow.Erase
            | flow.Notify
            | flow.RemindReconsent
        )
        if any(isinstance(e, queued) for e in effects):
            shared.notify_outbox()
        person = await shared.person(user_id)
        lang = shared.lang_of(person)
        room = person.dm_room_id if person else None
        since = person.updated_at if person else None
        for effect in effects:
            match effect:
                case flow.AskLanguage() if room:
                    if effect.if_joined and not await self.dm_joined(room, user_id):
                        continue
                    await self._ask_language(user_id, room, since)
                case flow.SendCharter() if room:
                    if effect.if_joined and not await self.dm_joined(room, user_id):
                        continue
                    charter_lang = effect.lang or lang
                    await self._send_charter(user_id, room, charter_lang, effect.version, since)
                case flow.AskPublication() if room:
                    await self.ask_publication(user_id, room, lang)
                case flow.AskReconsent() if room:
                    await self._ask_reconsent(user_id, room, lang, effect.version, since)
                case flow.QueueApproval():
                    await self.post_card(user_id)
                case flow.Mute():
                    await shared.set_muted(user_id, True)
                case flow.Unmute():
                    await shared.set_muted(user_id, False)
                case flow.Notify(to="moderators"):
                    management = shared.management
                    if management is not None:
                        primary = shared.settings.primary_language
                        await shared.say(management, self.text(primary, effect))
                case flow.Notify(queued=False) if room:
                    await shared.say(room, self.text(lang, effect))
                case flow.ShowHelp() if room:
                    await shared.say(room, self.help_text(lang))
                case flow.Signal():
                    await self.signals.emit(_SIGNALS[effect.name], user_id=user_id)
                case _:
                    pass
        granted = any(
            isinstance(e, flow.RecordConsent) and e.scope == "publication" and e.granted
            for e in effects
        )
        if granted and room and (name := await self.naming.current(user_id)):
            await shared.say(room, self.naming.told(lang, name))

    # Questions are m.text naming the person (they notify); the yes/no ones carry the
    # bot's reactions, so that one tap answers. The question's event is stored before the
    # reactions are put: a tap on them always finds its question.

    async def _ask_language(self, user_id: str, room_id: str, since: datetime | None) -> None:
        shared = self.shared
        langs = shared.settings.forum.languages
        choices = ", ".join(shared.i18n.language_name(x) for x in langs)
        parts = [shared.t(lang, messages.ASK_LANGUAGE, choices=choices) for lang in langs]
        txn = replay_safe("language", user_id, room_id, since)
        event_id = await shared.ask(room_id, "\n\n".join(parts), of=[user_id], txn_id=txn)
        await shared.update_person(user_id, question_event_id=event_id, touch=False)

    async def _send_charter(
        self, user_id: str, room_id: str, lang: str, version: int, since: datetime | None
    ) -> None:
        shared = self.shared
        charter = shared.charter(lang, version)
        intro = shared.t(
            lang, messages.CHARTER_INTRO, forum=shared.forum_name_in(lang), version=charter.version
        )
        txn = replay_safe(f"charter-v{version}-{lang}", user_id, room_id, since)
        event_id = await shared.ask_charter(room_id, intro, charter, of=user_id, txn_id=txn)
        await shared.update_person(user_id, charter_event_id=event_id, touch=False)
        await shared.offer(room_id, event_id, OFFER_ACCEPT)

    async def ask_publication(self, user_id: str, room_id: str, lang: str) -> None:
        """Ask whether the person may be quoted. Its transaction id comes from the charter
        question it follows: asked again because a crash lost the question's id (the
        charter answer replayed), it is the same event, shown once."""
        text = self.shared.t(lang, messages.PUBLICATION_QUESTION, prefix=self.shared.prefix)
        person = await self.shared.person(user_id)
        txn = None
        if person is not None and person.charter_event_id:
            txn = stable_txn_id("publication", user_id, room_id, person.charter_event_id)
        event_id = await self.shared.ask(room_id, text, of=[user_id], txn_id=txn)
        await self.shared.update_person(user_id, question_event_id=event_id, touch=False)
        await self.shared.offer(room_id, event_id, OFFER_YES_NO)

    def _consequence(self, lang: str) -> str:
        shared = self.shared
        return shared.t(
            lang,
            messages.CONSEQUENCE_MUTE
            if shared.settings.membership.charter.on_expiry == "mute"
            else messages.CONSEQUENCE_REMOVE,
        )

    def reminder(self, lang: str, effect: flow.RemindReconsent) -> str:
        """The text of a reminder before a re-consent deadline (the hours left rounded up)."""
        left = (effect.deadline - utcnow()).total_seconds() / 3600
        return self.shared.t(
            lang,
            messages.RECONSENT_REMINDER,
            version=effect.version,
            hours=max(1, math.ceil(left)),
            consequence=self._consequence(lang),
        )

    async def _ask_reconsent(
        self, user_id: str, room_id: str, lang: str, version: int, since: datetime | None
    ) -> None:
        shared = self.shared
        charter_settings = shared.settings.membership.charter
        consequence = self._consequence(lang)
        intro = shared.t(
            lang,
            messages.RECONSENT,
            version=version,
            days=charter_settings.grace_days,
            consequence=consequence,
        )
        charter = shared.charter(lang, version)
        txn = replay_safe(f"reconsent-v{version}-{lang}", user_id, room_id, since)
        event_id = await shared.ask_charter(room_id, intro, charter, of=user_id, txn_id=txn)
        await shared.update_person(user_id, reconsent_event_id=event_id, touch=False)
        await shared.offer(room_id, event_id, OFFER_ACCEPT)
