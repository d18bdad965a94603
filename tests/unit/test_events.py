"""Raw events as the homeserver sends them (``tests/data/events``) mapped to the service's
types, and what the digest keeps of a message: no network, no database."""

from __future__ import annotations

import pytest

from bridge.sanitize import clean_html
from forum.events import (
    Membership,
    Message,
    Reaction,
    Redaction,
    Undecryptable,
    parse_room_event,
)
from forum.matrix import strip_reply_fallback
from tests.data import event

ROOM = "!topic:forum.test"


def test_a_reply_with_html_is_a_message_replying_to_its_original():
    ev = parse_room_event(ROOM, event("message_reply_html"))
    assert isinstance(ev, Message)
    assert (ev.room_id, ev.sender, ev.reply_to) == (
        ROOM,
        "@amina:forum.test",
        "$original:forum.test",
    )
    assert ev.replaces is None
    assert strip_reply_fallback(ev.body) == "Oui, et les clubs de lecture aussi."
    assert ev.formatted_body is not None
    kept = clean_html(ev.formatted_body)
    assert "<b>clubs</b>" in kept
    assert "<script" not in kept
    assert "mx-reply" not in kept


def test_an_edit_names_the_message_it_replaces():
    ev = parse_room_event(ROOM, event("edit"))
    assert isinstance(ev, Message)
    assert ev.replaces == "$original:forum.test"
    assert ev.new_content == {
        "msgtype": "m.text",
        "body": "Les clubs de lecture ont besoin de livres.",
    }


def test_reaction_redaction_and_departure():
    reaction = parse_room_event(ROOM, event("reaction"))
    assert isinstance(reaction, Reaction)
    assert (reaction.reacts_to, reaction.key) == ("$original:forum.test", "📰")
    redaction = parse_room_event(ROOM, event("redaction"))
    assert isinstance(redaction, Redaction)
    assert (redaction.redacts, redaction.reason) == ("$original:forum.test", "spam")
    left = parse_room_event(ROOM, event("member_left"))
    assert isinstance(left, Membership)
    assert (left.target, left.membership, left.prev_membership) == (
        "@kossi:forum.test",
        "leave",
        "join",
    )


@pytest.mark.parametrize("name", ["malformed"])
def test_malformed_events_are_dropped(name: str):
    assert parse_room_event(ROOM, event(name)) is None


def test_an_encrypted_event_not_decrypted_is_undecryptable():
    """What the gateway could not decrypt reaches the handlers as Undecryptable, naming
    the sender's device and session (the bots explain; the key is asked for)."""
    ev = parse_room_event("!dm:forum.test", event("encrypted"))
    assert isinstance(ev, Undecryptable)
    assert (ev.sender, ev.device_id) == ("@ama:forum.test", "RJYKSTBOIE")
    assert ev.session_id == "X3lUlvLELLYxeTx4yOVu6UDpasGEVO0Jbu+QFnm0cKQ"
    assert ev.relates_to == {"m.in_reply_to": {"event_id": "$question:forum.test"}}
