"""The interface of a protection: a pure decision on one message, from its content, its
sender and the facts gathered for it (:class:`Facts`); what is done about it is not its
business (:mod:`..consequences`), and neither is gathering the facts (the bot's
:class:`~moderation.bot.protections.MessageGuard`, or the homeserver's spam check)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from forum.settings import ModerationSection


def _(msg: str) -> str:
    """Marks a label for extraction; translated when shown."""
    return msg


def received_at(raw: Mapping[str, Any], now: float | None = None) -> float:
    """When our homeserver received an event (seconds since the epoch): ``now`` (the time
    it is handled) less the ``unsigned.age`` the homeserver gives, if any. Never
    ``origin_server_ts``: the sending server sets it, and a remote one may set anything."""
    now = time.time() if now is None else now
    unsigned = raw.get("unsigned")
    age = unsigned.get("age") if isinstance(unsigned, Mapping) else None
    if isinstance(age, int | float) and not isinstance(age, bool) and age > 0:
        return now - age / 1000
    return now


#: Events to remove for an offence: (room id, event id).
Events = list[tuple[str, str]]


@dataclass(frozen=True)
class Sent:
    """One message of the sender: when our homeserver received it, where, its id."""

    at: float
    room_id: str
    event_id: str


@dataclass(frozen=True)
class Facts:
    """What the protections know beyond the message itself."""

    settings: ModerationSection
    """The ``[moderation]`` settings in force."""
    now: datetime
    """The service's clock."""
    joined_at: datetime | None = None
    """When the sender first joined the forum (``None``: unknown, or not asked for: see
    :meth:`Protection.wants_join_time`)."""
    recent: tuple[Sent, ...] = ()
    """The sender's messages within the flood window, this one included, oldest first."""


@dataclass(frozen=True)
class Finding:
    """An offence found: the protection's kind ("flood"...), its label (translated when
    shown) and the sender's earlier messages to remove with this one."""

    kind: str
    label: str
    earlier: tuple[tuple[str, str], ...] = ()


class Protection(ABC):
    """One protection. ``kind`` names it in the audit log; ``label`` (translated when
    shown) names it for moderators."""

    kind: str
    label: str

    def wants_join_time(self, content: Mapping[str, Any]) -> bool:
        """Whether deciding on ``content`` needs :attr:`Facts.joined_at` (a read of the
        store, so asked for only when needed)."""
        return False

    @abstractmethod
    def decide(self, content: Mapping[str, Any], sender: str, facts: Facts) -> Finding | None:
        """The offence in a message of ``sender`` with ``content``, if it is one. Pure."""

    def found(self, earlier: Sequence[tuple[str, str]] = ()) -> Finding:
        return Finding(self.kind, self.label, tuple(earlier))


def body_of(content: Mapping[str, Any]) -> str:
    body = content.get("body")
    return body if isinstance(body, str) else ""


def formatted_of(content: Mapping[str, Any]) -> str | None:
    formatted = content.get("formatted_body")
    return formatted if isinstance(formatted, str) else None


def evaluate(
    protections: Sequence[Protection], content: Mapping[str, Any], sender: str, facts: Facts
) -> Finding | None:
    """The first offence any of ``protections`` finds in a message of ``sender`` with
    ``content``, given ``facts``; ``None`` when it is clean. Pure: the bot calls it on
    each message of the forum rooms, the homeserver's spam check may call it before an
    event is stored. Who is exempt (moderators, bots) is the caller's business."""
    for protection in protections:
        finding = protection.decide(content, sender, facts)
        if finding is not None:
            return finding
    return None


def wants_join_time(protections: Sequence[Protection], content: Mapping[str, Any]) -> bool:
    """Whether any of ``protections`` needs the sender's first join to decide on
    ``content``."""
    return any(p.wants_join_time(content) for p in protections)
