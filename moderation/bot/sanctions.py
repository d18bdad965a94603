"""Sanctions as commands, cases and protections carry them out: the action in every forum
room and its line in the audit log, in one place."""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from forum.settings import Settings
from forum.storage.models import utcnow

from .actions import Actions
from .text import format_duration, glob_match, is_glob

if TYPE_CHECKING:
    from forum.context import Clock


@dataclass(kw_only=True, eq=False)
class Sanctions:
    """Bans, mutes, kicks and warnings, each written to the audit log."""

    actions: Actions
    settings: Settings
    t: Callable[[str], str]
    """The bot's gettext."""
    clock: Clock = utcnow

    async def ban(
        self,
        target: str,
        reason: str | None,
        *,
        actor: str,
        source: str,
        event_id: str | None,
        publish: bool = True,
    ) -> list[str]:
        """Ban a user id or a glob everywhere, publish the rule; the banned user ids."""
        actions = self.actions
        users = [target]
        if is_glob(target):
            members = await actions.members()
            users = [u for u in members if glob_match(target, u)]
        users = [u for u in users if not await actions.is_exempt(u)]
        # The bans first, all at once (the homeserver persists events one after another:
        # the person is out of every room sooner), then the rule for other communities.
        results = await asyncio.gather(*(actions.ban(u, reason) for u in users))
        if publish:
            await actions.publish_rule("user", target, reason)
        for user, rooms in zip(users, results, strict=True):
            await actions.audit(
                actor=actor, action="ban", target=user, rooms=rooms, reason=reason,
                event_id=event_id, source=source,
            )  # fmt: skip
        if is_glob(target):
            await actions.audit(
                actor=actor, action="ban-rule", target=target, reason=reason,
                event_id=event_id, source=source,
            )  # fmt: skip
        return users

    async def mute(
        self,
        user: str,
        duration: timedelta | None,
        reason: str | None,
        *,
        actor: str,
        source: str,
        event_id: str | None,
    ) -> list[str]:
        until = self.clock() + duration if duration else None
        rooms = await self.actions.mute(user, until, reason, actor)
        await self.actions.audit(
            actor=actor,
            action="mute" if duration is None else f"mute:{format_duration(duration)}",
            target=user,
            rooms=rooms,
            reason=reason,
            event_id=event_id,
            source=source,
        )
        return rooms

    async def kick(
        self, user: str, reason: str | None, *, actor: str, source: str, event_id: str | None
    ) -> list[str]:
        rooms = await self.actions.kick(user, reason)
        await self.actions.audit(
            actor=actor, action="kick", target=user, rooms=rooms, reason=reason,
            event_id=event_id, source=source,
        )  # fmt: skip
        return rooms

    async def warn(
        self, user: str, reason: str, *, actor: str, source: str, event_id: str | None
    ) -> None:
        lang = self.settings.primary_language
        forum = self.settings.text(self.settings.forum.name, lang)
        body = self.t("A warning from the moderators of {forum}: {reason}").format(
            forum=forum, reason=reason
        )
        await self.actions.dm(user, body, html.escape(body))
        await self.actions.audit(
            actor=actor, action="warn", target=user, reason=reason, event_id=event_id,
            source=source,
        )  # fmt: skip
