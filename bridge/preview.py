"""The moderators' preview of the weekly digest (issue #13, point 7).

Before the scheduled publication the week's digest is posted to the management room (an
``m.text`` that mentions the moderators): each quote and key point with a short id. In
that room moderators answer with commands (declared in the moderation bot's help, which
leaves them to us):

- ``!retenir ID`` / ``!hold ID``: keep an item out of the publication (``!hold`` alone:
  the whole digest waits for a release);
- ``!retirer ID`` / ``!remove ID``: drop an item for good (that message is never a quote
  or a key point again);
- ``!publier`` / ``!release``: publish the waiting digest now (``!publier ID``: put a held
  item back);
- ``!apercu`` / ``!preview``: post the preview again (or the next week's, early).

A reaction decides like the command; taking back a ✋ (removing the reaction, as clients
offer) puts the item back. Every decision is told in the management room with who took
it, and kept in the store.
A reviewed week shows the public only the key points its preview showed (see
:func:`bridge.digest.build_week`).
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bridge.digest import build_week
from bridge.models import DigestReview, DigestReviewItem
from bridge.repositories import DigestStore
from forum.errors import MatrixError
from forum.events import Message, Reaction, Redaction
from forum.gateway import Gateway
from forum.i18n import I18n
from forum.settings import Settings

log = logging.getLogger(__name__)

#: the commands of the management room: canonical (English) name, French name
COMMANDS: dict[str, tuple[str, ...]] = {
    "hold": ("hold", "retenir"),
    "remove": ("remove", "retirer"),
    "release": ("release", "publier"),
    "preview": ("preview", "apercu", "aperçu"),
}
#: reactions on an item's message in the preview's thread
HOLD_KEYS = ("✋", "⏸️", "⏸")
REMOVE_KEYS = ("❌", "🗑️", "🗑", "🚫")
_ITEM = re.compile(r"^\[?#?([qk]?)(\d{1,9})\]?$", re.IGNORECASE)
#: characters of a quote shown in the preview (the whole key point is shown)
QUOTE_CHARS = 300
KIND_LETTER = {"quote": "q", "key_point": "k"}


def item_label(item: DigestReviewItem) -> str:
    return f"{KIND_LETTER.get(item.kind, 'k')}{item.id}"


def command_of(word: str) -> str | None:
    word = word.casefold()
    return next((name for name, names in COMMANDS.items() if word in names), None)


@dataclass(eq=False)
class ReviewDesk:
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    rooms: Mapping[str, str]
    gateway: Gateway
    i18n: I18n
    clock: Callable[[], datetime]
    publish: Callable[[str], Awaitable[None]]
    """Publish a week now (its pages, the exports, the announcement)."""
    upcoming: Callable[[], tuple[str, datetime]]
    """The next scheduled publication: (week, when)."""
    _lock: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)

    @property
    def room(self) -> str | None:
        return self.rooms.get("management")

    @property
    def lang(self) -> str:
        return self.settings.primary_language

    def t(self, msg: str) -> str:
        return self.i18n.gettext(self.lang)(msg)

    def name(self, command: str) -> str:
        """A command as the forum's language writes it (``!retenir`` in French)."""
        names = COMMANDS[command]
        return self.settings.bots.command_prefix + (names[1] if self.lang == "fr" else names[0])

    # --- the preview ------------------------------------------------------------------
    async def ensure(self, week: str, due: datetime) -> DigestReview:
        """The week's review; its preview is posted first if it was not."""
        async with self.sessionmaker() as s:
            review = await DigestStore(s).review(week)
        if review is not None:
            return review
        async with self._lock:
            async with self.sessionmaker() as s:
                review = await DigestStore(s).review(week)
            return review if review is not None else await self.post(week, due)

    async def post(self, week: str, due: datetime) -> DigestReview:
        """Post the week's preview (again): items keep their ids, new ones get theirs.
        The review is recorded once the message is sent (a failed send is tried again)."""
        room = self.room
        if room is None:
            raise RuntimeError("the digest preview needs a management room")
        lines: list[tuple[str, int | None]] = []  # (text, its item; None: a heading)
        async with self.sessionmaker() as s, s.begin():
            store = DigestStore(s)
            digest = await build_week(s, self.settings, self.rooms, week, reviewing=True)
            known = {(i.kind, i.target, i.text): i for i in await store.review_items(week)}
            targets = [q.event_id for t in digest.topics for q in t.highlights]
            targets += [k.event_id for t in digest.topics for k in t.key_points]
            senders = {e: m.sender for e, m in (await store.messages(targets)).items()}
            for topic in digest.topics:
                entries = [("quote", q.event_id, q.text, q.author) for q in topic.highlights]
                entries += [("key_point", k.event_id, k.text, k.author) for k in topic.key_points]
                if not entries:
                    continue
                lines.append((self.settings.text(topic.names, self.lang), None))
                for kind, target, text, author in entries:
                    item = known.get((kind, target, text))
                    if item is None and target in senders:
                        item = await store.add_review_item(
                            week, kind, target, senders[target], text
                        )
                    if item is None:
                        continue
                    lines.append((self._line(item, text, author), item.id))
        plain, rich = self._preview_text(week, due, lines)
        event_id = await self.gateway.send_text(
            room, plain, rich, notice=False, mentions=self.settings.moderator_ids
        )
        async with self.sessionmaker() as s, s.begin():
            store = DigestStore(s)
            review = await store.review(week)
            if review is None:
                review = await store.add_review(week, due, self.clock())
            review.event_id = event_id
        # each item again in the preview's thread, where a reaction on it decides; the
        # preview itself is recorded already (a failure here is no reason to post it twice)
        events: dict[int, str] = {}
        try:
            for text, item_id in lines:
                if item_id:
                    events[item_id] = await self.gateway.send_event(
                        room,
                        "m.room.message",
                        {
                            "msgtype": "m.notice",
                            "body": text,
                            "m.mentions": {},
                            "m.relates_to": {
                                "rel_type": "m.thread",
                                "event_id": event_id,
                                "is_falling_back": True,
                                "m.in_reply_to": {"event_id": event_id},
                            },
                        },
                    )
        except MatrixError as exc:
            log.warning("digest: the preview's thread is incomplete (commands work): %s", exc)
        async with self.sessionmaker() as s, s.begin():
            await DigestStore(s).set_item_events(events)
        log.info("digest: the preview of %s is posted to the management room", week)
        return review

    def _line(self, item: DigestReviewItem, text: str, author: str) -> str:
        t = self.t
        if item.kind == "quote":
            short = text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 1] + "…"
            shown = f"“{' '.join(short.split())}”"
        else:
            shown = " ".join(text.split())
        line = f"[{item_label(item)}] {shown} — {author}"
        if item.status == "held":
            line += " " + t("(held by {who})").format(who=item.decided_by)
        return line

    def _preview_text(
        self, week: str, due: datetime, lines: list[tuple[str, int | None]]
    ) -> tuple[str, str]:
        t = self.t
        when = due.astimezone(ZoneInfo(self.settings.digest.timezone)).strftime("%Y-%m-%d %H:%M")
        head = t("Preview of the digest of week {week}, to be published on {when}.").format(
            week=week, when=when
        )
        how = t(
            "Keep an item out of the publication: {hold} ID. Remove it for good: {remove} ID. "
            "Publish now: {release}."
        ).format(hold=self.name("hold"), remove=self.name("remove"), release=self.name("release"))
        if self.settings.digest.require_release:
            rule = t("Nothing is published before a moderator writes {release}.")
        else:
            rule = t(
                "Without a decision it is published at the scheduled time, without what was "
                "held or removed."
            )
        rule = rule.format(release=self.name("release"))
        react = t(
            "Or react in this message's thread, on the item: {hold} keeps it out, {remove} "
            "removes it for good."
        ).format(hold=HOLD_KEYS[0], remove=REMOVE_KEYS[0])
        if not lines:
            lines = [(t("Nothing to review: no quote and no key point this week."), 0)]
        plain = "\n".join([head, *(text for text, _ in lines), how, react, rule])
        rich = [f"<p><strong>{html.escape(head)}</strong></p>"]
        for text, item_id in lines:
            rich.append(
                f"<h4>{html.escape(text)}</h4>" if item_id is None else f"{html.escape(text)}<br/>"
            )
        rich.append(f"<p>{html.escape(how)}<br/>{html.escape(react)}<br/>{html.escape(rule)}</p>")
        return plain, "".join(rich)

    async def remind(self, review: DigestReview) -> None:
        """The scheduled time came and the week waits for a moderator: say it, once."""
        if review.reminded or self.room is None:
            return
        if review.held_by:
            text = self.t(
                "The digest of week {week} is due now; {who} held it: {release} publishes it."
            ).format(week=review.week, who=review.held_by, release=self.name("release"))
        else:
            text = self.t(
                "The digest of week {week} is due now and waits for a moderator: {release} "
                "publishes it."
            ).format(week=review.week, release=self.name("release"))
        await self.gateway.send_text(
            self.room,
            text,
            html.escape(text),
            notice=False,
            mentions=self.settings.moderator_ids,
        )
        async with self.sessionmaker() as s, s.begin():
            row = await DigestStore(s).review(review.week)
            if row is not None:
                row.reminded = True

    # --- the commands -----------------------------------------------------------------
    async def on_message(self, ev: Message) -> None:
        if ev.room_id != self.room or ev.sender in self.settings.ignored_user_ids:
            return
        prefix = self.settings.bots.command_prefix
        text = ev.body.strip()
        if not text.startswith(prefix):
            return
        head, _sep, rest = text[len(prefix) :].partition(" ")
        command = command_of(head.strip())
        if command is None:
            return
        try:
            if not await self.is_moderator(ev.sender):
                await self.say(self.t("Only moderators review the digest."), reply_to=ev.event_id)
                return
            async with self._lock:
                await getattr(self, f"cmd_{command}")(ev, rest.strip())
        except MatrixError as exc:
            log.warning("digest: the command %s failed: %s", command, exc)

    async def is_moderator(self, user_id: str) -> bool:
        assert self.room is not None
        levels = await self.gateway.power_levels(self.room)
        return levels.level(user_id) >= self.settings.power_levels.moderator

    async def say(self, text: str, *, reply_to: str | None = None) -> None:
        assert self.room is not None
        await self.gateway.send_text(self.room, text, html.escape(text), reply_to=reply_to)

    async def _item(self, ev: Message, arg: str, command: str) -> DigestReviewItem | None:
        """The item ``arg`` names, or None after saying what is wrong."""
        m = _ITEM.match(arg)
        if not arg:
            await self.say(
                self.t("Usage: {cmd} ID (an id of the preview, like k12).").format(
                    cmd=self.name(command)
                ),
                reply_to=ev.event_id,
            )
            return None
        item = None
        if m is not None:
            async with self.sessionmaker() as s:
                item = await DigestStore(s).review_item(int(m.group(2)))
            letter = m.group(1).casefold()
            if item is not None and letter and KIND_LETTER[item.kind] != letter:
                item = None
        if item is None:
            await self.say(
                self.t(
                    "No item {id} in the previews: ids are shown in brackets, like [k12]."
                ).format(id=arg),
                reply_to=ev.event_id,
            )
        return item

    async def _decide(
        self, item: DigestReviewItem, status: str, by: str, reaction: str | None = None
    ) -> DigestReviewItem:
        async with self.sessionmaker() as s, s.begin():
            store = DigestStore(s)
            row = await store.review_item(item.id)
            assert row is not None
            await store.decide(row, status, by, reaction)
        return row

    async def cmd_hold(self, ev: Message, arg: str) -> None:
        t = self.t
        if not arg:
            async with self.sessionmaker() as s, s.begin():
                pending = await DigestStore(s).pending_reviews()
                for review in pending:
                    review.held_by = ev.sender
            if not pending:
                await self.say(t("No digest waits for publication."), reply_to=ev.event_id)
            for review in pending:
                await self.say(
                    t("{who} holds the digest of week {week}: it waits for {release}.").format(
                        who=ev.sender, week=review.week, release=self.name("release")
                    ),
                    reply_to=ev.event_id,
                )
            return
        item = await self._item(ev, arg, "hold")
        if item is not None:
            await self.hold_item(ev.sender, item, ev.event_id)

    async def hold_item(
        self, sender: str, item: DigestReviewItem, reply_to: str, reaction: str | None = None
    ) -> None:
        t = self.t
        label = item_label(item)
        if item.status == "removed":
            text = t("{id} is already removed for good.").format(id=label)
            await self.say(text, reply_to=reply_to)
            return
        await self._decide(item, "held", sender, reaction)
        await self.say(
            t(
                "{who} holds {id} out of the digest of week {week}: “{text}”. "
                "To undo: {release} {id}."
            ).format(
                who=sender,
                id=label,
                week=item.week,
                text=_short(item.text),
                release=self.name("release"),
            ),
            reply_to=reply_to,
        )

    async def cmd_remove(self, ev: Message, arg: str) -> None:
        item = await self._item(ev, arg, "remove")
        if item is not None:
            await self.remove_item(ev.sender, item, ev.event_id)

    async def remove_item(
        self, sender: str, item: DigestReviewItem, reply_to: str, reaction: str | None = None
    ) -> None:
        await self._decide(item, "removed", sender, reaction)
        await self.say(
            self.t("{who} removes {id} from the digest for good: “{text}”.").format(
                who=sender, id=item_label(item), text=_short(item.text)
            ),
            reply_to=reply_to,
        )

    async def on_reaction(self, ev: Reaction) -> None:
        """A moderator's ✋ or ❌ on an item's message in the preview's thread."""
        if ev.room_id != self.room or ev.sender in self.settings.ignored_user_ids:
            return
        key = ev.key.replace("\ufe0f", "")
        hold = key in {k.replace("\ufe0f", "") for k in HOLD_KEYS}
        remove = key in {k.replace("\ufe0f", "") for k in REMOVE_KEYS}
        if not (hold or remove):
            return
        async with self.sessionmaker() as s:
            item = await DigestStore(s).review_item_by_event(ev.reacts_to)
        if item is None:
            return
        try:
            if not await self.is_moderator(ev.sender):
                return  # a reaction is no command: a non-moderator's stays unanswered
            async with self._lock:
                async with self.sessionmaker() as s:
                    item = await DigestStore(s).review_item(item.id)
                if item is None:
                    return
                if remove:
                    await self.remove_item(ev.sender, item, ev.reacts_to, ev.event_id)
                else:
                    await self.hold_item(ev.sender, item, ev.reacts_to, ev.event_id)
        except MatrixError as exc:
            log.warning("digest: a reaction on the preview could not be handled: %s", exc)

    async def on_redaction(self, ev: Redaction) -> None:
        """A moderator takes back the ✋ that held an item (a client's "remove reaction"):
        the item is back in the digest. A ❌ taken back changes nothing (removed for
        good), and says so. A reaction whose decision a later one replaced undoes
        nothing."""
        if ev.room_id != self.room or ev.sender in self.settings.ignored_user_ids:
            return
        async with self.sessionmaker() as s:
            item = await DigestStore(s).review_item_by_reaction(ev.redacts)
        if item is None:
            return
        try:
            if not await self.is_moderator(ev.sender):
                return
            async with self._lock:
                async with self.sessionmaker() as s:
                    item = await DigestStore(s).review_item_by_reaction(ev.redacts)
                if item is None or item.event_id is None:
                    return
                label = item_label(item)
                if item.status == "removed":
                    text = self.t("{id} was removed for good; it stays out.").format(id=label)
                elif item.status == "held":
                    await self._decide(item, "shown", ev.sender)
                    text = self.t(
                        "{who} took back their {hold}: {id} is back in the digest of week {week}."
                    ).format(who=ev.sender, hold=HOLD_KEYS[0], id=label, week=item.week)
                else:
                    return
                await self.say(text, reply_to=item.event_id)
        except MatrixError as exc:
            log.warning("digest: a reaction taken back could not be handled: %s", exc)

    async def cmd_release(self, ev: Message, arg: str) -> None:
        t = self.t
        if arg:
            item = await self._item(ev, arg, "release")
            if item is None:
                return
            label = item_label(item)
            if item.status == "removed":
                text = t("{id} was removed for good; it stays out.").format(id=label)
            elif item.status == "shown":
                text = t("{id} is not held.").format(id=label)
            else:
                await self._decide(item, "shown", ev.sender)
                text = t("{who} puts {id} back in the digest of week {week}.").format(
                    who=ev.sender, id=label, week=item.week
                )
            await self.say(text, reply_to=ev.event_id)
            return
        async with self.sessionmaker() as s, s.begin():
            pending = await DigestStore(s).pending_reviews()
            for review in pending:
                review.held_by = None
                review.released_by, review.released_at = ev.sender, self.clock()
        if not pending:
            await self.say(
                t("No digest waits for publication; {preview} shows the next one.").format(
                    preview=self.name("preview")
                ),
                reply_to=ev.event_id,
            )
            return
        for review in pending:
            await self.publish(review.week)
            async with self.sessionmaker() as s:
                items = await DigestStore(s).review_items(review.week)
            held = [item_label(i) for i in items if i.status == "held"]
            removed = [item_label(i) for i in items if i.status == "removed"]
            text = t(
                "{who} released the digest of week {week}: it is published. "
                "Held: {held}. Removed: {removed}."
            ).format(
                who=ev.sender,
                week=review.week,
                held=", ".join(held) or "—",
                removed=", ".join(removed) or "—",
            )
            await self.say(text, reply_to=ev.event_id)

    async def cmd_preview(self, ev: Message, arg: str) -> None:
        async with self.sessionmaker() as s:
            pending = await DigestStore(s).pending_reviews()
        if not pending:
            week, due = self.upcoming()
            await self.post(week, due)
            return
        for review in pending:
            await self.post(review.week, review.due)


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
