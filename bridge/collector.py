"""The collector and curation: handlers on the moderation bot (in every forum room) and,
for the authors' answers, on the membership bot.

Content is stored only for authors with publication consent at the time they wrote (or
for one message its author allowed us to quote); everyone else counts as numbers only.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import InitVar, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bridge.digest import ANNOUNCEMENTS
from bridge.models import QuotePermission
from bridge.repositories import DigestStore, is_newspaper
from bridge.sanitize import PUBLISHED_MSGTYPES, Words, mentioned, publishable
from forum.bounded import LRUDict
from forum.consent import ConsentRecords
from forum.errors import MatrixError, NotFound
from forum.events import Membership, Message, Reaction, Redaction, parse_room_event
from forum.gateway import Gateway
from forum.i18n import I18n
from forum.matrix import matrix_to, stable_txn_id, strip_reply_fallback
from forum.names import NameRefused, clean_public_name, holder_of, localpart
from forum.public_names import PublicNames
from forum.settings import Settings
from forum.storage import Outbox

log = logging.getLogger(__name__)

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
ASK_KIND = "digest.ask_quote"
YES = frozenset(
    {"oui", "yes", "y", "o", "ok", "d'accord", "👍", "👍️", "✅", "✅️", "ouais", "bien sûr"}
)
NO = frozenset({"non", "no", "n", "👎", "👎️", "❌", "pas question"})
OFFERED = ("👍", "👎")
"""The reactions put on a quote question: one tap answers (👍 and ✅ both mean yes)."""


def ts_of(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def answer_of(text: str) -> bool | None:
    word = re.sub(r"[\s.!]+$", "", text.strip().lower())
    if word in YES:
        return True
    if word in NO:
        return False
    return None


@dataclass(eq=False)
class DigestCollector:
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    moderation_gateway: Gateway
    membership_gateway: Gateway
    room_ids: InitVar[Mapping[str, str]]
    i18n: I18n
    on_change: Callable[[], None]
    notify_outbox: Callable[[], None] = lambda: None
    questions_pending: Callable[[str, str], Awaitable[list[str]]] | None = None
    """Every feature's questions waiting for a person's answer (the service's registrations:
    :meth:`forum.context.Registrations.pending_questions_of`); None: ours only."""
    rooms: dict[str, str] = field(init=False)
    """The topic rooms: room id -> slug."""
    names: LRUDict[tuple[str, str], str] = field(init=False, default_factory=LRUDict)
    staff_names: dict[str, str] = field(init=False, default_factory=dict)
    """The moderators' and the bots' display names, asked once (not once a room): a
    default public name must not look like them."""
    command: str = field(init=False)
    editors: set[str] = field(init=False)
    _lock: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)

    def __post_init__(self, room_ids: Mapping[str, str]) -> None:
        self.rooms = {room: slug for slug, room in _topic_rooms(room_ids).items()}
        self.command = f"{self.settings.bots.command_prefix}digest"
        self.editors = {self.settings.user_id(u) for u in self.settings.digest.editors}

    def register(self) -> None:
        self.moderation_gateway.on(Message, self.on_message)
        self.moderation_gateway.on(Reaction, self.on_reaction)
        # the moderation bot's own redactions too (a protection removing a message)
        self.moderation_gateway.on(Redaction, self.on_redaction, include_own=True)
        self.moderation_gateway.on(Membership, self.on_membership)
        self.membership_gateway.on(Message, self.on_dm_message, skip_rooms=self.rooms)
        self.membership_gateway.on(Reaction, self.on_dm_reaction, skip_rooms=self.rooms)

    def _ignored(self, user_id: str) -> bool:
        return user_id in self.settings.ignored_user_ids

    # --- collecting -------------------------------------------------------------------
    async def display_name(self, room_id: str, user_id: str) -> str:
        """The person's display name in ``room_id`` now (only ever recorded as their
        public name by default: :meth:`public_name`)."""
        name = self.names.get((room_id, user_id))
        if name is None:
            try:
                ev = await self.moderation_gateway.get_state_event(
                    room_id, "m.room.member", user_id
                )
            except MatrixError:
                ev = None
            name = (ev or {}).get("displayname") or user_id.split(":", 1)[0].lstrip("@")
            self.names[(room_id, user_id)] = name
        return name

    def known_name(self, room_id: str, user_id: str) -> str:
        """The name already known (no homeserver call: used inside transactions)."""
        return self.names.get((room_id, user_id)) or user_id.split(":", 1)[0].lstrip("@")

    async def fetch_names(
        self, room_id: str, sender: str | None, body: str, formatted: str | None
    ) -> None:
        """Ask the homeserver, before a write transaction opens, the names it will need
        (the author's, the mentioned people's): no network call is made inside it."""
        for user_id in {*([sender] if sender else []), *mentioned(body, formatted)}:
            await self.display_name(room_id, user_id)
        for user_id in self._staff() - self.staff_names.keys():
            self.staff_names[user_id] = await self.display_name(room_id, user_id)

    def _staff(self) -> set[str]:
        settings = self.settings
        return {*settings.moderator_ids, settings.membership_bot_id, settings.moderation_bot_id}

    async def fetch_names_of(self, room_id: str, raw: dict[str, Any] | None) -> None:
        if raw is None:
            return
        content = raw.get("content") or {}
        body = content.get("body")
        formatted = content.get("formatted_body")
        await self.fetch_names(
            room_id,
            raw.get("sender") if isinstance(raw.get("sender"), str) else None,
            body if isinstance(body, str) else "",
            formatted if isinstance(formatted, str) else None,
        )

    async def public_name(self, s: AsyncSession, room_id: str, user_id: str) -> str:
        """The name a quote of ``user_id`` carries: the public name they chose, or the one
        recorded at their publication consent. Someone who consented before public names
        existed has none: their display name now is recorded as it, once (the default),
        and a later change of display name changes nothing."""
        names = PublicNames(s)
        current = await names.get(user_id)
        if current is not None:
            return current.name
        default = await self.default_name(s, room_id, user_id)
        return await names.ensure(user_id, default, method="default")

    async def default_name(self, s: AsyncSession, room_id: str, user_id: str) -> str:
        """The public name recorded by default: the display name now, unless it is (or
        looks like) another person's public name or a moderator's or a bot's name; then
        the user id's localpart; last, a neutral name no one else has."""
        staff = self._staff() - {user_id}
        others = {
            u: [localpart(u), self.known_name(room_id, u), self.staff_names.get(u, "")]
            for u in staff
        }
        for candidate in (self.known_name(room_id, user_id), localpart(user_id)):
            try:
                name = clean_public_name(candidate)
            except NameRefused:
                continue
            taken = await PublicNames(s).holders(name, excluding=user_id)
            if not taken and holder_of(name, others) is None:
                return name
        return f"{self.neutral()}-{hashlib.sha256(user_id.encode()).hexdigest()[:6]}"

    def neutral(self) -> str:
        """The word that stands for a mentioned person who did not consent, in the
        forum's primary language: a quote is published as written, untranslated, and
        the word stands inside it."""
        _ = self.i18n.gettext(self.i18n.default)
        return _("a member")

    async def words(
        self, s: AsyncSession, room_id: str, msgtype: str, body: str, formatted: str | None
    ) -> Words | None:
        """What of a message may be published (text, notices and emotes only): each person
        it mentions is shown by their public name if they consent to
        publication now, by a neutral word otherwise."""
        if msgtype not in PUBLISHED_MSGTYPES:
            return None
        names: dict[str, str] = {}
        consents = ConsentRecords(s)
        for user_id in mentioned(body, formatted):
            if await consents.granted_since(user_id) is not None:
                names[user_id] = await self.public_name(s, room_id, user_id)
        return publishable(msgtype, body, formatted, names, self.neutral())

    async def on_membership(self, ev: Membership) -> None:
        if ev.room_id not in self.rooms or self._ignored(ev.target):
            return
        if ev.display_name:
            self.names[(ev.room_id, ev.target)] = ev.display_name
        # A profile change relabels nothing: quotes carry the public name (forum.public_names)
        if ev.membership == "join" and ev.prev_membership != "join":
            async with self.sessionmaker() as s, s.begin():
                await DigestStore(s).add_activity(
                    ev.event_id, ev.room_id, "join", ev.target, ts_of(ev.origin_server_ts)
                )

    async def on_message(self, ev: Message) -> None:
        if ev.room_id not in self.rooms or self._ignored(ev.sender):
            return
        if ev.replaces:
            await self._edit(ev)
            return
        body = ev.body.strip()
        if ev.reply_to and strip_reply_fallback(body).startswith(self.command):
            rest = strip_reply_fallback(body)[len(self.command) :]
            if not rest or rest[0].isspace():
                heading = rest.strip().splitlines()[0][:200] if rest.strip() else None
                if not await self.may_curate(ev.room_id, ev.sender):
                    await self.refuse_command(ev)
                    return
                await self.curate(ev.room_id, ev.reply_to, heading, ev.event_id, ev.sender)
                return
        await self.fetch_names(ev.room_id, ev.sender, ev.body, ev.formatted_body)
        async with self.sessionmaker() as s, s.begin():
            store = DigestStore(s)
            await store.add_activity(
                ev.event_id, ev.room_id, "message", ev.sender, ts_of(ev.origin_server_ts)
            )
            stored = await self._store_if_consented(s, ev.room_id, ev.raw)
        if stored:
            self.on_change()

    async def _store_if_consented(
        self, s: AsyncSession, room_id: str, raw: dict[str, Any], basis: str | None = None
    ) -> bool:
        """Store a message event if its author consented when sending it (or ``basis``)."""
        ev = parse_room_event(room_id, raw)
        if not isinstance(ev, Message) or ev.replaces or not ev.body:
            return False
        if ev.msgtype not in PUBLISHED_MSGTYPES:
            return False  # a location, a file, an image...: words only are published
        ts = ts_of(ev.origin_server_ts)
        if basis is None:
            since = await ConsentRecords(s).granted_since(ev.sender)
            if since is None or ts < since:
                return False
            basis = "consent"
        words = await self.words(s, room_id, ev.msgtype, ev.body, ev.formatted_body)
        if words is None:
            return False
        await DigestStore(s).put_message(
            event_id=ev.event_id,
            room_id=room_id,
            topic=self.rooms.get(room_id, ANNOUNCEMENTS),
            sender=ev.sender,
            display_name=await self.public_name(s, room_id, ev.sender),
            body=words.body,
            html=words.html,
            ts=ts,
            reply_to=ev.reply_to,
            thread_root=ev.thread_root,
            edited=False,
            basis=basis,
        )
        return True

    async def _edit(self, ev: Message) -> None:
        new = ev.new_content or {}
        body = new.get("body") if isinstance(new.get("body"), str) else None
        if body is None or ev.replaces is None:
            return
        fmt = new.get("formatted_body") if new.get("format") == "org.matrix.custom.html" else None
        msgtype = new.get("msgtype", "m.text")  # m.new_content should repeat it
        await self.fetch_names(ev.room_id, ev.sender, body, fmt if isinstance(fmt, str) else None)
        async with self.sessionmaker() as s, s.begin():
            store = DigestStore(s)
            words = await self.words(
                s,
                ev.room_id,
                msgtype if isinstance(msgtype, str) else "",
                body,
                fmt if isinstance(fmt, str) else None,
            )
            if words is None:
                # edited into something that is not words: nothing of it is kept
                old = await store.get_message(ev.replaces)
                changed = (
                    old is not None
                    and old.sender == ev.sender
                    and await store.delete_message(ev.replaces)
                )
            else:
                changed = await store.edit_message(ev.replaces, ev.sender, words.body, words.html)
        if changed:
            self.on_change()

    async def on_reaction(self, ev: Reaction) -> None:
        if ev.room_id not in self.rooms or self._ignored(ev.sender):
            return
        if is_newspaper(ev.key):
            await self.curate(ev.room_id, ev.reacts_to, None, ev.event_id, ev.sender)
        await self.count_reaction(ev)

    async def count_reaction(self, ev: Reaction) -> None:
        async with self.sessionmaker() as s, s.begin():
            store = DigestStore(s)
            if await store.get_message(ev.reacts_to) is not None:
                await store.add_reaction(ev.event_id, ev.reacts_to, ev.key)

    async def on_redaction(self, ev: Redaction) -> None:
        if ev.room_id not in self.rooms or not ev.redacts:
            return
        async with self.sessionmaker() as s, s.begin():
            store = DigestStore(s)
            changed = await store.delete_message(ev.redacts)
            changed |= await store.unmark_by_marker(ev.redacts)
            await store.delete_reaction(ev.redacts)
        if changed:
            self.on_change()

    async def erase_from_outbox(self, payload: dict[str, Any]) -> None:
        """Outbox executor (:data:`~forum.signals.ERASE_PERSON_KIND`, written by the
        membership bot in the transaction of a withdrawal or a leaving): erase the person
        (idempotent: erasing again deletes nothing more)."""
        await self.erase(str(payload["user_id"]))

    async def relabel_from_outbox(self, payload: dict[str, Any]) -> None:
        """Outbox executor (:data:`~forum.public_names.RELABEL_KIND`, written by the
        membership bot with a change of public name): the person's stored quotes take the
        public name they have now (idempotent)."""
        user_id = str(payload["user_id"])
        async with self.sessionmaker() as s, s.begin():
            current = await PublicNames(s).get(user_id)
            changed = current is not None and await DigestStore(s).relabel(user_id, current.name)
        if changed:
            log.info("digest: a person's quotes take their new public name")
            self.on_change()

    async def erase(self, user_id: str, **_: Any) -> None:
        """Withdrawal or leaving: delete every stored word of ``user_id``."""
        async with self.sessionmaker() as s, s.begin():
            n = await DigestStore(s).erase_user(user_id)
        log.info("digest: erased %d stored message(s) of a person", n)
        self.on_change()

    # --- curation ---------------------------------------------------------------------
    async def may_curate(self, room_id: str, user_id: str) -> bool:
        if user_id in self.editors:
            return True
        try:
            levels = await self.moderation_gateway.power_levels(room_id)
        except MatrixError:
            log.warning("digest: could not read power levels of %s", room_id)
            return False
        return levels.level(user_id) >= self.settings.power_levels.moderator

    async def refuse_command(self, ev: Message) -> None:
        """A non-moderator's ``!digest``: a short answer in reply, in the forum's primary
        language (a 📰 reaction is no command: it stays unanswered)."""
        _ = self.i18n.gettext(self.i18n.default)
        body = _("Only moderators choose the quotes for the digest.")
        try:
            await self.moderation_gateway.send_text(ev.room_id, body, reply_to=ev.event_id)
        except MatrixError as exc:
            log.warning("digest: could not answer a command in %s: %s", ev.room_id, exc)

    async def curate(
        self, room_id: str, target: str, heading: str | None, marker: str, marked_by: str
    ) -> None:
        if not await self.may_curate(room_id, marked_by):
            return
        try:
            raw = await self.moderation_gateway.get_event(room_id, target)
        except MatrixError:
            log.warning("digest: marked event %s cannot be read", target)
            return
        author = raw.get("sender")
        if not isinstance(author, str) or raw.get("type") != "m.room.message":
            return
        if (raw.get("content") or {}).get("msgtype") not in PUBLISHED_MSGTYPES:
            return  # not words: never published, so never asked about
        ask = False
        await self.fetch_names_of(room_id, raw)
        async with self.sessionmaker() as s, s.begin():
            store = DigestStore(s)
            existing = await store.get_message(target)
            permission = await store.permission(target)
            if existing is not None or await self._store_if_consented(s, room_id, raw):
                status = "ok"
            elif permission is not None and permission.granted is True:
                await self._store_if_consented(s, room_id, raw, basis="quote")
                status = "ok"
            elif permission is not None and permission.granted is False:
                status = "refused"
            else:
                status, ask = "asking", permission is None
            await store.mark(target, room_id, author, heading, marker, marked_by, status)
            if ask:
                # the question follows the mark: written in the same transaction, sent by
                # the outbox worker (ids only: no words of a non-consenting author here)
                await Outbox(s).add(
                    ASK_KIND,
                    {"room_id": room_id, "target": target, "author": author},
                    dedupe_key=f"{ASK_KIND}:{target}",
                )
        if status == "ok":
            self.on_change()
        if ask:
            self.notify_outbox()

    async def ask_from_outbox(self, payload: dict[str, Any]) -> None:
        """Outbox executor: ask the author once (idempotent)."""
        room_id, target, author = payload["room_id"], payload["target"], payload["author"]
        async with self.sessionmaker() as s:
            store = DigestStore(s)
            permission = await store.permission(target)
            highlight = await store.highlight(target)
        if permission is not None or highlight is None or highlight.status != "asking":
            return  # already asked, answered, unmarked or redacted
        try:
            raw = await self.moderation_gateway.get_event(room_id, target)
        except NotFound:
            return
        if raw.get("sender") != author:
            return
        await self.ask_author(room_id, target, author, raw)

    async def dm_room(self, user_id: str) -> str:
        direct = await self.membership_gateway.get_account_data("m.direct") or {}
        joined = set(await self.membership_gateway.joined_rooms())
        for room in direct.get(user_id) or []:
            if (
                isinstance(room, str)
                and room in joined
                and await self.membership_gateway.membership(room, user_id) in ("join", "invite")
            ):
                return room
        return await self.membership_gateway.create_dm(user_id)

    def _texts(self, key: str, **kw: str) -> tuple[str, str]:
        """The text in every forum language (plain, HTML) for someone whose language we
        do not know."""
        plain, rich = [], []
        for lang in self.settings.forum.languages:
            _ = self.i18n.gettext(lang)
            t = _(key)
            plain.append(t.format(**kw))
            rich.append(html.escape(t).format(**{k: html.escape(v) for k, v in kw.items()}))
        return "\n".join(plain), "<br>".join(rich)

    async def ask_author(self, room_id: str, target: str, author: str, raw: dict[str, Any]) -> None:
        content = raw.get("content") or {}
        body = strip_reply_fallback(str(content.get("body", "")))[:1000]
        room = await self.dm_room(author)
        q_plain, q_html = self._texts(
            "May we quote this message of yours in the forum's public weekly digest? "
            "Answer yes or no (or react 👍 / 👎)."
        )
        quoted = "\n".join("> " + line for line in body.splitlines())
        html_body = f"<blockquote>{html.escape(body)}</blockquote><p>{q_html}</p>"
        # one question per message: asked again after a crash between sending it and
        # recording it (the outbox delivers at least once), the homeserver returns the
        # same event and the person sees it once
        ask_id = await self.membership_gateway.send_text(
            room,
            f"{quoted}\n\n{q_plain}",
            html_body,
            notice=False,
            mentions=[author],
            txn_id=stable_txn_id("quote", target, room),
        )
        async with self.sessionmaker() as s, s.begin():
            await DigestStore(s).ask(target, room_id, author, room, ask_id)
        # After the question is stored, so that a tap on them always finds it; the bot's
        # own reactions are no answers (the gateway skips its own events).
        for key in OFFERED:
            try:
                await self.membership_gateway.react(room, ask_id, key)
            except MatrixError as exc:
                log.warning("could not react %s to a quote question: %s", key, exc)
                break

    async def pending_questions(self, user_id: str, lang: str) -> list[str]:
        """Our quote questions waiting for ``user_id``'s answer, one line each in ``lang``
        (registered with :meth:`forum.context.Registrations.pending_questions`)."""
        _ = self.i18n.gettext(lang)
        async with self.sessionmaker() as s:
            questions = await DigestStore(s).open_questions(user_id)
        return [
            _("May we quote this message of yours in the public digest: {link}").format(
                link=matrix_to(q.dm_room_id, q.ask_event_id)
            )
            for q in questions
            if q.dm_room_id and q.ask_event_id
        ]

    async def bound_question(self, ev: Message) -> tuple[QuotePermission, bool] | None:
        """The quote question ``ev`` answers, and the answer: the question it replies to,
        or, for a bare answer, our only open question in that DM when no other question
        (of any feature) waits for the person. An answer is never consumed twice: a bare
        one with several questions pending binds to none (the membership bot asks which)."""
        answer = answer_of(strip_reply_fallback(ev.body))
        if answer is None:
            return None
        async with self.sessionmaker() as s:
            store = DigestStore(s)
            if ev.reply_to:
                q = await store.question_by_ask_event(ev.reply_to)
                if (
                    q is None
                    or q.user_id != ev.sender
                    or q.dm_room_id != ev.room_id
                    or q.granted is not None
                ):
                    return None  # not ours, or answered already
                return q, answer
            mine = await store.open_questions(ev.sender)
        here = [q for q in mine if q.dm_room_id == ev.room_id]
        if len(here) != 1:
            return None
        if self.questions_pending is not None:
            total = len(await self.questions_pending(ev.sender, self.i18n.default))
        else:
            total = len(mine)
        return (here[0], answer) if total == 1 else None

    async def on_dm_message(self, ev: Message) -> None:
        if ev.room_id in self.rooms or self._ignored(ev.sender):
            return
        bound = await self.bound_question(ev)
        if bound is not None:
            q, answer = bound
            await self._answered(q.target, q.room_id, ev.sender, ev.room_id, answer)

    async def claims_dm(self, ev: Message) -> bool:
        """Is this DM message an answer to one of our quote questions (bound to it)?"""
        return await self.bound_question(ev) is not None

    async def on_dm_reaction(self, ev: Reaction) -> None:
        if ev.room_id in self.rooms:
            return
        answer = answer_of(ev.key)
        if answer is None:
            return
        async with self.sessionmaker() as s:
            q = await DigestStore(s).question_by_ask_event(ev.reacts_to)
        if q is not None and q.user_id == ev.sender and q.granted is None:
            await self._answered(q.target, q.room_id, ev.sender, ev.room_id, answer)

    async def _answered(
        self, target: str, room_id: str, user_id: str, dm: str, answer: bool
    ) -> None:
        raw: dict[str, Any] | None = None
        if answer:
            try:
                raw = await self.moderation_gateway.get_event(room_id, target)
            except MatrixError:
                raw = None
        await self.fetch_names_of(room_id, raw)
        async with self.sessionmaker() as s, s.begin():
            store = DigestStore(s)
            await store.answer(target, answer)
            if answer and raw is not None and raw.get("sender") == user_id:
                await self._store_if_consented(s, room_id, raw, basis="quote")
                await store.set_highlight_status(target, "ok")
            else:
                await store.set_highlight_status(target, "refused")
        key = (
            "Thank you: this message will appear in the public digest."
            if answer
            else "Understood: this message will not be quoted."
        )
        plain, rich = self._texts(key)
        await self.membership_gateway.send_text(dm, plain, rich)
        self.on_change()


def _topic_rooms(room_ids: Mapping[str, str]) -> dict[str, str]:
    out = {k.removeprefix("topic:"): v for k, v in room_ids.items() if k.startswith("topic:")}
    if "announcements" in room_ids:
        out[ANNOUNCEMENTS] = room_ids["announcements"]
    return out
