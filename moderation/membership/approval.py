"""Approval by moderators (``approval = "moderators"``): a card in the management room per
request, decided by ``!approve`` / ``!deny`` or a ✅ / ❌ reaction on the card. A request
is closed (withdrawn) when the person leaves: whoever left, or no longer consents to the
charter, cannot be approved."""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING

from forum.errors import MatrixError
from forum.events import Message, Reaction
from forum.matrix import matrix_to
from moderation.commands import UsageError, parse_line

from . import declared, flow, messages
from .models import ApprovalRow
from .repositories import People
from .shared import Shared
from .text import emoji_key, normalise

log = logging.getLogger(__name__)

APPROVE = frozenset(declared.APPROVE.names)
DENY = frozenset(declared.DENY.names)


if TYPE_CHECKING:
    from .effects import FlowRunner


class Approval:
    runner: FlowRunner
    """Set by the bot once built (it posts this part's cards)."""

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
        pill = f'<a href="{html.escape(matrix_to(user_id))}">{html.escape(user_id)}</a>'
        rich = html.escape(text).replace(html.escape(user_id), pill, 1)
        # The card asks the moderators: it names each of them, so that it notifies them
        # whatever their settings for the room (a plain m.text in a room of more than two
        # notifies only by their per-room rules; a mention always does, by the default
        # rule .m.rule.is_user_mention). The person asking is shown as a pill but not
        # mentioned: they are not in this room.
        event_id = await shared.ask(room, text, rich, of=await self.moderators(room))
        async with shared.sessionmaker() as s, s.begin():
            approval = await People(s).pending_approval(user_id)
            if approval is not None:
                approval.card_event_id = event_id

    async def moderators(self, room_id: str) -> list[str]:
        """The moderators joined to the management room (by power level; not the bots)."""
        shared = self.shared
        gateway = shared.membership_gateway
        try:
            joined = await gateway.members(room_id, membership="join")
            levels = await gateway.power_levels(room_id)
        except MatrixError as exc:
            log.warning("cannot list the moderators of %s: %s", room_id, exc)
            return []
        bots = {gateway.user_id, shared.moderation_gateway.user_id}
        threshold = shared.settings.power_levels.moderator
        return sorted(
            u
            for u in joined
            if u not in bots and not shared.ignored(u) and levels.level(u) >= threshold
        )

    async def is_moderator(self, user_id: str) -> bool:
        """By the one moderator check both bots use (:mod:`moderation.powers`), on the
        management room's levels as they are now."""
        room = self.shared.management
        if room is None:
            return False
        return await self.shared.powers.is_moderator(user_id, [room], fresh=True)

    async def on_management_message(self, ev: Message) -> None:
        shared = self.shared
        body = ev.body.strip()
        if shared.ignored(ev.sender) or not body.startswith(shared.prefix):
            return
        parts = body[len(shared.prefix) :].split(maxsplit=1)
        if not parts:
            return
        name = normalise(parts[0])
        if name not in APPROVE | DENY:
            return  # another bot's command
        command = declared.APPROVE if name in APPROVE else declared.DENY
        lang = shared.settings.primary_language
        if not await self.is_moderator(ev.sender):
            await shared.say(ev.room_id, shared.t(lang, messages.ONLY_MODERATORS))
            return
        try:
            values = parse_line(command, parts[1] if len(parts) > 1 else "")
        except UsageError as exc:
            told = exc.told(shared.prefix, shared.i18n.gettext(lang), name=name)
            await shared.say(ev.room_id, told)
            return
        if command is declared.APPROVE:
            await self.decide(values["user"], True, ev.sender, None)
        else:
            await self.decide(values["user"], False, ev.sender, values["reason"])

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
        async with shared.lock(user_id):
            async with shared.sessionmaker() as s:
                people = People(s)
                if card is not None:
                    approval = await s.get(ApprovalRow, card, populate_existing=True)
                else:
                    approval = await people.pending_approval(user_id)
                    approval = approval or await people.last_approval(user_id)
            status = approval.status if approval else None
            event: flow.Approved | flow.Denied = (
                flow.Approved(moderator, status)
                if approve
                else flow.Denied(moderator, status, reason)
            )
            await self.runner.run(user_id, event, approval=approval.id if approval else None)
