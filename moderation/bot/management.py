"""What the moderation bot tells the moderators: messages in the management room, replies
to commands, echoes of what was done (and how to undo it), room names as configured."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from forum.matrix import matrix_to
from forum.settings import Settings

from .commands import Invocation

if TYPE_CHECKING:
    from forum.context import Rooms
    from forum.gateway import Gateway


def user_html(user_id: str) -> str:
    return f'<a href="{html.escape(matrix_to(user_id))}">{html.escape(user_id)}</a>'


def with_line(body: str, html_body: str, line: str) -> tuple[str, str]:
    """``body`` and ``html_body`` with one more line."""
    return body + "\n" + line, html_body + "<br/>" + html.escape(line)


@dataclass(kw_only=True, eq=False)
class ManagementRoom:
    """The management room as the bot writes to it, in the forum's primary language."""

    settings: Settings
    gateway: Gateway
    forum_rooms: Rooms
    t: Callable[[str], str]
    """The bot's gettext."""
    room_id: str = field(init=False)
    lang: str = field(init=False)
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        self.room_id = self.forum_rooms["management"]
        self.lang = self.settings.primary_language
        self.prefix = self.settings.bots.command_prefix

    async def say(self, body: str, html_body: str, reply_to: str | None = None) -> str:
        return await self.gateway.send_text(self.room_id, body, html_body, reply_to=reply_to)

    async def notify(self, body: str, html_body: str) -> str:
        """Say something that waits for a moderator's decision (a case card): an
        ``m.text`` (Element silences ``m.notice``) that mentions the configured moderators,
        so that their clients notify them."""
        return await self.gateway.send_text(
            self.room_id, body, html_body, notice=False, mentions=self.settings.moderator_ids
        )

    async def reply(self, inv: Invocation, body: str, html_body: str | None = None) -> None:
        await self.say(body, html_body or html.escape(body), reply_to=inv.event_id)

    async def tell(self, body: str) -> None:
        """Say plain ``body``."""
        await self.say(body, html.escape(body))

    async def say_about(self, user: str, body: str) -> None:
        """``body``, the first mention of ``user`` in it a link to them."""
        await self.say(body, html.escape(body).replace(html.escape(user), user_html(user)))

    def room_label(self, room_id: str) -> str:
        """The room's name as configured, in the bot's language (its id if unknown)."""
        for key, rid in self.forum_rooms.items():
            if rid == room_id:
                spec = self.settings.room_spec(key)
                if spec is None:  # a topic dropped from the config: its slug
                    return key.removeprefix("topic:")
                return self.settings.text(spec.name, self.lang)
        return room_id

    def undo_line(self, command: str) -> str:
        return self.t("To undo: {command}").format(command=command)

    async def echo(
        self,
        inv: Invocation | None,
        action: str,
        target: str,
        rooms: list[str],
        reason: str | None,
        undo: str | None = None,
        *,
        in_rooms: bool = True,
    ) -> None:
        """Tell the management room what was done (and how to undo it); ``in_rooms``
        false for what is not done in rooms (a warning is a direct message)."""
        t = self.t
        who = inv.sender if inv else self.gateway.user_id
        template = (
            t("{who}: {action} {target} in {n} room(s).")
            if in_rooms
            else t("{who}: {action} {target}.")
        )
        body = template.format(who=who, action=action, target=target, n=len(rooms))
        html_body = html.escape(body).replace(html.escape(target), user_html(target), 1)
        if reason:
            body, html_body = with_line(
                body, html_body, t("Reason: {reason}").format(reason=reason)
            )
        if undo:
            body, html_body = with_line(body, html_body, self.undo_line(undo))
        await self.say(body, html_body, reply_to=inv.event_id if inv else None)
