"""The rules of the spam checker: each callback of synapse-http-antispam gets a
:class:`Verdict`. Only the forum's rooms (and invitations to its members) are judged;
everything else is let through.

The rules are the moderation bot's, applied before delivery: its policy rules (the
forum's own and the subscribed lists', globs included), and its message protections
(banned words, mention spam, links and media from new members, flooding), each called
through its own :class:`~moderation.bot.protections.Protection` interface. A refused
message is an offence handed to the consequences in force (a strike, its step, a report
to the moderators). In a dry run everything is let through: the bot's protections see it
after delivery and report what they would do. A banned person may still leave a room and
remove what they wrote.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from forum.bounded import LRUDict
from forum.events import Membership, Message, Redaction, RoomEvent, parse_room_event
from forum.matrix import server_of
from moderation.bot.consequences import Offence
from moderation.bot.protections import (
    FloodWindows,
    Protection,
    Sent,
    default_protections,
    evaluate,
    wants_join_time,
)
from moderation.bot.protections.base import Facts
from moderation.bot.repositories import FirstJoins

if TYPE_CHECKING:
    from forum.context import PersonLanguage
    from forum.i18n import I18n
    from moderation.bot.bot import ModerationBot

log = logging.getLogger(__name__)

#: the forum members (and their servers) are read again after this many seconds
MEMBERS_TTL = 30.0
#: ... or after this many when the invited person is not among them (a new member)
MEMBERS_RECHECK = 2.0


def _(msg: str) -> str:
    """Marks a message for extraction; translated when shown."""
    return msg


REFUSED = _("Your message was refused by the forum's automatic moderation: {what}.")
TOO_FAST = _("You are sending messages too fast: wait {s} seconds before sending again.")
BANNED = _("You are banned from this forum.")
INVITE_REFUSED = _("This invitation was refused by the forum's moderation.")
DM_REFUSED = _(
    "The moderation bot only talks with the forum's members and the people of its own "
    "server: join the forum to write to it."
)
JOINS_CLOSED = _(
    "Too many people arrived at once: the topic rooms only take knocks for now. Knock, and "
    "a moderator will let you in."
)


def _strings(body: Mapping[str, Any], *keys: str) -> list[str] | None:
    """The string values of ``keys`` in ``body``; None if one is missing or not a string."""
    values = [body.get(k) for k in keys]
    return (
        [v for v in values if isinstance(v, str)]
        if all(isinstance(v, str) for v in values)
        else None
    )


def _always_allowed(ev: RoomEvent | None) -> bool:
    """What even a banned person may always do: leave, and remove what they wrote."""
    if isinstance(ev, Membership):
        return ev.target == ev.sender and ev.membership == "leave"
    return isinstance(ev, Redaction)


@dataclass(frozen=True)
class Verdict:
    """Let through (``errcode`` None) or refused with a Matrix error code, a text the
    person's client shows, and extra fields of the error (``retry_after_ms``)."""

    errcode: str | None = None
    error: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    rule: str = ""
    """What refused it (for the metrics): a protection's kind, "policy", "invite"."""

    @property
    def allowed(self) -> bool:
        return self.errcode is None

    def as_json(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "error": self.error, **self.extra}


ALLOW = Verdict()


def forget_refused(windows: FloodWindows, sender: str, event_id: str) -> None:
    """A refused message is not one more of the person's messages: flooding at the door
    refuses the message that would reach the limit, and only that one, so at most
    ``flood_messages - 1`` get through per ``flood_seconds``."""
    window = windows.recent.get(sender)
    if window and window[-1].event_id == event_id:
        window.pop()


@dataclass(kw_only=True, eq=False)
class Judge:
    """Decides each callback from the moderation bot's state (``bot``: its rooms, policy
    lists, tuning, consequences and actions)."""

    bot: ModerationBot
    language_of: PersonLanguage | None = None
    protections: list[Protection] = field(init=False, default_factory=default_protections)
    windows: FloodWindows = field(init=False, default_factory=FloodWindows)
    """Each person's messages let through within the flood window: flooding at the door
    refuses the message that would reach the limit, and a refused message is not counted,
    so at most ``flood_messages - 1`` get through per ``flood_seconds``."""
    struck: LRUDict[str, float] = field(init=False, default_factory=LRUDict)
    """When each person last got a strike for flooding at the door: one per burst."""
    _members: frozenset[str] = field(init=False, default=frozenset())
    _servers: frozenset[str] = field(init=False, default=frozenset())
    _members_at: float = field(init=False, default=float("-inf"))
    _reading: asyncio.Future[None] | None = field(init=False, default=None)

    # --- facts ------------------------------------------------------------------------
    def is_forum_room(self, room_id: str) -> bool:
        return room_id in self.bot.forum_rooms.forum_ids

    def banned(self, user_id: str) -> bool:
        """Whether a policy rule (the forum's or a followed list's) bans ``user_id`` or
        their server."""
        return self.bot.policy_lists.matching_rule(user_id) is not None

    async def exempt(self, user_id: str, room_id: str | None = None) -> bool:
        return await self.bot.actions.is_exempt(user_id, room_id)

    async def members(self, max_age: float = MEMBERS_TTL) -> tuple[frozenset[str], frozenset[str]]:
        """The forum's members and their servers (ours included), read again when older
        than ``max_age`` seconds. One reading at a time, and a check that gives up at its
        deadline does not stop it: the next check finds the list read."""
        if time.monotonic() - self._members_at > max_age:
            if self._reading is None or self._reading.done():
                self._reading = asyncio.ensure_future(self._read_members())
                self._reading.add_done_callback(_retrieved)
            await asyncio.shield(self._reading)
        return self._members, self._servers

    async def members_with(self, user_id: str) -> tuple[frozenset[str], frozenset[str]]:
        """:meth:`members`, read again sooner (after :data:`MEMBERS_RECHECK` seconds) when
        ``user_id`` is not among them: perhaps a member since the last reading."""
        members, servers = await self.members()
        if user_id not in members:
            members, servers = await self.members(MEMBERS_RECHECK)
        return members, servers

    async def _read_members(self) -> None:
        members = await self.bot.actions.members()
        self._members = frozenset(members)
        servers = {server_of(u) for u in members}
        self._servers = frozenset(servers | {self.bot.settings.server_name})
        self._members_at = time.monotonic()

    async def gettext(self, user_id: str) -> Callable[[str], str]:
        """The bot's translations in the language ``user_id`` chose (else the forum's)."""
        i18n: I18n = self.bot.i18n
        lang = await self.language_of(user_id) if self.language_of else None
        if lang not in self.bot.settings.forum.languages:
            lang = self.bot.lang
        return i18n.gettext(lang or self.bot.lang)

    async def banned_verdict(self, user_id: str) -> Verdict:
        t = await self.gettext(user_id)
        return Verdict("M_FORBIDDEN", t(BANNED), rule="policy")

    # --- callbacks --------------------------------------------------------------------
    async def decide(self, callback: str, body: Mapping[str, Any]) -> Verdict:
        """The verdict on one call of the module (an unknown callback is let through)."""
        handler = {
            "check_event_for_spam": self.check_event_for_spam,
            "user_may_join_room": self.user_may_join_room,
            "accept_make_join": self.accept_make_join,
            "user_may_invite": self.user_may_invite,
            "federated_user_may_invite": self.federated_user_may_invite,
            "user_may_send_3pid_invite": self.user_may_send_3pid_invite,
        }.get(callback)
        if handler is None:
            # user_may_create_room(_alias), user_may_publish_room, check_username_for_spam,
            # check_login_for_spam: not about the forum's rooms
            return ALLOW
        if self.bot.dry_run:
            # everything is let through; the bot's protections and policy rules see it
            # after delivery and report what they would do (one report, not two)
            return ALLOW
        return await handler(body)

    async def check_event_for_spam(self, body: Mapping[str, Any]) -> Verdict:
        raw = body.get("event")
        if not isinstance(raw, dict):
            return ALLOW
        room_id, sender = raw.get("room_id"), raw.get("sender")
        if not isinstance(room_id, str) or not isinstance(sender, str):
            return ALLOW
        if not self.is_forum_room(room_id):
            return ALLOW
        ev = parse_room_event(room_id, raw)
        refused = self.banned(sender) and not _always_allowed(ev)
        if refused and not await self.exempt(sender, room_id):
            return await self.banned_verdict(sender)
        if isinstance(ev, Membership) and ev.membership == "knock" and ev.target == sender:
            await self.knocked(ev)
        if not isinstance(ev, Message):
            return ALLOW
        return await self.message(ev)

    async def knocked(self, ev: Membership) -> None:
        """A knock counted by the join-wave protection at the door, before the homeserver
        stores it: a wave of knocks is decided at the pace people knock, not at the pace
        the homeserver stores knocks. The bot counts the same knocks again when it sees
        them; a person counts once in a window. The lock runs in the background (a check
        answers within the module's timeout). Synapse also checks events it pulls over
        federation (backfill, missing events): a knock dated before the window (by the
        server that made it) is history, not an arrival."""
        now = time.time()
        if ev.origin_server_ts / 1000 < now - self.bot.tuning.current.join_wave_seconds:
            return
        if await self.exempt(ev.sender, ev.room_id):
            return
        wave = self.bot.join_wave.arrived(ev.sender, now)
        if wave is not None:
            self.bot.tasks.start("antispam:join-wave", self.bot.join_wave.act(wave))

    async def message(self, ev: Message) -> Verdict:
        """The message protections, decided as the bot decides (:func:`evaluate`), on the
        facts known at the door; the first offence decides."""
        bot = self.bot
        settings = bot.tuning.current
        sent = Sent(time.time(), ev.room_id, ev.event_id)
        recent = self.windows.record(ev.sender, sent, settings.flood_seconds)
        joined_at = None
        if wants_join_time(self.protections, ev.content):
            async with bot.sessionmaker() as s:
                joined_at = await FirstJoins(s).get(ev.sender)
        facts = Facts(settings, bot.clock(), joined_at, recent)
        finding = evaluate(self.protections, ev.content, ev.sender, facts)
        if finding is None or await self.exempt(ev.sender, ev.room_id):
            return ALLOW
        forget_refused(self.windows, ev.sender, ev.event_id)
        flood = finding.kind == "flood"
        now = time.monotonic()
        last = self.struck.get(ev.sender)
        repeat = flood and last is not None and now - last < settings.flood_seconds
        if not repeat:
            if flood:
                self.struck[ev.sender] = now
            label = bot.t(finding.label)
            reason = bot.t("Automatic moderation: {what}").format(what=label)
            offence = Offence(ev, finding.kind, label, reason, [], refused=True)
            bot.tasks.start(
                f"antispam:offence:{ev.event_id}", bot.consequences.current.offence(offence)
            )
        t = await self.gettext(ev.sender)
        if flood:
            seconds = max(1, round(settings.flood_seconds))
            return Verdict(
                "M_LIMIT_EXCEEDED",
                t(TOO_FAST).format(s=seconds),
                {"retry_after_ms": seconds * 1000},
                rule=finding.kind,
            )
        what = t(finding.label)
        return Verdict("M_FORBIDDEN", t(REFUSED).format(what=what), rule=finding.kind)

    async def user_may_join_room(self, body: Mapping[str, Any]) -> Verdict:
        user, room = body.get("user"), body.get("room")
        if not isinstance(user, str) or not isinstance(room, str):
            return ALLOW
        if not self.is_forum_room(room):
            return ALLOW
        if self.banned(user) and not await self.exempt(user):
            return await self.banned_verdict(user)
        if (
            self.bot.locks.doors_closed
            and room in self.bot.forum_rooms.topic_ids.values()
            and body.get("is_invited") is False  # not asked by accept_make_join: unknown
            and not await self.exempt(user, room)
        ):
            # a join wave was decided; the rooms' knock-only rules may still be on their way
            t = await self.gettext(user)
            return Verdict("M_FORBIDDEN", t(JOINS_CLOSED), rule="join-wave")
        return ALLOW

    async def accept_make_join(self, body: Mapping[str, Any]) -> Verdict:
        """A remote server asks to join one of our rooms for ``user``."""
        return await self.user_may_join_room(body)

    async def user_may_invite(self, body: Mapping[str, Any]) -> Verdict:
        found = _strings(body, "inviter", "invitee", "room_id")
        if found is None:
            return ALLOW
        inviter, invitee, room = found
        return await self.invite(inviter, invitee, room, remote=False)

    async def federated_user_may_invite(self, body: Mapping[str, Any]) -> Verdict:
        """An invitation from another server to one of our users."""
        ev = body.get("event")
        if not isinstance(ev, dict):
            return ALLOW
        found = _strings(ev, "sender", "state_key", "room_id")
        if found is None:
            return ALLOW
        inviter, invitee, room = found
        return await self.invite(inviter, invitee, room, remote=True)

    async def invite(self, inviter: str, invitee: str, room: str, *, remote: bool) -> Verdict:
        """Refused: a banned person inviting into the forum's rooms or inviting one of its
        members anywhere; a banned person invited into the forum's rooms; an invitation to
        a member from a server none of the forum's members is on (invite spam)."""
        in_forum = self.is_forum_room(room)
        if in_forum:
            for person in (invitee, inviter):
                if self.banned(person) and not await self.exempt(person):
                    return await self._invite_refused(inviter)
            return ALLOW
        if not remote and not self.banned(inviter):
            return ALLOW  # a local person's invitation elsewhere: not the forum's business
        if remote and invitee == self.bot.settings.moderation_bot_id:
            return await self._stranger_to_the_bot(inviter)
        members, servers = await self.members_with(invitee)
        if invitee not in members:
            return ALLOW
        if self.banned(inviter) or server_of(inviter) not in servers:
            return await self._invite_refused(inviter)
        return ALLOW

    async def _stranger_to_the_bot(self, inviter: str) -> Verdict:
        """Another server's person invites the moderation bot (a direct chat, to report):
        refused unless they are a forum member, as the bot would decline it after the fact
        (:meth:`ModerationBot.accepts_dm_from`); told at once, and the bot never sees it."""
        members, _servers = await self.members_with(inviter)
        if inviter in members and not self.banned(inviter):
            return ALLOW
        t = await self.gettext(inviter)
        return Verdict("M_FORBIDDEN", t(DM_REFUSED), rule="invite")

    async def _invite_refused(self, inviter: str) -> Verdict:
        t = await self.gettext(inviter)
        return Verdict("M_FORBIDDEN", t(INVITE_REFUSED), rule="invite")

    async def user_may_send_3pid_invite(self, body: Mapping[str, Any]) -> Verdict:
        inviter, room = body.get("inviter"), body.get("room_id")
        if not isinstance(inviter, str) or not isinstance(room, str):
            return ALLOW
        if self.is_forum_room(room) and self.banned(inviter) and not await self.exempt(inviter):
            return await self._invite_refused(inviter)
        return ALLOW


def _retrieved(reading: asyncio.Future[None]) -> None:
    """A reading whose checks all gave up: its failure is logged, not left unretrieved."""
    if not reading.cancelled() and reading.exception() is not None:
        log.warning("antispam: reading the forum's members failed: %s", reading.exception())
