"""Protections against a real Synapse: each firing and not firing, graduated steps and
their reset, dry run, join waves. Moderators are never targets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio

from forum.errors import Forbidden
from forum.storage.models import utcnow
from moderation.bot.repositories import Audit, Strikes
from tests.harness import Forum, ForumStarter, eventually
from tests.matrix_user import MatrixRequestError, TestUser

pytestmark = pytest.mark.homeserver


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def forum(start_module_forum: ForumStarter) -> Forum:
    return await start_module_forum("moderation", moderator=True, moderator_joins="*")


async def old_member(forum: Forum, name: str) -> TestUser:
    """A member whose first join is two days old (not "new")."""
    user = await forum.member(name)
    from moderation.bot.models import FirstJoin

    async with forum.ctx.db.sessionmaker() as s, s.begin():
        row = await s.get(FirstJoin, user.user_id)
        assert row is not None
        row.joined_at = utcnow() - timedelta(days=2)
    return user


async def body_of(user: TestUser, room: str, event_id: str) -> str | None:
    ev = await user.request("GET", f"/_matrix/client/v3/rooms/{room}/event/{event_id}")
    return ev["content"].get("body")


async def report_about(forum: Forum, user_id: str, after: int, text: str = "") -> str:
    ev = await forum.management_message(user_id, text, after=after)
    return str(ev["content"]["formatted_body"])


async def test_flood_redacts_every_message_and_warns(forum: Forum):
    flooder = await old_member(forum, "flooder")
    mark, fmark = forum.mod.mark(), flooder.mark()
    sent = [await flooder.send_text(forum.topic, f"pub {i} <b>x</b>") for i in range(5)]
    await forum.wait_redacted(sent, after=mark)
    html = await report_about(forum, flooder.user_id, mark, "Protection")
    assert "<blockquote>pub 4 &lt;b&gt;x&lt;/b&gt;</blockquote>" in html
    assert "dans Droits des enfants ;" in html  # the room by its name, not a key
    assert "https://matrix.to/#/" in html
    assert sent[-1].replace("$", "") in html.replace("%24", "")
    dm = await forum.dm_room(flooder, after=fmark)
    await flooder.wait_for_text(dm, "Modération automatique", after=fmark)
    assert await forum.power(forum.topic, flooder.user_id) == 0  # first step: a warning


async def test_moderator_who_floods_is_never_touched(forum: Forum):
    mark = forum.mod.mark()
    mine = [await forum.mod.send_text(forum.topic, f"annonce {i} arnaque") for i in range(7)]
    # A member's offence afterwards is the sync point: by then the moderator's were seen.
    member = await old_member(forum, "sync")
    bad = await member.send_text(forum.topic, "une arnaque")
    await forum.wait_redacted([bad], after=mark)
    await report_about(forum, member.user_id, mark)
    for ev in mine:
        assert (await body_of(forum.mod, forum.topic, ev) or "").startswith("annonce")
    assert await forum.power(forum.topic, forum.mod.user_id) == 50
    async with forum.ctx.db.sessionmaker() as s:
        assert await Audit(s).entries(forum.mod.user_id) == [] or all(
            e.target != forum.mod.user_id for e in await Audit(s).entries(forum.mod.user_id)
        )


async def test_mention_spam(forum: Forum):
    person = await old_member(forum, "mentions")
    others = [f"@someone{i}:{forum.hs.server_name}" for i in range(4)]
    mark = forum.mod.mark()
    ok = await person.send_text(forum.topic, "bonjour " + " ".join(others[:3]))
    spam = await person.send_text(forum.topic, "regardez " + " ".join(others))
    await forum.wait_redacted([spam], after=mark)
    await report_about(forum, person.user_id, mark, "mentions")
    assert (await body_of(person, forum.topic, ok) or "").startswith("bonjour")


async def test_banned_words_ignore_case_and_accents_on_word_boundaries(forum: Forum):
    person = await old_member(forum, "words")
    mark = forum.mod.mark()
    fine = [
        await person.send_text(forum.topic, "les arnaqueurs et idiotismes ne comptent pas"),
        await person.send_text(forum.topic, "tout va bien"),
    ]
    bad = await person.send_text(forum.topic, "Quelle ARNÂQUE, vraiment")
    await forum.wait_redacted([bad], after=mark)
    await report_about(forum, person.user_id, mark, "mot interdit")
    for ev in fine:
        assert await body_of(person, forum.topic, ev)


async def test_banned_word_only_in_formatted_body_or_in_an_edit_is_caught(forum: Forum):
    """What Element shows is ``formatted_body`` and, for an edit, ``m.new_content``: a
    banned word there alone is an offence as much as in ``body``."""
    person = await old_member(forum, "hidden")
    mark = forum.mod.mark()
    fine = await person.send_text(forum.topic, "bonjour", "<p>bonjour</p>")
    formatted = await person.send_text(forum.topic, "bonjour", "<p>Quelle <b>ARNÂQUE</b></p>")
    edit = await person.send(
        forum.topic,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "* bonjour",
            "m.new_content": {"msgtype": "m.text", "body": "bonjour, idiot"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": fine},
        },
    )
    await forum.wait_redacted([formatted, edit], after=mark)
    assert await body_of(person, forum.topic, fine) == "bonjour"


async def test_links_and_media_from_new_members_only(forum: Forum):
    newcomer = await forum.member("newcomer")
    veteran = await old_member(forum, "veteran")
    mark = forum.mod.mark()
    kept = await veteran.send_text(forum.topic, "voir https://example.org/guide")
    text_ok = await newcomer.send_text(forum.topic, "bonjour à toutes et tous")
    link = await newcomer.send_text(forum.topic, "gagnez vite sur https://spam.example/x")
    media = await newcomer.send(
        forum.topic, "m.room.message", {"msgtype": "m.image", "body": "pic.png", "url": "mxc://x/y"}
    )
    await forum.wait_redacted([link, media], after=mark)
    await report_about(forum, newcomer.user_id, mark, "nouveau membre")
    assert await body_of(veteran, forum.topic, kept)
    assert await body_of(newcomer, forum.topic, text_ok)


async def test_graduated_steps_and_reset_after_quiet_period(forum: Forum):
    person = await old_member(forum, "steps")
    mark = forum.mod.mark()
    first = await person.send_text(forum.topic, "idiot")
    await forum.wait_redacted([first], after=mark)
    await report_about(forum, person.user_id, mark, "warn")
    mark = forum.mod.mark()
    second = await person.send_text(forum.topic, "IDIOT encore")
    await forum.wait_redacted([second], after=mark)
    await report_about(forum, person.user_id, mark, "!unmute")
    for room in forum.forum_rooms:
        assert await forum.power(room, person.user_id) == -1
    with pytest.raises(MatrixRequestError):
        await person.send_text(forum.topic, "muet")
    await forum.command(f"!unmute {person.user_id}")
    mark = forum.mod.mark()
    await person.send_text(forum.topic, "toujours idiot")
    await forum.wait_membership(person.user_id, "ban", after=mark)
    await report_about(forum, person.user_id, mark, "!unban")

    # Another person: after a quiet period the step goes back to a warning.
    calm = await old_member(forum, "calm")
    mark = forum.mod.mark()
    await calm.send_text(forum.topic, "arnaque")
    await report_about(forum, calm.user_id, mark, "warn")
    async with forum.ctx.db.sessionmaker() as s, s.begin():
        await Strikes(s).set(calm.user_id, 1, utcnow() - timedelta(hours=25))
    mark = forum.mod.mark()
    await calm.send_text(forum.topic, "arnaque")
    await report_about(forum, calm.user_id, mark, "warn")
    assert await forum.power(forum.topic, calm.user_id) == 0


async def test_dry_run_reports_without_acting(forum: Forum):
    person = await old_member(forum, "dry")
    await forum.command("!dry-run on")
    try:
        mark = forum.mod.mark()
        ev = await person.send_text(forum.topic, "arnaque !")
        html = await report_about(forum, person.user_id, mark, "[simulation]")
        assert "arnaque" in html
        assert ": warn." in html
        assert await body_of(person, forum.topic, ev) == "arnaque !"
        # A second offence shows the next step of the graduation, still without acting.
        mark = forum.mod.mark()
        await person.send_text(forum.topic, "encore une arnaque")
        html = await report_about(forum, person.user_id, mark, "[simulation]")
        assert ": mute:1h." in html
    finally:
        await forum.command("!dry-run off")
    async with forum.ctx.db.sessionmaker() as s:
        entries = await Audit(s).entries(person.user_id)
        stored = await Strikes(s).get(person.user_id)
    assert len(entries) == 2
    assert all(e.dry_run for e in entries)
    assert stored is None  # the simulated tally is never stored
    assert await forum.power(forum.topic, person.user_id) == 0  # not muted


@contextlib.asynccontextmanager
async def wave_of_three(forum: Forum) -> AsyncIterator[int]:
    """Three arrivals within a minute make a join wave; afterwards the threshold is high
    again and joins are unlocked. Yields the moderator's mark before the wave."""
    bot = forum.bot
    bot.cfg = bot.cfg.model_copy(update={"join_wave_joins": 3, "join_wave_seconds": 60})
    bot.join_wave.join_times.clear()
    try:
        yield forum.mod.mark()
    finally:
        bot.cfg = bot.cfg.model_copy(update={"join_wave_joins": 50})
        await forum.command("!unlock-joins")


async def test_a_knock_wave_locks_joins_too(forum: Forum):
    """A wave of knocks on the Space (how newcomers arrive) is a join wave: the topic
    rooms become knock-only (found by the scale benchmark: 200 knocks in a minute never
    switched them, the protection counted joins only)."""
    async with wave_of_three(forum) as mark:
        people = [await forum.user(f"knockwave{i}") for i in range(3)]
        await asyncio.gather(
            *(p.knock(forum.ids["space"], "Bonjour", via=[forum.hs.server_name]) for p in people)
        )
        await report_about(forum, "", mark, "!unlock-joins")
        rules = await forum.mod.get_state_event(forum.topic, "m.room.join_rules")
        assert rules["join_rule"] == "knock"
    rules = await forum.mod.get_state_event(forum.topic, "m.room.join_rules")
    assert rules["join_rule"] == "knock_restricted"


async def test_a_room_the_wave_could_not_switch_is_named_to_the_moderators(
    forum: Forum, monkeypatch: pytest.MonkeyPatch
):
    gateway = forum.bot.locks.actions.gateway
    real = gateway.put_state

    async def refused_in_topic(room: str, kind: str, content: dict, state_key: str = "") -> str:
        if kind == "m.room.join_rules" and room == forum.topic:
            raise Forbidden("refused (test)", status=403, errcode="M_FORBIDDEN")
        return await real(room, kind, content, state_key)

    monkeypatch.setattr(gateway, "put_state", refused_in_topic)
    async with wave_of_three(forum) as mark:
        people = [await forum.user(f"refusedwave{i}") for i in range(3)]
        await asyncio.gather(
            *(p.knock(forum.ids["space"], "Bonjour", via=[forum.hs.server_name]) for p in people)
        )
        said = await report_about(forum, "", mark, "!unlock-joins")
        assert f"Impossible de changer : {forum.bot.management.room_label(forum.topic)}." in said
        others = [r for r in forum.bot.actions.topic_rooms if r != forum.topic]
        assert others
        for room in others:
            rules = await forum.mod.get_state_event(room, "m.room.join_rules")
            assert rules["join_rule"] == "knock"
        monkeypatch.undo()


async def test_a_join_lock_cut_short_is_recorded_so_a_restart_finishes_it(
    forum: Forum, monkeypatch: pytest.MonkeyPatch
):
    """The service dies while switching the topic rooms (one switched, the others not yet):
    the lock was recorded before the first switch, so a start (or a standby taking over)
    finishes it and ``!unlock-joins`` restores every room."""
    locks = forum.bot.locks
    gateway = locks.actions.gateway
    real = gateway.put_state
    started: list[str] = []
    switched: list[str] = []

    async def dies_after_one(room: str, kind: str, content: dict, state_key: str = "") -> str:
        if kind == "m.room.join_rules":
            started.append(room)
            if len(started) > 1:
                await asyncio.Event().wait()  # the process is gone
        out = await real(room, kind, content, state_key)
        switched.append(room)
        return out

    monkeypatch.setattr(gateway, "put_state", dies_after_one)
    cut_short = asyncio.ensure_future(locks.lock_joins())

    async def one_switched() -> bool:
        return bool(switched)

    await eventually(one_switched, 20, "the first room switched")
    cut_short.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cut_short
    monkeypatch.undo()
    try:
        assert await locks.joins_locked()  # the lock is on record
        await locks.reapply_locks()  # what a start does
        for room in forum.bot.actions.topic_rooms:
            rules = await forum.mod.get_state_event(room, "m.room.join_rules")
            assert rules["join_rule"] == "knock"
    finally:
        await forum.command("!unlock-joins")
    for room in forum.bot.actions.topic_rooms:
        rules = await forum.mod.get_state_event(room, "m.room.join_rules")
        assert rules["join_rule"] == "knock_restricted"


async def test_join_wave_locks_joins_until_unlocked(forum: Forum):
    async with wave_of_three(forum) as mark:
        people = [await forum.user(f"wave{i}") for i in range(3)]
        for p in people:
            await forum.ctx.moderation_gateway.invite(forum.ids["space"], p.user_id)
        await asyncio.gather(
            *(p.join(forum.ids["space"], via=[forum.hs.server_name]) for p in people)
        )
        await report_about(forum, "", mark, "!unlock-joins")
        rules = await forum.mod.get_state_event(forum.topic, "m.room.join_rules")
        assert rules["join_rule"] == "knock"
        late = await forum.user("late")
        await forum.ctx.moderation_gateway.invite(forum.ids["space"], late.user_id)
        await late.join(forum.ids["space"], via=[forum.hs.server_name])
        with pytest.raises(MatrixRequestError):
            await late.join(forum.topic, via=[forum.hs.server_name])
    rules = await forum.mod.get_state_event(forum.topic, "m.room.join_rules")
    assert rules["join_rule"] == "knock_restricted"
    await late.join(forum.topic, via=[forum.hs.server_name])
