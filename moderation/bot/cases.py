"""Cases: a report becomes a card in the management room; moderators act on it by a
reaction on the card or by ``!case N ACTION``, once."""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.errors import MatrixError
from forum.events import Reaction
from forum.matrix import matrix_to

from .actions import Actions
from .labels import action_label
from .management import ManagementRoom
from .repositories import Cases
from .sanctions import Sanctions
from .text import quote_html, quote_plain

if TYPE_CHECKING:
    from forum.gateway import Gateway

    from .reporters import Reporters

log = logging.getLogger(__name__)

CASE_KEYS = {"🗑": "redact", "⚠": "warn", "🔇": "mute", "🔨": "ban", "✅": "dismiss"}
#: The sources of the cases whose reporter is told the outcome (they wrote to the bot).
REPORTER_TOLD = frozenset({"reply", "dm"})
CASE_ACTIONS = ("dismiss", "redact", "warn", "mute", "ban")
# The French words the case card shows, accepted by !case / !dossier too.
CASE_ACTIONS_FR = {
    "classer": "dismiss",
    "effacer": "redact",
    "avertir": "warn",
    "silence": "mute",
    "bannir": "ban",
}


def _(msg: str) -> str:
    """Marks a label for extraction; translated when shown."""
    return msg


@dataclass(kw_only=True, eq=False)
class CaseDesk:
    """Opens case cards and carries out what a moderator decides about one."""

    gateway: Gateway
    sessionmaker: async_sessionmaker[AsyncSession]
    actions: Actions
    sanctions: Sanctions
    management: ManagementRoom
    reporters: Reporters | None = None
    """Told the outcome of the reports people made to the bot (by DM or ``!report``)."""

    @property
    def t(self) -> Callable[[str], str]:
        return self.management.t

    def action_label(self, action: str) -> str:
        return action_label(action, self.t)

    async def open_case(
        self,
        *,
        source: str,
        external_id: str,
        room_id: str | None,
        event_id: str | None,
        reporter: str,
        reason: str | None,
    ) -> int | None:
        """Open a case and show its card; its number, ``None`` if it was opened already
        (the same report seen again)."""
        reported = quoted = None
        if room_id and event_id:
            try:
                target = await self.gateway.get_event(room_id, event_id)
                reported = target.get("sender")
                quoted = str((target.get("content") or {}).get("body") or "")
            except MatrixError as exc:
                log.info("reported event %s unreadable: %s", event_id, exc)
        async with self.sessionmaker() as s, s.begin():
            case = await Cases(s).open(
                source=source, external_id=external_id, room_id=room_id, event_id=event_id,
                reported_user=reported, reporter=reporter, reason=reason, quoted=quoted,
            )  # fmt: skip
        if case is None:
            return None
        t, management = self.t, self.management
        head = t("Case #{n} ({source}): {reporter} reports {reported} in {room}.").format(
            n=case.id,
            source=source,
            reporter=reporter,
            reported=reported or "?",
            room=management.room_label(room_id) if room_id else "-",
        )
        parts_plain = [head]
        parts_html = [html.escape(head)]
        if quoted is not None:
            parts_plain.append(quote_plain(quoted))
            parts_html.append(quote_html(quoted))
        if room_id and event_id:
            link = matrix_to(room_id, event_id, via=[management.settings.server_name])
            parts_plain.append(link)
            parts_html.append(f'<a href="{html.escape(link)}">{html.escape(t("the message"))}</a>')
        line = t("Reason: {reason}").format(reason=reason or "-")
        parts_plain.append(line)
        parts_html.append(html.escape(line))
        help_line = t(
            "React 🗑 redact, ⚠ warn, 🔇 mute, 🔨 ban, ✅ dismiss; or {cmd} {n} ACTION."
        ).format(cmd=management.prefix + "case", n=case.id)
        parts_plain.append(help_line)
        parts_html.append(html.escape(help_line))
        card = await management.notify("\n".join(parts_plain), "<br/>".join(parts_html))
        async with self.sessionmaker() as s, s.begin():
            row = await Cases(s).get(case.id)
            assert row is not None
            row.card_event_id = card
        await asyncio.gather(*(self.gateway.react(management.room_id, card, k) for k in CASE_KEYS))
        return case.id

    async def on_reaction(self, ev: Reaction) -> None:
        if ev.room_id != self.management.room_id:
            return
        action = CASE_KEYS.get(ev.key.replace("\ufe0f", ""))
        if action is None:
            return
        async with self.sessionmaker() as s:
            case = await Cases(s).by_card(ev.reacts_to)
        if case is None:
            return
        level = (await self.actions.power_levels(self.management.room_id)).level(ev.sender)
        if level < self.management.settings.power_levels.moderator:
            return
        await self.act_on_case(case.id, action, ev.sender, ev.event_id)

    async def act_on_case(
        self, case_id: int, action: str, moderator: str, event_id: str
    ) -> str | None:
        """Carry out ``action`` on a case; returns a problem to tell, or ``None``."""
        t = self.t
        async with self.sessionmaker() as s:
            case = await Cases(s).get(case_id)
        if case is None:
            return t("No case #{n}.").format(n=case_id)
        if case.status != "open":
            return t("Case #{n} was already handled: {action} by {who}.").format(
                n=case_id, action=self.action_label(case.handled_action or "?"), who=case.handled_by
            )
        reported = case.reported_user
        if action != "dismiss" and reported is None:
            return t("Case #{n} has no reported message; only dismiss applies.").format(n=case_id)
        reason = t("Report #{n}: {reason}").format(n=case_id, reason=case.reason or "-")
        if action != "dismiss" and reported and await self.actions.is_exempt(reported):
            return t("Refused: {user} is a moderator or a bot.").format(user=reported)
        source = f"case:{case_id}"
        sanctions = self.sanctions
        if action == "redact" and case.room_id and case.event_id:
            await self.gateway.redact(case.room_id, case.event_id, reason)
            await self.actions.audit(
                actor=moderator, action="redact", target=reported or "?", rooms=[case.room_id],
                reason=reason, event_id=event_id, source=source,
            )  # fmt: skip
        elif action == "warn" and reported:
            await sanctions.warn(
                reported, reason, actor=moderator, source=source, event_id=event_id
            )
        elif action == "mute" and reported:
            await sanctions.mute(
                reported, timedelta(hours=1), reason, actor=moderator, source=source,
                event_id=event_id,
            )  # fmt: skip
        elif action == "ban" and reported:
            await sanctions.ban(reported, reason, actor=moderator, source=source, event_id=event_id)
        else:
            await self.actions.audit(
                actor=moderator, action="dismiss", target=reported or "?", reason=reason,
                event_id=event_id, source=source,
            )  # fmt: skip
        async with self.sessionmaker() as s, s.begin():
            row = await Cases(s).get(case_id)
            assert row is not None
            row.status = "closed"
            row.handled_by = moderator
            row.handled_action = action
        body = t("Case #{n}: {action} by {who}.").format(
            n=case_id, action=self.action_label(action), who=moderator
        )
        await self.management.say(body, html.escape(body), reply_to=case.card_event_id)
        if self.reporters is not None and case.source in REPORTER_TOLD:
            try:
                await self.reporters.outcome(case.reporter, case_id, action)
            except MatrixError as exc:
                log.info(
                    "could not tell %s the outcome of case %s: %s", case.reporter, case_id, exc
                )
        return None
