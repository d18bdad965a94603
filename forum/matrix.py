"""Pure Matrix helpers: power levels decided from state events (room version 12 included),
identifiers and links. No I/O, no nio."""

from __future__ import annotations

import hashlib
import math
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Room versions where the creators have infinite power and are not in the users map.
CREATOR_POWER_VERSIONS = frozenset({"12"})

_USER_ID = re.compile(r"^@[^:\s]+:[^\s]+$")


def stable_txn_id(kind: str, *parts: str) -> str:
    """A transaction id that is the same each time it is derived from the same ``parts``:
    a message sent again with it (after a crash between sending it and recording it) is the
    same event for the homeserver, shown once."""
    key = "|".join(parts)
    return f"forum-{kind}-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def is_user_id(value: str) -> bool:
    return bool(_USER_ID.match(value))


def server_of(mxid: str) -> str:
    """The server part of a user id, room alias or v1-11 room id ('' when absent)."""
    _, sep, server = mxid.partition(":")
    return server if sep else ""


def matrix_to(target: str, event_id: str | None = None, via: Iterable[str] = ()) -> str:
    """A https://matrix.to link to a room, alias, user or event."""
    path = urllib.parse.quote(target, safe="@:!#")
    if event_id:
        path += "/" + urllib.parse.quote(event_id, safe="$")
    vias = [f"via={urllib.parse.quote(v, safe=':')}" for v in via]
    return f"https://matrix.to/#/{path}" + (("?" + "&".join(vias)) if vias else "")


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return default


@dataclass(frozen=True)
class PowerLevels:
    """The power levels of one room, read from its state events.

    In room version 12 the creator (and ``additional_creators``) have infinite power and
    must not appear in ``users``; earlier versions fall back to the creator at 100 when
    there is no power-levels event.
    """

    users: Mapping[str, int] = field(default_factory=dict)
    users_default: int = 0
    events: Mapping[str, int] = field(default_factory=dict)
    events_default: int = 0
    state_default: int = 50
    ban: int = 50
    kick: int = 50
    invite: int = 0
    redact: int = 50
    creators: frozenset[str] = frozenset()

    @classmethod
    def from_state(
        cls,
        power_levels: Mapping[str, Any] | None,
        create_event: Mapping[str, Any] | None,
    ) -> PowerLevels:
        """Build from the content of ``m.room.power_levels`` and the whole create event."""
        create_content = (create_event or {}).get("content") or {}
        version = str(create_content.get("room_version", "1"))
        creator = (create_event or {}).get("sender") or create_content.get("creator")
        creators: set[str] = set()
        if version in CREATOR_POWER_VERSIONS:
            if isinstance(creator, str):
                creators.add(creator)
            extra = create_content.get("additional_creators")
            if isinstance(extra, list):
                creators.update(u for u in extra if isinstance(u, str))
        if power_levels is None:
            users = {creator: 100} if isinstance(creator, str) and not creators else {}
            return cls(
                users=users, state_default=0 if not users else 50, creators=frozenset(creators)
            )
        pl = power_levels
        users_raw: Mapping[str, Any] = pl["users"] if isinstance(pl.get("users"), dict) else {}
        events_raw: Mapping[str, Any] = pl["events"] if isinstance(pl.get("events"), dict) else {}
        return cls(
            users={u: _int(v, 0) for u, v in users_raw.items() if isinstance(u, str)},
            users_default=_int(pl.get("users_default"), 0),
            events={t: _int(v, 0) for t, v in events_raw.items() if isinstance(t, str)},
            events_default=_int(pl.get("events_default"), 0),
            state_default=_int(pl.get("state_default"), 50),
            ban=_int(pl.get("ban"), 50),
            kick=_int(pl.get("kick"), 50),
            invite=_int(pl.get("invite"), 0),
            redact=_int(pl.get("redact"), 50),
            creators=frozenset(creators),
        )

    def level(self, user_id: str) -> float:
        if user_id in self.creators:
            return math.inf
        return self.users.get(user_id, self.users_default)

    def event_level(self, event_type: str, *, state: bool) -> int:
        if event_type in self.events:
            return self.events[event_type]
        return self.state_default if state else self.events_default

    def can_send(self, user_id: str, event_type: str, *, state: bool = False) -> bool:
        return self.level(user_id) >= self.event_level(event_type, state=state)

    def can(self, user_id: str, action: str) -> bool:
        """``action`` is one of ban, kick, invite, redact."""
        required = {
            "ban": self.ban,
            "kick": self.kick,
            "invite": self.invite,
            "redact": self.redact,
        }[action]
        return self.level(user_id) >= required


def strip_reply_fallback(body: str) -> str:
    """Drop the ``> quoted`` lines Matrix clients put before a reply's text."""
    lines = body.split("\n")
    if not lines or not lines[0].startswith("> "):
        return body
    i = 0
    while i < len(lines) and lines[i].startswith(">"):
        i += 1
    return "\n".join(lines[i:]).lstrip("\n")
