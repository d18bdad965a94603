"""Reports by every path (a reply in a room, a DM to the bot, the homeserver's report
API read through the admin API) become case cards that moderators act on with reactions
or commands; the reporter is never disclosed to the reported person."""

from __future__ import annotations

import re

import pytest
import pytest_asyncio

from moderation.bot.repositories import Cases
from tests.harness import Forum, ForumStarter, is_membership, is_message
from tests.matrix_user import Event, TestUser

pytestmark = pytest.mark.homeserver


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def forum(start_module_forum: ForumStarter) -> Forum:
    return await start_module_forum(
        "moderation", moderator=True, moderator_joins="*", moderation={"flood_messages": 100}
    )


async def wait_card(forum: Forum, reporter: str, after: int) -> tuple[int, Event]:
    card = await forum.mod.wait_for(
        lambda e: (
            is_message(forum.mgmt, forum.bot_id, "Dossier n°")(e)
            and reporter in e["content"]["body"]
        ),
        20,
        after=after,
    )
    number = int(re.search(r"n°(\d+)", card["content"]["body"]).group(1))  # type: ignore[union-attr]
    return number, card


async def test_reply_report_card_and_reactions(forum: Forum):
    author = await forum.member("author")
    reporter = await forum.member("reporter")
    bad = await author.send_text(forum.topic, "propos <i>blessants</i>")
    mark, amark = forum.mod.mark(), author.mark()
    report = await reporter.send(
        forum.topic,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "> <@x> propos\n\n!signaler insulte envers une membre",
            "m.relates_to": {"m.in_reply_to": {"event_id": bad}},
        },
    )
    number, card = await wait_card(forum, reporter.user_id, mark)
    body, html = card["content"]["body"], card["content"]["formatted_body"]
    assert author.user_id in body
    assert "insulte envers une membre" in body
    assert "<blockquote>propos &lt;i&gt;blessants&lt;/i&gt;</blockquote>" in html
    await forum.wait_redacted([report], after=mark)  # the report itself is hidden

    # Reactions offered on the card; a moderator's ⚠ warns the author.
    await forum.mod.react(forum.mgmt, card["event_id"], "⚠️")
    done = await forum.mod.wait_for(
        is_message(forum.mgmt, forum.bot_id, f"Dossier n°{number} : averti(e) par"), 20, after=mark
    )
    assert forum.mod.user_id in done["content"]["body"]
    dm = await forum.dm_room(author, after=amark)
    warning = await author.wait_for_text(dm, f"Signalement n°{number}", after=amark)
    assert reporter.user_id not in warning["content"]["body"]
    assert not any(
        reporter.user_id in str(e.get("content", {}).get("body", ""))
        for e in author.events[amark:]
        if e["room_id"] == dm
    )
    # A second action on a handled case is refused with who did what.
    answer = await forum.command(f"!case {number} ban")
    assert "déjà traité" in answer
    assert forum.mod.user_id in answer
    async with forum.ctx.db.sessionmaker() as s:
        case = await Cases(s).get(number)
    assert case is not None
    assert case.handled_action == "warn"
    assert case.source == "reply"


async def test_dm_report_and_case_command(forum: Forum):
    author = await forum.member("dmauthor")
    reporter: TestUser = await forum.member("dmreporter")
    bad = await author.send_text(forum.topic, "message à signaler")
    dm = await reporter.create_room(
        is_direct=True, invite=[forum.bot_id], preset="trusted_private_chat"
    )
    rmark = reporter.mark()
    await reporter.wait_for(
        is_membership(dm, forum.bot_id, "join"),
        20,
    )
    mark = forum.mod.mark()
    link = f"https://matrix.to/#/{forum.topic}/{bad}?via={forum.hs.server_name}"
    await reporter.send_text(dm, f"!report harcèlement {link}")
    number, card = await wait_card(forum, reporter.user_id, mark)
    assert author.user_id in card["content"]["body"]
    await reporter.wait_for_text(dm, "Merci", after=rmark)
    answer_mark = forum.mod.mark()
    await forum.mod.send_text(forum.mgmt, f"!dossier {number} effacer")
    await forum.wait_redacted([bad], after=answer_mark)
    await forum.mod.wait_for(
        is_message(forum.mgmt, forum.bot_id, f"Dossier n°{number} : message effacé"), 20, after=mark
    )


async def test_homeserver_report_through_admin_api(forum: Forum):
    author = await forum.member("apiauthor")
    reporter = await forum.member("apireporter")
    bad = await author.send_text(forum.topic, "contenu illégal")
    mark = forum.mod.mark()
    await reporter.request(
        "POST",
        f"/_matrix/client/v3/rooms/{forum.topic}/report/{bad}",
        {"reason": "contenu illégal", "score": -100},
    )
    number, card = await wait_card(forum, reporter.user_id, mark)
    assert "(admin)" in card["content"]["body"]
    assert "contenu illégal" in card["content"]["body"]
    await forum.mod.react(forum.mgmt, card["event_id"], "🔨")
    await forum.wait_membership(author.user_id, "ban", after=mark)
    assert "Aucun dossier" in await forum.command("!case 999999 dismiss")
