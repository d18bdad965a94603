"""Reports, wherever they come from: ``!report`` in reply to a message in a forum room, a
direct message to a bot (with a matrix.to link to the message), the homeserver's event
reports (when the bot is a server admin). Each opens a case (:mod:`.cases`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.errors import Forbidden, MatrixError
from forum.events import Message

from .cases import CaseDesk
from .commands import registry
from .reporters import Reporters
from .repositories import DirectRooms, State
from .tuning import Tuning

if TYPE_CHECKING:
    from forum.context import Rooms
    from forum.gateway import Gateway

log = logging.getLogger(__name__)

REPORT_WORDS = ("signaler", "report")
#: a bot that is not a server admin looks again whether it became one once a day
NOT_ADMIN_POLL_SECONDS = 86400.0
MATRIX_TO_EVENT = re.compile(r"matrix\.to/#/([!#][^/\s?]+)/(\$[^\s?&\"'<>]+)")


def without_fallback(body: str) -> str:
    """The body without a reply fallback (leading "> " quoted lines)."""
    lines = body.splitlines()
    while lines and (lines[0].startswith(">") or not lines[0].strip()):
        lines.pop(0)
    return "\n".join(lines).strip()


def report_word(body: str, prefix: str) -> str | None:
    """The report command (``!signaler``, ``!report``) that ``body`` starts with, if any."""
    head = without_fallback(body).split(maxsplit=1)
    if head and head[0].casefold() in {prefix + w for w in REPORT_WORDS}:
        return head[0]
    return None


@dataclass(kw_only=True, eq=False)
class Reports:
    gateway: Gateway
    sessionmaker: async_sessionmaker[AsyncSession]
    forum_rooms: Rooms
    cases: CaseDesk
    reporters: Reporters
    tuning: Tuning
    prefix: str
    t: Callable[[str], str]
    """The bot's gettext."""

    def is_report(self, ev: Message) -> bool:
        """Whether ``ev``, in a forum room, reports the message it replies to."""
        return bool(report_word(ev.body, self.prefix) and ev.reply_to)

    async def from_reply(self, ev: Message) -> None:
        """``!report`` in reply to a message: the report is hidden at once (without a
        reason: the placeholder must not say who reported), the reporter is thanked in a
        direct message, nothing is said in the room."""
        parts = without_fallback(ev.body).split(maxsplit=1)
        text = " ".join(parts[1].split()) if len(parts) > 1 else ""
        try:
            await self.gateway.redact(ev.room_id, ev.event_id)
        except MatrixError as exc:
            log.info("could not hide the report message: %s", exc)
        assert ev.reply_to is not None
        await self._open(
            ev.sender,
            None,
            source="reply",
            external_id=f"reply:{ev.event_id}",
            room_id=ev.room_id,
            event_id=ev.reply_to,
            reason=text or None,
        )

    async def from_dm(self, ev: Message) -> None:
        body = ev.body.strip()
        if not body or registry.split(body, self.prefix) is not None:
            return  # commands are only taken in the management room
        async with self.sessionmaker() as s, s.begin():
            directs = DirectRooms(s)
            if await directs.get(ev.sender) is None:  # outcomes go to this room later
                await directs.set(ev.sender, ev.room_id)
        await self.from_text(ev.sender, body, ev.formatted_body, ev.event_id, answer_in=ev.room_id)

    async def from_text(
        self,
        reporter: str,
        body: str,
        formatted_body: str | None,
        event_id: str,
        *,
        answer_in: str | None = None,
    ) -> None:
        """A case from a report written to a bot (``event_id``: that message): a
        matrix.to link in it names the reported message (in a forum room); the rest is
        the reason. ``answer_in``: the room where the reporter wrote to this bot (the
        thanks go there); ``None`` for a report passed on by another bot, which thanked
        them already."""
        body = body.strip()
        room_id: str | None = None
        reported: str | None = None
        link = MATRIX_TO_EVENT.search(body) or MATRIX_TO_EVENT.search(formatted_body or "")
        if link:
            room_ref, reported = link.group(1), link.group(2)
            room_id = room_ref
            if room_ref.startswith("#"):
                room_id = await self.gateway.resolve_alias(room_ref)
        if room_id is not None and room_id not in self.forum_rooms.forum_ids:
            room_id = reported = None
        head = report_word(body, self.prefix)
        reason = body[len(head) :].strip() if head else body
        await self._open(
            reporter,
            answer_in,
            thank=answer_in is not None,
            source="dm",
            external_id=f"dm:{event_id}",
            room_id=room_id,
            event_id=reported,
            reason=reason,
        )

    async def _open(
        self,
        reporter: str,
        answer_in: str | None,
        *,
        thank: bool = True,
        source: str,
        external_id: str,
        room_id: str | None,
        event_id: str | None,
        reason: str | None,
    ) -> None:
        """Open a case for ``reporter`` within their limit, then thank them."""
        if self.reporters.over_limit(reporter):
            await self._ask_to_wait(reporter, answer_in)
            return
        number = await self.cases.open_case(
            source=source, external_id=external_id, room_id=room_id, event_id=event_id,
            reporter=reporter, reason=reason,
        )  # fmt: skip
        if number is None:
            return  # seen before (a replay): counted and thanked then
        self.reporters.counted(reporter)
        if thank:
            try:
                await self.reporters.thank(reporter, number, answer_in)
            except MatrixError as exc:
                log.info("could not thank %s for case %s: %s", reporter, number, exc)

    async def _ask_to_wait(self, reporter: str, answer_in: str | None) -> None:
        log.info("report from %s beyond the limit: no case", reporter)
        try:
            await self.reporters.ask_to_wait(reporter, answer_in)
        except MatrixError as exc:
            log.info("could not tell %s to wait: %s", reporter, exc)

    async def poll_admin_reports_once(self) -> float | None:
        """Open a case for each new event report of the homeserver about a forum room (the
        cursor is stored, so restarts skip none). Returns the seconds to wait before the
        next poll (a day when the bot is not a server admin)."""
        api = "/_synapse/admin/v1"
        async with self.sessionmaker() as s:
            cursor = (await State(s).get("admin_reports")) or {"last_id": -1}
        last = int(cursor.get("last_id", -1))
        try:
            data = await self.gateway.request(
                "GET", "/event_reports", query={"limit": 100, "dir": "b"}, api=api
            )
        except Forbidden:
            log.info("the moderation bot is not a server admin: event reports not polled")
            return NOT_ADMIN_POLL_SECONDS
        except MatrixError as exc:
            log.warning("cannot read event reports: %s", exc)
            data = {}
        reports = sorted(
            (r for r in data.get("event_reports") or [] if int(r.get("id", -1)) > last),
            key=lambda r: int(r["id"]),
        )
        for report in reports:
            if report.get("room_id") in self.forum_rooms.forum_ids:
                await self.cases.open_case(
                    source="admin",
                    external_id=f"admin:{report['id']}",
                    room_id=str(report["room_id"]),
                    event_id=str(report.get("event_id")),
                    reporter=str(report.get("user_id")),
                    reason=report.get("reason"),
                )
            last = int(report["id"])
            async with self.sessionmaker() as s, s.begin():
                await State(s).set("admin_reports", {"last_id": last})
        return float(self.tuning.current.report_poll_seconds)
