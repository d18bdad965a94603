"""The scheduler (cron + time zone) builds last week's digest, publishes it and posts a
short summary with the link in the announcements room; the CLI builds and exports."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from sqlalchemy import delete

from bridge.cli import add_commands
from bridge.models import DigestActivity, DigestMessage
from bridge.service import backfill
from bridge.weeks import previous_week
from tests.harness import BASE_CONFIG, TOPIC, ForumStarter, TestClock, eventually, operator_config

pytestmark = pytest.mark.homeserver


async def test_scheduled_build_posts_in_announcements(make_user, start_forum: ForumStarter):
    mod = await make_user("mod")
    schedule = BASE_CONFIG["digest"]["schedule"]
    tz = ZoneInfo(BASE_CONFIG["digest"]["timezone"])
    # The service's clock set a few seconds before the next scheduled time: the
    # schedule loop the service runs (schedules on) fires soon after the start.
    fire = croniter(schedule, datetime.now(tz)).get_next(datetime)
    clock = TestClock.just_before(fire, by=timedelta(seconds=8))
    forum = await start_forum(
        "digest",
        moderator=mod,
        moderator_joins=(),
        # published at the scheduled time without a moderator's release (the preview is
        # tested in test_digest_preview)
        config={
            "web": {"public_url": "https://digest.example.org"},
            "digest": {"require_release": False, "preview_hours": 0},
        },
        clock=clock,
        schedules=True,
    )
    announcements = forum.rooms["announcements"]
    await forum.join(mod, announcements)
    settings = forum.settings
    week = previous_week(fire, settings.digest.timezone)
    event = await mod.wait_for_text(announcements, f"week/{week}/", timeout=30)
    body = event["content"]["body"]
    assert f"https://digest.example.org/fr/week/{week}/" in body
    assert f"Résumé de la semaine {week}" in body
    assert f"Digest of week {week}" in body
    assert event["sender"] == settings.moderation_bot_id
    assert (
        f'href="https://digest.example.org/en/week/{week}/"' in event["content"]["formatted_body"]
    )
    status, _, _ = await forum.get(f"/fr/week/{week}/")
    assert status == 200


async def test_cli_build_and_export(
    make_user, start_forum: ForumStarter, tmp_path, monkeypatch, capsys
):
    """In a time zone far from UTC (UTC+14): weeks are the forum's, not the server's."""
    amina = await make_user("amina", display_name="Amina")
    forum = await start_forum("digest", config={"digest": {"timezone": "Pacific/Kiritimati"}})
    await forum.join(amina)
    await forum.consent(amina)
    await amina.send_text(forum.room(), "CLI: les jeunes du réseau préparent une campagne.")

    async def stored() -> bool:
        return len(await forum.stored_bodies()) == 1

    await eventually(stored, 20, "message stored")
    config = operator_config(forum, tmp_path / "forum.toml")
    monkeypatch.setenv("FORUM_HOME", str(forum.service.home))

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_commands(parser.add_subparsers(dest="command"))
    week = forum.week()
    # Moderators release a week after its preview (digest.require_release, the default):
    # the operator's build refuses a week nobody released, and says how to go on.
    refused = parser.parse_args(["--config", str(config), "digest", "build", "--week", week])
    assert await refused.func(refused) == 1
    err = capsys.readouterr().err
    for hint in ("!publier", "!release", "--without-review"):
        assert hint in err
    status, _, _ = await forum.get(f"/fr/week/{week}/")
    assert status == 404, "a refused build published the week"
    args = parser.parse_args(
        ["--config", str(config), "digest", "build", "--week", week, "--json", "--without-review"]
    )
    assert await args.func(args) == 0
    built = json.loads(capsys.readouterr().out)
    topic = next(t for t in built["topics"] if t["slug"] == TOPIC)
    assert built["week"] == week
    assert topic["messages"] == 1
    assert topic["participants"] == 1

    # --announce posts the summary in the announcements room, as the schedule does, from
    # the operator's shell (the bot's stored session; no password in the file).
    announcements = forum.ctx.rooms["announcements"]
    await forum.join(amina, announcements)
    mark = amina.mark()
    args = parser.parse_args(
        [
            "--config",
            str(config),
            "digest",
            "build",
            "--week",
            week,
            "--announce",
            "--without-review",
        ]
    )
    assert await args.func(args) == 0
    capsys.readouterr()
    posted = await amina.wait_for_text(announcements, f"/fr/week/{week}/", after=mark)
    assert f"Résumé de la semaine {week}" in posted["content"]["body"]
    assert posted["sender"] == forum.ctx.settings.moderation_bot_id

    # Without --week: the last complete week, and a pointer to the week in progress.
    args = parser.parse_args(["--config", str(config), "digest", "build", "--without-review"])
    assert await args.func(args) == 0
    text = capsys.readouterr().out
    assert f"the week in progress is {week}: --week {week}" in text

    bad = parser.parse_args(["--config", str(config), "digest", "build", "--week", "2026-W60"])
    assert await bad.func(bad) == 2
    assert "2026-W60" in capsys.readouterr().err

    out = tmp_path / "export"
    args = parser.parse_args(["--config", str(config), "digest", "export", str(out)])
    assert await args.func(args) == 0
    page = (out / "fr" / "week" / week / "index.html").read_text(encoding="utf-8")
    assert "les jeunes du réseau" in page
    assert (out / "index.html").exists()
    assert (out / "static" / "style.css").exists()


async def test_backfill_reads_history_back_to_the_start_date(make_user, start_forum: ForumStarter):
    amina = await make_user("amina", display_name="Amina")
    bruno = await make_user("bruno")
    forum = await start_forum("digest")
    await forum.join(amina)
    await forum.join(bruno)
    await forum.consent(amina)
    texts = [f"HISTOIRE-{i}: les clubs de lecture du réseau." for i in range(3)]
    for text in texts:
        await amina.send_text(forum.room(), text)
    await bruno.send_text(forum.room(), "BRUNO-HISTOIRE: pas de consentement.")

    async def collected() -> bool:
        return len(await forum.stored_bodies()) == 3

    await eventually(collected, 20, "live collection")
    # A store that missed the history (first start): empty it, then backfill.
    async with forum.ctx.db.sessionmaker() as s, s.begin():
        await s.execute(delete(DigestMessage))
        await s.execute(delete(DigestActivity))
    since = datetime.now(UTC) - timedelta(days=1)
    handled = await backfill(
        forum.digest.collector, forum.ctx.moderation_gateway, [forum.room()], since, progress=True
    )
    assert handled >= 4
    stored = " ".join(await forum.stored_bodies())
    assert all(t in stored for t in texts)
    assert "BRUNO" not in stored
    week = forum.week()
    await forum.digest.publish(week)
    _, raw, _ = await forum.get("/api/digests.json")
    topic = next(t for t in json.loads(raw)["weeks"][0]["topics"] if t["slug"] == TOPIC)
    assert topic["messages"] == 4
    assert topic["participants"] == 2
