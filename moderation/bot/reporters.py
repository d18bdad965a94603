"""The people who report: how many reports each may make, and what they are told (thanks,
a request to wait, the outcome), in a direct message and in their own language. Nothing
about a report is ever said in a forum room."""

from __future__ import annotations

import html
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from forum.i18n import I18n

from .actions import Actions
from .labels import action_label
from .tuning import Tuning

if TYPE_CHECKING:
    from forum.context import PersonLanguage
    from forum.gateway import Gateway

WINDOW_SECONDS = 3600.0


def _(msg: str) -> str:
    """Marks a message for extraction; translated when shown."""
    return msg


THANKS = _("Thank you: your report #{n} was passed to the moderators.")
TOO_MANY = _(
    "You have made {n} reports in the last hour: please wait before sending more. "
    "The moderators received the earlier ones."
)
OUTCOME = _("Your report #{n} was handled by the moderators: {action}.")


@dataclass(kw_only=True, eq=False)
class Reporters:
    gateway: Gateway
    actions: Actions
    i18n: I18n
    tuning: Tuning
    language_of: PersonLanguage | None = None
    """The language each person chose (from the membership bot); else the forum's first."""
    clock: Callable[[], float] = time.monotonic
    recent: dict[str, deque[float]] = field(default_factory=dict)
    """Each reporter's recent reports (clock times), oldest first."""

    def _window(self, reporter: str) -> deque[float]:
        window = self.recent.setdefault(reporter, deque())
        now = self.clock()
        while window and window[0] <= now - WINDOW_SECONDS:
            window.popleft()
        return window

    def over_limit(self, reporter: str) -> bool:
        """Whether ``reporter`` made as many reports in the last hour as allowed."""
        return len(self._window(reporter)) >= self.tuning.reports_per_hour

    def counted(self, reporter: str) -> None:
        """One more report of ``reporter`` became a case."""
        self._window(reporter).append(self.clock())

    async def gettext(self, user_id: str) -> Callable[[str], str]:
        lang = await self.language_of(user_id) if self.language_of else None
        if lang not in self.i18n.languages:
            lang = self.i18n.default
        return self.i18n.gettext(lang)

    async def _tell(self, user_id: str, text: str, room_id: str | None) -> None:
        if room_id is None:
            await self.actions.dm(user_id, text, html.escape(text))
        else:
            await self.gateway.send_text(room_id, text, html.escape(text))

    async def thank(self, user_id: str, case: int, room_id: str | None = None) -> None:
        """Tell ``user_id`` their report became case ``case`` (in ``room_id``, their DM
        with the bot, or the DM the bot keeps with them)."""
        t = await self.gettext(user_id)
        await self._tell(user_id, t(THANKS).format(n=case), room_id)

    async def ask_to_wait(self, user_id: str, room_id: str | None = None) -> None:
        t = await self.gettext(user_id)
        await self._tell(user_id, t(TOO_MANY).format(n=self.tuning.reports_per_hour), room_id)

    async def outcome(self, user_id: str, case: int, action: str) -> None:
        """Tell ``user_id`` what the moderators decided about their report."""
        t = await self.gettext(user_id)
        text = t(OUTCOME).format(n=case, action=action_label(action, t))
        await self.actions.dm(user_id, text, html.escape(text))
