"""What a bot says when it cannot read an encrypted message sent to it (issue #13).

The gateway hands the bots an :class:`~forum.events.Undecryptable` event once the key of
an encrypted message did not come, even when asked again. The person is then told, in
clear terms and in their language (every forum language when the bot does not know
theirs), what happened and how to fix it: never silence. One answer per sender's
encryption session: the messages that follow from the same broken session have the same
cause, and the person was already told.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Awaitable, Callable

from forum.errors import MatrixError
from forum.events import Undecryptable
from forum.gateway import Gateway
from forum.i18n import I18n

log = logging.getLogger(__name__)

UNREADABLE = (
    "I could not read your message: it reached me encrypted, but your app did not give me "
    "the key to open it. Please send it again. If this happens again: close and reopen "
    "your app (or sign out and in again), and check that it does not send encrypted "
    "messages to verified devices only (my device is not verified, and need not be)."
)

LanguageOf = Callable[[str], Awaitable[str | None]]
"""The language a person chose, if the bot knows it."""


class UnreadableAnswer:
    """Answers the :class:`Undecryptable` events of one bot's gateway."""

    def __init__(
        self,
        gateway: Gateway,
        i18n: I18n,
        *,
        language_of: LanguageOf | None = None,
        answers: Callable[[Undecryptable], Awaitable[bool]] | None = None,
    ) -> None:
        """``answers(ev)`` tells whether this bot answers there (its DMs, say); all
        events by default."""
        self.gateway = gateway
        self.i18n = i18n
        self.language_of = language_of
        self.answers = answers
        self._told: set[tuple[str, str]] = set()

    def register(self) -> None:
        self.gateway.on(Undecryptable, self.on_undecryptable)

    async def text(self, user_id: str) -> str:
        """The explanation in ``user_id``'s language, or in every forum language."""
        lang = await self.language_of(user_id) if self.language_of else None
        langs = [lang] if lang in self.i18n.languages else list(self.i18n.languages)
        return "\n\n".join(self.i18n.gettext(code)(UNREADABLE) for code in langs)

    async def on_undecryptable(self, ev: Undecryptable) -> None:
        key = (ev.sender, ev.session_id or ev.event_id)
        if key in self._told:
            return
        if self.answers is not None and not await self.answers(ev):
            return
        text = await self.text(ev.sender)
        try:
            await self.gateway.send_text(
                ev.room_id,
                text,
                html.escape(text).replace("\n", "<br>"),
                notice=False,
                reply_to=ev.event_id,
                mentions=[ev.sender],
            )
        except MatrixError as exc:
            log.warning("could not tell %s their message was unreadable: %s", ev.sender, exc)
            raise
        self._told.add(key)
