"""Whole-forum journeys: every feature wired as in `forum run`, people acting as people."""

from __future__ import annotations

import pytest

from tests.harness import Forum, ForumStarter, eventually

pytestmark = pytest.mark.homeserver

NOT_UNDERSTOOD = ("pas compris", "not understand", "didn't understand")


async def test_member_journey_through_every_feature(make_user, start_forum: ForumStarter):
    moderator = await make_user("afi")
    service = await start_forum(
        "membership", "moderation", "digest", moderator=moderator, moderator_joins=()
    )
    ctx = service.ctx
    server = [service.settings.server_name]
    room = ctx.rooms["topic:droits-enfants"]

    # Amina agrees to be quoted; Kossi does not. Both are admitted through the consent flow.
    amina, kossi = await make_user("amina"), await make_user("kossi")
    amina_dm = await service.admit(amina, publication=True)
    kossi_dm = await service.admit(kossi, publication=False)
    for person in (amina, kossi):
        await person.join(ctx.rooms["space"], via=server)
        await person.join(room, via=server)  # members of the Space join topic rooms freely
    await moderator.join(room, via=server)

    await amina.send_text(
        room,
        "Les filles doivent rester à l'école. Les mariages précoces privent les filles de "
        "leur scolarité et de leur avenir.",
    )
    kossi_msg = await kossi.send_text(room, "Kossi propose une campagne radio sur l'école.")
    await kossi.send_text(room, "Kossi ne veut pas être cité ici.")

    # The moderator marks Kossi's message for the digest: Kossi is asked in his DM.
    mark = kossi.mark()
    await moderator.react(room, kossi_msg, "📰")
    await service.wait_bot_text(kossi, kossi_dm, "campagne radio", after=mark)
    mark = kossi.mark()
    await kossi.send_text(kossi_dm, "oui")

    week = service.week()

    async def published() -> str:
        await service.digest.publish(week)
        return await page(service, f"/fr/week/{week}/")

    async def kossi_quoted() -> bool:
        text = await published()
        return "campagne radio" in text and "scolarité" in text

    await eventually(kossi_quoted, 30, "Kossi's highlighted message and Amina's key point")
    text = await published()
    assert "Kossi ne veut pas être cité" not in text  # only the consented message
    # The membership bot did not answer Kossi's "oui" as a message it did not understand.
    await service.assert_nothing(
        kossi,
        lambda e: (
            e["room_id"] == kossi_dm
            and e["sender"] == service.membership_bot_id
            and any(n in e["content"]["body"] for n in NOT_UNDERSTOOD)
        ),
        service.membership_marker(kossi, kossi_dm),
        after=mark,
        what="the quote answer taken for a message not understood",
    )

    # Amina withdraws her publication consent: her words leave the public pages.
    mark = amina.mark()
    await amina.send_text(amina_dm, "!retirer")
    await service.wait_bot_text(amina, amina_dm, "pas cités", "not be quoted", after=mark)

    async def amina_gone() -> bool:
        return "scolarité" not in await published()

    await eventually(amina_gone, 60, "Amina's words removed after withdrawal")
    assert "campagne radio" in await published()


async def page(forum: Forum, path: str) -> str:
    status, text, _ = await forum.get(path)
    assert status == 200, path
    return text


async def test_report_written_to_the_welcome_bot_becomes_a_case(
    make_user, start_forum: ForumStarter
):
    """A member reports a message in their DM with the membership bot: the moderators
    get a case card in the management room, with the reported message quoted."""
    moderator = await make_user("afi")
    service = await start_forum("membership", "moderation", moderator=moderator, moderator_joins=())
    ctx = service.ctx
    server = [service.settings.server_name]
    room = ctx.rooms["topic:engagement-civique"]
    awa, troll = await make_user("awa"), await make_user("troll")
    awa_dm = await service.admit(awa, publication=False)
    await service.admit(troll, publication=False)
    for person in (awa, troll):
        await person.join(ctx.rooms["space"], via=server)
        await person.join(room, via=server)
    await moderator.join(ctx.rooms["management"], via=server)
    bad = await troll.send_text(room, "Message insultant à signaler")

    mark, mod_mark = awa.mark(), moderator.mark()
    link = f"https://matrix.to/#/{room}/{bad}"
    await awa.send_text(awa_dm, f"!signaler {link} insulte")
    await service.wait_bot_text(
        awa, awa_dm, "signalement a été transmis", "report was passed", after=mark
    )
    card = await moderator.wait_for(
        lambda e: (
            e["room_id"] == ctx.rooms["management"]
            and e["type"] == "m.room.message"
            and "Message insultant à signaler" in e["content"].get("body", "")
        ),
        timeout=30,
        after=mod_mark,
    )
    assert awa.user_id in card["content"]["body"]  # moderators see who reported
    assert troll.user_id in card["content"]["body"]
