"""A sync batch split into lanes: events that share a room or a person stay in one lane,
in their order; the bot's own events tie rooms, not lanes."""

from __future__ import annotations

import itertools

from forum.events import Invite, Membership, Message, RoomEvent
from forum.gateway.lanes import split_lanes

BOT = "@moderation:forum.test"
_ids = itertools.count()


def message(room: str, sender: str) -> Message:
    n = next(_ids)
    return Message(room, f"$m{n}", sender, "m.room.message", n, {}, {}, body=f"m{n}")


def member(room: str, sender: str, target: str, membership: str) -> Membership:
    n = next(_ids)
    return Membership(
        room, f"$s{n}", sender, "m.room.member", n, {}, {}, target=target, membership=membership
    )


def lanes_of(events: list[RoomEvent | Invite]) -> list[list[str]]:
    return [
        [ev.event_id for ev, _ in lane] for lane in split_lanes([(e, None) for e in events], BOT)
    ]


def test_different_rooms_and_people_are_different_lanes():
    a, b, c = message("!a", "@ama"), message("!b", "@kofi"), message("!c", "@esi")
    assert lanes_of([a, b, c]) == [[a.event_id], [b.event_id], [c.event_id]]


def test_a_room_keeps_its_order_in_one_lane():
    events = [message("!a", "@ama"), message("!b", "@kofi"), message("!a", "@esi")]
    assert lanes_of(events) == [[events[0].event_id, events[2].event_id], [events[1].event_id]]


def test_a_person_in_two_rooms_ties_them_and_the_rooms_bring_their_other_people():
    first = message("!a", "@ama")
    other = message("!b", "@kofi")
    again = message("!b", "@ama")  # Ama's second room ties !a and !b (and Kofi with them)
    alone = message("!c", "@esi")
    assert lanes_of([first, other, again, alone]) == [
        [first.event_id, other.event_id, again.event_id],
        [alone.event_id],
    ]


def test_a_membership_ties_the_member_it_is_about():
    ban = member("!a", "@mod", "@spammer", "ban")  # the moderator acts on the spammer
    said = message("!b", "@spammer")
    assert lanes_of([ban, said]) == [[ban.event_id, said.event_id]]


def test_memberships_at_one_door_are_lanes_of_their_own_people():
    knocks = [member("!space", p, p, "knock") for p in ("@ama", "@kofi", "@esi")]
    said = message("!dm", "@kofi")
    assert lanes_of([*knocks, said]) == [
        [knocks[0].event_id],
        [knocks[1].event_id, said.event_id],
        [knocks[2].event_id],
    ]


def test_the_bots_own_events_do_not_tie_rooms():
    own_a, own_b = message("!a", BOT), message("!b", BOT)
    banned = member("!c", BOT, "@spammer", "ban")
    said = message("!d", "@spammer")
    assert lanes_of([own_a, own_b, banned, said]) == [
        [banned.event_id, said.event_id],  # a membership's lane first
        [own_a.event_id],
        [own_b.event_id],
    ]


def test_an_invite_is_in_its_room_and_its_inviters_lane():
    invite = Invite(room_id="!dm", sender="@ama", is_direct=True, event_id="$invite")
    said = message("!a", "@ama")
    assert lanes_of([invite, said]) == [["$invite", said.event_id]]


def test_lanes_with_a_membership_come_before_a_backlog_of_messages():
    """A knock behind messages of many rooms in one batch is taken first (with 4 lanes at
    once, it used to wait for the message lanes before it: the join-wave protection saw
    the knocks of a wave after the load's backlog)."""
    backlog = [message(f"!room{i}", f"@sender{i}") for i in range(6)]
    knock = member("!space", "@newcomer", "@newcomer", "knock")
    later = message("!room7", "@sender7")
    lanes = lanes_of([*backlog, knock, later])
    assert lanes[0] == [knock.event_id]
    assert lanes[1:] == [[e.event_id] for e in [*backlog, later]]
