"""The moderators' preview before the weekly publication (issue #13, point 7): the key
points the summariser extracts are never published before a moderator saw them; a held
or removed quote or key point reaches no public output (page, feed, JSON, export)."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from croniter import croniter

from bridge.repositories import DigestStore
from tests.harness import (
    BASE_CONFIG,
    TOPIC,
    ForumStarter,
    TestClock,
    eventually,
    export_text,
    is_message,
    next_week_start,
)

pytestmark = pytest.mark.homeserver

MESSAGES = [
    "L'éducation des filles est la clé du développement de nos communautés rurales.",
    "Les écoles rurales manquent de moyens pour accueillir les filles. Il faut des cantines.",
    "Nous devons parler de l'éducation des filles avec les chefs des communautés rurales.",
    "Les cantines scolaires des écoles rurales gardent les filles à l'école toute l'année.",
]
QUOTE = "CITATION-RETENUE: les clubs de lecture des filles du réseau grandissent."
ITEM = re.compile(r"^\[([qk]\d+)\] (.+?) — ", re.MULTILINE)


def in_thread(room: str, root: str, start: str) -> Callable[[dict], bool]:
    def pred(e: dict) -> bool:
        relation = e.get("content", {}).get("m.relates_to") or {}
        return (
            e.get("room_id") == room
            and relation.get("rel_type") == "m.thread"
            and relation.get("event_id") == root
            and str(e["content"].get("body", "")).startswith(start)
        )

    return pred


def reply(body: str, to: str) -> dict:
    return {"msgtype": "m.text", "body": body, "m.relates_to": {"m.in_reply_to": {"event_id": to}}}


async def test_key_points_wait_for_the_moderators_preview(
    make_user, start_forum: ForumStarter, db_url: str, tmp_path: Path
):
    mod = await make_user("mod", display_name="Afi")
    amina = await make_user("amina", display_name="Amina")
    tz = BASE_CONFIG["digest"]["timezone"]
    schedule = BASE_CONFIG["digest"]["schedule"]
    now = datetime.now(UTC)
    # the publication of this week: next week's first scheduled time
    fire: datetime = croniter(schedule, next_week_start(now, tz)).get_next(datetime)
    clock = TestClock(fire - timedelta(hours=30) - now)
    export = tmp_path / "export"
    forum = await start_forum(
        "digest",
        moderator=mod,
        moderator_joins=("management", "announcements"),
        db_url=db_url,
        clock=clock,
        config={"digest": {"export_dir": str(export)}},
    )
    room, mgmt = forum.room(), forum.mgmt
    await forum.join(mod, room)
    await forum.join(amina, room)
    await forum.consent(amina)
    for text in MESSAGES:
        await amina.send_text(room, text)
    quoted = await amina.send_text(room, QUOTE)
    await mod.send(room, "m.room.message", reply("!digest", quoted))

    async def collected() -> bool:
        async with forum.ctx.db.sessionmaker() as s:
            mark = await DigestStore(s).highlight(quoted)
        stored = len(await forum.stored_bodies()) == len(MESSAGES) + 1
        return stored and mark is not None and mark.status == "ok"

    await eventually(collected, 20, "Amina's messages stored, the quote marked")
    assert await forum.digest.schedule_step(clock) > 0  # 30 h before: nothing yet

    # 23 h before the publication (preview_hours = 24 by default): the preview is posted
    # to the management room, an m.text that mentions the moderators
    mark = mod.mark()
    clock.offset += timedelta(hours=7)
    await forum.digest.schedule_step(clock)
    preview = await mod.wait_for(is_message(mgmt, forum.bot_id, "[k"), 15, after=mark)
    content = preview["content"]
    assert content["msgtype"] == "m.text"
    assert mod.user_id in content["m.mentions"]["user_ids"]
    body = content["body"]
    for command in ("!retenir", "!retirer", "!publier"):  # the forum's language: French
        assert command in body
    items = dict(ITEM.findall(body))
    quotes = [i for i in items if i.startswith("q")]
    keys = [i for i in items if i.startswith("k")]
    assert len(quotes) == 1, body
    assert QUOTE[:20] in items[quotes[0]]
    assert len(keys) >= 2, body
    removed, kept = items[keys[0]], items[keys[1]]

    # a moderator holds the quote and removes a key point: each is told in the room
    mark = mod.mark()
    await mod.send_text(mgmt, f"!retenir {quotes[0]}")
    held = await mod.wait_for(is_message(mgmt, forum.bot_id, quotes[0]), after=mark)
    assert mod.user_id in held["content"]["body"]
    # ... or reacts ❌ on the key point's own message in the preview's thread
    item = await mod.wait_for(in_thread(mgmt, preview["event_id"], f"[{keys[0]}]"))
    mark = mod.mark()
    cross = await mod.react(mgmt, item["event_id"], "❌")
    gone = await mod.wait_for(is_message(mgmt, forum.bot_id, keys[0]), after=mark)
    assert mod.user_id in gone["content"]["body"]
    # a ✋ taken back (a client's "remove reaction") puts its item back; a ❌ taken back
    # changes nothing, and says so
    other = await mod.wait_for(in_thread(mgmt, preview["event_id"], f"[{keys[1]}]"))
    mark = mod.mark()
    hand = await mod.react(mgmt, other["event_id"], "✋")
    await mod.wait_for(is_message(mgmt, forum.bot_id, keys[1]), after=mark)
    mark = mod.mark()
    await mod.redact(mgmt, hand)
    back = await mod.wait_for(is_message(mgmt, forum.bot_id, "revient"), after=mark)
    assert keys[1] in back["content"]["body"]
    mark = mod.mark()
    await mod.redact(mgmt, cross)
    await mod.wait_for(is_message(mgmt, forum.bot_id, "pour de bon"), after=mark)
    mark = mod.mark()
    await mod.send_text(mgmt, "!retenir k999999")  # bad input: a clear answer
    await mod.wait_for(is_message(mgmt, forum.bot_id, "k999999"), after=mark)

    # the scheduled time comes: nothing is published before a moderator releases it
    week = forum.week()
    mark = mod.mark()
    clock.offset += timedelta(hours=23, minutes=1)
    await forum.digest.schedule_step(clock)
    await mod.wait_for(is_message(mgmt, forum.bot_id, "!publier"), after=mark)
    status, _, _ = await forum.get(f"/fr/week/{week}/")
    assert status == 404

    mark = mod.mark()
    await mod.send_text(mgmt, "!publier")
    released = await mod.wait_for(is_message(mgmt, forum.bot_id, week), 20, after=mark)
    assert mod.user_id in released["content"]["body"]
    await mod.wait_for_text(forum.rooms["announcements"], f"week/{week}/", after=mark)

    # what the public sees: the kept key point, never the held quote or the removed point
    _, page, _ = await forum.get(f"/fr/week/{week}/")
    _, feed, _ = await forum.get("/fr/feed.atom")
    page, feed = html.unescape(page), html.unescape(feed)
    _, raw, _ = await forum.get("/api/digests.json")
    topic = next(t for t in json.loads(raw)["weeks"][0]["topics"] if t["slug"] == TOPIC)
    assert kept[:30] in page
    points = [kp["text"] for kp in topic["key_points"]]
    assert kept in points
    assert removed not in points
    assert topic["highlights"] == []

    async def exported() -> bool:
        return kept[:30] in html.unescape(export_text(export))

    await eventually(exported, 15, "the export refreshed")
    for output in (page, feed, raw, html.unescape(export_text(export))):
        assert "CITATION-RETENUE" not in output
        assert removed[:40] not in output


async def test_without_release_the_window_and_a_hold_keep_the_week_waiting(
    make_user, start_forum: ForumStarter
):
    """``require_release = false``: the week is published at the scheduled time only once
    its preview was posted ``preview_hours`` before; a moderator's ``!hold`` (the whole
    digest) keeps it waiting until ``!release``."""
    mod = await make_user("mod", display_name="Afi")
    tz = BASE_CONFIG["digest"]["timezone"]
    schedule = BASE_CONFIG["digest"]["schedule"]
    now = datetime.now(UTC)
    fire: datetime = croniter(schedule, next_week_start(now, tz)).get_next(datetime)
    clock = TestClock(fire - timedelta(hours=23) - now)  # the preview comes an hour late
    forum = await start_forum(
        "digest",
        moderator=mod,
        db_url=None,
        clock=clock,
        config={"digest": {"require_release": False, "preview_hours": 24}},
    )
    mgmt, week = forum.mgmt, forum.week()
    mark = mod.mark()
    await forum.digest.schedule_step(clock)
    preview = await mod.wait_for(is_message(mgmt, forum.bot_id, week), 15, after=mark)
    assert "Sans décision" in preview["content"]["body"]

    async def published() -> bool:
        status, _, _ = await forum.get(f"/en/week/{week}/")
        return status == 200

    # the scheduled time: the moderators have had 23 hours of their 24; nothing yet
    clock.offset += timedelta(hours=23, minutes=1)
    assert await forum.digest.schedule_step(clock) > 0
    assert not await published()
    mark = mod.mark()
    await mod.send_text(mgmt, "!hold")
    held = await mod.wait_for(is_message(mgmt, forum.bot_id, week), after=mark)
    assert mod.user_id in held["content"]["body"]

    # the window is over, but the digest is held: it waits, and the moderators are told
    mark = mod.mark()
    clock.offset += timedelta(hours=1)
    await forum.digest.schedule_step(clock)
    await mod.wait_for(is_message(mgmt, forum.bot_id, "!publier"), after=mark)
    assert not await published()
    mark = mod.mark()
    await mod.send_text(mgmt, "!apercu")  # the preview again, on demand
    again = await mod.wait_for(is_message(mgmt, forum.bot_id, "Rien à relire"), after=mark)
    assert week in again["content"]["body"]
    await mod.send_text(mgmt, "!release")
    await eventually(published, 20, "the week published on !release")
