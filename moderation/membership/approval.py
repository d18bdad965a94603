"""Approval by moderators (``approval = "moderators"``): a card in the management room per
request, decided by ``!approve`` / ``!deny`` or a ✅ / ❌ reaction on the card. A request
is closed (withdrawn) when the person leaves: whoever left, or no longer consents to the
charter, cannot be approved."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from forum.consent import ConsentRecords
from forum.events import Message, Reaction
from forum.storage import Outbox, utcnow

from . import messages
from .models import (
    APPROVAL,
    APPROVED,
    DENIED,
    LEFT,
    MEMBER,
    PENDING,
    REFUSED,
    WITHDRAWN,
    ApprovalRow,
    PersonRow,
)
from .outbox import add_kicks, add_notice, queue_admission
from .repositories import People
from .shared import Shared
from .text import emoji_key, normalise

log = logging.getLogger(__name__)

APPROVE = frozenset({"approve", "approuver"})
DENY = frozenset({"deny", "refuser"})


class Approval:
    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    async def post_card(self, user_id: str) -> None:
        shared = self.shared
        room = shared.management
        if room is None:
            log.error("no management room: %s waits for approval", user_id)
            return
        lang = shared.settings.primary_language
        text = shared.t(lang, messages.CARD, user=user_id, prefix=shared.prefix)
        event_id = await shared.say(room, text)
        async with shared.sessionmaker() as s, s.begin():
            approval = await People(s).pending_approval(user_id)
            if approval is not None:
                approval.card_event_id = event_id

    async def is_moderator(self, user_id: str) -> bool:
        room = self.shared.management
        if room is None:
            return False
        levels = await self.shared.membership_gateway.power_levels(room)
        return levels.level(user_id) >= self.shared.settings.power_levels.moderator

    async def on_management_message(self, ev: Message) -> None:
        shared = self.shared
        body = ev.body.strip()
        if shared.ignored(ev.sender) or not body.startswith(shared.prefix):
            return
        parts = body[len(shared.prefix) :].split(maxsplit=2)
        if not parts:
            return
        name = normalise(parts[0])
        if name not in APPROVE | DENY:
            return  # another bot's command
        lang = shared.settings.primary_language
        if not await self.is_moderator(ev.sender):
            await shared.say(ev.room_id, shared.t(lang, messages.ONLY_MODERATORS))
            return
        if len(parts) < 2 or not parts[1].startswith("@"):
            await shared.say(
                ev.room_id, shared.t(lang, messages.USAGE_DECIDE, prefix=shared.prefix)
            )
            return
        target = parts[1]
        reason = parts[2] if len(parts) > 2 else None
        if name in APPROVE:
            await self.decide(target, True, ev.sender, None)
        else:
            await self.decide(target, False, ev.sender, reason)

    async def on_card_reaction(self, ev: Reaction) -> None:
        key = emoji_key(ev.key)
        if self.shared.ignored(ev.sender) or key not in {"✅", "❌"}:
            return
        async with self.shared.sessionmaker() as s:
            approval = await People(s).approval_by_card(ev.reacts_to)
        if approval is None:
            return
        if not await self.is_moderator(ev.sender):
            return
        await self.decide(approval.user_id, key == "✅", ev.sender, None, card=approval.id)

    async def decide(
        self,
        user_id: str,
        approve: bool,
        moderator: str,
        reason: str | None,
        *,
        card: int | None = None,
    ) -> None:
        """Carry out a moderator's decision on ``user_id``'s pending request (``card``:
        the request whose card was reacted to), or tell the moderators why not."""
        shared = self.shared
        async with shared.lock(user_id), shared.sessionmaker() as s, s.begin():
            people = People(s)
            if card is not None:
                approval = await s.get(ApprovalRow, card, populate_existing=True)
            else:
                approval = await people.pending_approval(user_id)
                approval = approval or await people.last_approval(user_id)
            row = await people.get(user_id)
            consent = await ConsentRecords(s).status(user_id)
            refused = refusal(
                approval.status if approval else None,
                row.step if row else None,
                consent.charter_version is not None,
            )
            if refused is None and approval is not None and row is not None:
                await self.apply(s, approval, row, approve, moderator, reason)
            elif approval is not None and approval.status == PENDING:
                # left without the request being closed: it can never be decided
                approval.status, approval.reason = WITHDRAWN, "consent-ended"
                approval.decided_at = utcnow()
        shared.notify_outbox()
        room = shared.management
        if room is None:
            return
        lang = shared.settings.primary_language
        if refused is not None:
            outcome = shared.t(lang, refused, user=user_id)
        elif approve:
            outcome = shared.t(lang, messages.APPROVED_BY, user=user_id, moderator=moderator)
        else:
            outcome = shared.t(lang, messages.DENIED_BY, user=user_id, moderator=moderator)
        await shared.say(room, outcome)

    async def apply(
        self,
        s: AsyncSession,
        approval: ApprovalRow,
        row: PersonRow,
        approve: bool,
        moderator: str,
        reason: str | None,
    ) -> None:
        """Record the decision and queue its consequences (in ``s``'s transaction): the
        invites and welcome, or the kicks of the knocks and the notice of the refusal."""
        shared, user_id = self.shared, row.user_id
        lang = shared.lang_of(row)
        approval.status = APPROVED if approve else REFUSED
        approval.decided_by, approval.reason = moderator, reason
        approval.decided_at = utcnow()
        row.updated_at = utcnow()
        if approve:
            row.step = MEMBER
            row.entries += 1
            await queue_admission(shared, s, row, lang)
            return
        row.step = DENIED
        declined = shared.t(lang, messages.REQUEST_DECLINED)
        kick_reason = f"{declined}: {reason}" if reason else declined
        outbox = Outbox(s)
        stamp = utcnow().isoformat()
        await add_kicks(outbox, user_id, row.knocked_rooms or [], kick_reason, stamp)
        lines = [shared.t(lang, messages.DENIED, forum=shared.forum_name_in(lang))]
        if reason:
            lines.append(shared.t(lang, messages.REASON, reason=reason))
        await add_notice(outbox, row.dm_room_id, "\n".join(lines), f"denied:{user_id}:{stamp}")


def refusal(status: str | None, step: str | None, charter: bool) -> str | None:
    """Why a moderator's decision cannot be carried out (a msgid), or None when it can:
    ``status`` of the request decided on (None: there is none), ``step`` of the person
    in the flow (None: unknown), ``charter``: whether their charter consent is current.
    Only a pending request of a person waiting for approval with the charter accepted
    can be decided; who left or withdrew their consent cannot be admitted."""
    if status == PENDING and step == APPROVAL and charter:
        return None
    if status in {PENDING, WITHDRAWN} or step == LEFT:
        return messages.REQUEST_WITHDRAWN
    if status == APPROVED:
        return messages.ALREADY_APPROVED
    if status == REFUSED:
        return messages.ALREADY_DENIED
    return messages.NO_PENDING
