"""Lanes: the events of one sync batch split into groups that can be handled side by side.

Two events share a lane when they are in the same room or concern the same person (the
sender; for a membership, also the member it is about; a membership is tied to its
people, not to its room). Inside a lane the homeserver's order is kept, so a room's
events and a person's events are handled in the order they happened (a message before
its redaction, a knock before the answer to the charter, a join before a message); two
lanes share neither a room nor a person, so no handler's per-room or per-person state is
touched from two lanes at once. The account's own events join rooms, not lanes: the bot
acting in every room would otherwise tie them all into one.

Handling a batch one event after another never gave more than this: a sync response
groups the events by room, so the order between two rooms was already not the order in
which they happened.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from forum.events import Invite, Membership, RoomEvent

T = TypeVar("T")


def lane_keys(ev: RoomEvent | Invite, own: str) -> list[str]:
    """The room and the people an event ties its lane to. A membership (a join, a knock,
    a ban...) is about a person: it ties the member and the sender, not the room, so that
    a wave of knocks at one door is answered side by side."""
    people = {ev.sender}
    if isinstance(ev, Membership):
        people.add(ev.target)
    keys = sorted(f"person {p}" for p in people if p and p != own)
    if not keys or not isinstance(ev, Membership):
        keys.insert(0, f"room {ev.room_id}")
    return keys


def split_lanes(
    items: Sequence[tuple[RoomEvent | Invite, T]], own: str
) -> list[list[tuple[RoomEvent | Invite, T]]]:
    """``items`` (an event and what goes with it) in lanes: each lane in the items' order;
    the lanes that hold a membership (a knock, a join, a ban...) first, then the others,
    each group in the order of its lanes' first items. Arrivals are thus taken ahead of a
    backlog of messages in the same batch: the join-wave protection counts them sooner,
    and a newcomer is answered sooner."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]  # path halving
            key = parent[key]
        return key

    firsts: list[str] = []
    for ev, _ in items:
        keys = lane_keys(ev, own)
        firsts.append(keys[0])
        head = root(keys[0])
        for key in keys[1:]:
            other = root(key)
            if other != head:
                parent[other] = head
    lanes: dict[str, list[tuple[RoomEvent | Invite, T]]] = {}
    for item, first in zip(items, firsts, strict=True):
        lanes.setdefault(root(first), []).append(item)
    return sorted(  # stable: the lanes' own order within each group
        lanes.values(), key=lambda lane: not any(isinstance(ev, Membership) for ev, _ in lane)
    )
