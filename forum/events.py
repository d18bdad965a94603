"""The project's own small event types. Handlers see these, never nio types.

Each carries the raw event (``raw``) as received, for the rare handler that needs more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RoomEvent:
    room_id: str
    event_id: str
    sender: str
    type: str
    origin_server_ts: int
    content: dict[str, Any] = field(repr=False)
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def relates_to(self) -> dict[str, Any]:
        rel = self.content.get("m.relates_to")
        return rel if isinstance(rel, dict) else {}


@dataclass(frozen=True)
class Message(RoomEvent):
    """``m.room.message`` (text, notice, emote, media...)."""

    msgtype: str = ""
    body: str = ""
    formatted_body: str | None = None

    @property
    def reply_to(self) -> str | None:
        irt = self.relates_to.get("m.in_reply_to")
        return irt.get("event_id") if isinstance(irt, dict) else None

    @property
    def thread_root(self) -> str | None:
        rel = self.relates_to
        return rel.get("event_id") if rel.get("rel_type") == "m.thread" else None

    @property
    def replaces(self) -> str | None:
        """The event id this message edits, if it is an edit (``m.replace``)."""
        rel = self.relates_to
        return rel.get("event_id") if rel.get("rel_type") == "m.replace" else None

    @property
    def new_content(self) -> dict[str, Any] | None:
        nc = self.content.get("m.new_content")
        return nc if isinstance(nc, dict) else None


@dataclass(frozen=True)
class Reaction(RoomEvent):
    """``m.reaction`` annotating ``reacts_to`` with ``key`` (usually an emoji)."""

    reacts_to: str = ""
    key: str = ""


@dataclass(frozen=True)
class Redaction(RoomEvent):
    """``m.room.redaction`` removing ``redacts``."""

    redacts: str = ""
    reason: str | None = None


@dataclass(frozen=True)
class Membership(RoomEvent):
    """``m.room.member``: ``target`` (the state key) is now ``membership``."""

    target: str = ""
    membership: str = ""
    prev_membership: str | None = None
    reason: str | None = None
    display_name: str | None = None


@dataclass(frozen=True)
class StateChange(RoomEvent):
    """Any other state event (power levels, policy rules, names...)."""

    state_key: str = ""


@dataclass(frozen=True)
class Undecryptable(RoomEvent):
    """An ``m.room.encrypted`` event the account could not read: the sender's device did
    not share its key with the bot's device (or withheld it), even when asked again.
    Encrypted events that could be read reach the handlers as their clear type."""

    session_id: str = ""
    device_id: str = ""


@dataclass(frozen=True)
class OtherEvent(RoomEvent):
    """A timeline event of a type the gateway does not model."""


@dataclass(frozen=True)
class Invite:
    """We (the gateway's account) were invited to ``room_id`` by ``sender``."""

    room_id: str
    sender: str
    is_direct: bool
    event_id: str = ""
    state: tuple[dict[str, Any], ...] = field(default=(), repr=False, compare=False)


AnyEvent = RoomEvent | Invite


def parse_room_event(room_id: str, raw: dict[str, Any]) -> RoomEvent | None:
    """Map one raw timeline event to our types; ``None`` for malformed input."""
    event_id = raw.get("event_id")
    sender = raw.get("sender")
    etype = raw.get("type")
    if not isinstance(event_id, str) or not isinstance(sender, str) or not isinstance(etype, str):
        return None
    content = raw.get("content")
    if not isinstance(content, dict):
        content = {}
    ts = raw.get("origin_server_ts")
    base: dict[str, Any] = {
        "room_id": room_id,
        "event_id": event_id,
        "sender": sender,
        "type": etype,
        "origin_server_ts": ts if isinstance(ts, int) else 0,
        "content": content,
        "raw": raw,
    }
    state_key = raw.get("state_key")
    if etype == "m.room.member" and isinstance(state_key, str):
        prev = (
            raw.get("unsigned", {}).get("prev_content")
            if isinstance(raw.get("unsigned"), dict)
            else None
        )
        return Membership(
            **base,
            target=state_key,
            membership=_str(content.get("membership")),
            prev_membership=_str(prev.get("membership")) if isinstance(prev, dict) else None,
            reason=_opt_str(content.get("reason")),
            display_name=_opt_str(content.get("displayname")),
        )
    if isinstance(state_key, str):
        return StateChange(**base, state_key=state_key)
    if etype == "m.room.message":
        fmt = (
            content.get("formatted_body")
            if content.get("format") == "org.matrix.custom.html"
            else None
        )
        return Message(
            **base,
            msgtype=_str(content.get("msgtype")),
            body=_str(content.get("body")),
            formatted_body=fmt if isinstance(fmt, str) else None,
        )
    if etype == "m.reaction":
        rel = content.get("m.relates_to")
        if isinstance(rel, dict) and rel.get("rel_type") == "m.annotation":
            return Reaction(**base, reacts_to=_str(rel.get("event_id")), key=_str(rel.get("key")))
        return OtherEvent(**base)
    if etype == "m.room.encrypted":
        return Undecryptable(
            **base,
            session_id=_str(content.get("session_id")),
            device_id=_str(content.get("device_id")),
        )
    if etype == "m.room.redaction":
        redacts = raw.get("redacts") or content.get("redacts")
        return Redaction(**base, redacts=_str(redacts), reason=_opt_str(content.get("reason")))
    return OtherEvent(**base)


def _str(v: object) -> str:
    return v if isinstance(v, str) else ""


def _opt_str(v: object) -> str | None:
    return v if isinstance(v, str) else None
