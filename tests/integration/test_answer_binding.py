"""An answer binds to one question (issue #10, points 1 and 2): by its reply relation or by
the reaction's target; a bare answer only when exactly one question is pending in that DM
(across features); otherwise the bot asks which one and records nothing. No answer is
ever consumed by two questions."""

from __future__ import annotations

import copy

import pytest

from bridge.models import QuotePermission
from tests.harness import Forum, ForumStarter, config_dir_with_charters, eventually
from tests.matrix_user import TestUser

pytestmark = pytest.mark.homeserver


def reply(body: str, to: str) -> dict:
    return {"msgtype": "m.text", "body": body, "m.relates_to": {"m.in_reply_to": {"event_id": to}}}


async def granted(forum: Forum, target: str) -> bool | None:
    async with forum.ctx.db.sessionmaker() as s:
        row = await s.get(QuotePermission, target)
        assert row is not None, "the author was asked"
        return row.granted


async def mark_and_wait_question(
    forum: Forum, person: TestUser, room: str, dm: str, text: str
) -> tuple[str, dict]:
    """``person`` posts ``text`` in ``room``, the moderator marks it 📰; returns the
    message's id and the quote question in the DM."""
    target = await person.send_text(room, text)
    mark = person.mark()
    await forum.mod.react(room, target, "📰")
    question = await forum.wait_bot_text(person, dm, text, after=mark)
    return target, question


async def test_reply_and_reaction_bind_to_their_question(start_forum: ForumStarter, make_user):
    forum = await start_forum("membership", "digest", moderator=True, moderator_joins=())
    alice = await make_user("alice", display_name="Alice")
    dm = await forum.admit(alice, publication=False)
    room = forum.room()
    await forum.join(alice, room)
    await forum.join(forum.mod, room)
    a, _ = await mark_and_wait_question(forum, alice, room, dm, "MESSAGE-A: premier message")
    b, q_b = await mark_and_wait_question(forum, alice, room, dm, "MESSAGE-B: second message")

    # "oui" in reply to the question about B: B is granted, A still waits.
    mark = alice.mark()
    await alice.send(dm, "m.room.message", reply("oui", q_b["event_id"]))
    await forum.wait_bot_text(alice, dm, "Merci", after=mark)
    await eventually(lambda: _is(forum, b, True), 10, "B granted")
    assert await granted(forum, a) is None
    assert "MESSAGE-B" in " ".join(await forum.stored_bodies())
    assert "MESSAGE-A" not in " ".join(await forum.stored_bodies())

    # "oui" again in reply to the answered question: told so, nothing recorded.
    mark = alice.mark()
    await alice.send(dm, "m.room.message", reply("oui", q_b["event_id"]))
    await forum.wait_bot_text(alice, dm, "ne répond à aucune question", after=mark)
    assert await granted(forum, a) is None

    # A 👍 on the question about C (A still pending): C is granted, A still waits.
    c, q_c = await mark_and_wait_question(forum, alice, room, dm, "MESSAGE-C: troisième")
    mark = alice.mark()
    await alice.react(dm, q_c["event_id"], "👍")
    await forum.wait_bot_text(alice, dm, "Merci", after=mark)
    await eventually(lambda: _is(forum, c, True), 10, "C granted")
    assert await granted(forum, a) is None


async def _is(forum: Forum, target: str, value: bool | None) -> bool:
    return await granted(forum, target) is value


async def test_bare_answer_with_two_questions_asks_which(
    start_forum: ForumStarter, make_user, tmp_path
):
    config_dir = config_dir_with_charters(tmp_path / "config", versions=(1, 2))
    home = tmp_path / "home"
    first = await start_forum(
        "membership", "digest", moderator=True, moderator_joins=(), home=home, config_dir=config_dir
    )
    data, mod = first.data, first.mod
    try:
        alice = await make_user("alice", display_name="Alice")
        dm = await first.admit(alice, publication=False)
        room = first.room()
        await first.join(alice, room)
        await first.join(mod, room)
    finally:
        await start_forum.stop(first)

    v2 = copy.deepcopy(data)
    v2["membership"]["charter"].update({"version": 2, "grace_days": 30, "on_expiry": "mute"})
    mark = alice.mark()
    forum = await start_forum(
        "membership", "digest", data=v2, home=home, config_dir=config_dir, moderator=mod
    )
    charter_q = await forum.wait_bot_text(alice, dm, "La charte a changé", after=mark)
    target, quote_q = await mark_and_wait_question(
        forum, alice, room, dm, "MESSAGE-D: une phrase à citer"
    )

    # A bare "oui": two questions wait, the bot asks which one and records nothing.
    mark = alice.mark()
    await alice.send_text(dm, "oui")
    which = await forum.wait_bot_text(alice, dm, "Plusieurs questions", after=mark)
    body = which["content"]["body"]
    assert "charte" in body, body
    assert "citer" in body, body
    assert "Merci" not in body
    await forum.outbox_idle()
    charters = [
        r.charter_version for r in await forum.history(alice.user_id) if r.scope == "charter"
    ]
    assert charters == [1]
    assert await granted(forum, target) is None
    assert not [
        e
        for e in alice.events[mark:]
        if e.get("sender") == forum.membership_bot_id
        and any(
            n in str(e.get("content", {}).get("body", ""))
            for n in ("version 2 est enregistrée", "Merci")
        )
    ]

    # A reply to the charter question accepts the charter only.
    mark = alice.mark()
    await alice.send(dm, "m.room.message", reply("J'accepte", charter_q["event_id"]))
    await forum.wait_bot_text(alice, dm, "version 2 est enregistrée", after=mark)
    charters = [
        r.charter_version for r in await forum.history(alice.user_id) if r.scope == "charter"
    ]
    assert charters == [1, 2]
    assert await granted(forum, target) is None

    # Now one question waits: a bare "oui" answers it.
    mark = alice.mark()
    await alice.send_text(dm, "oui")
    await forum.wait_bot_text(alice, dm, "Merci", after=mark)
    await eventually(lambda: _is(forum, target, True), 10, "the quote granted")
    assert quote_q["event_id"]
