"""Public names (issue #10 point 7, issue #12's look-alike defect): a member is quoted
under the public name recorded at publication consent (their display name then, or a
pseudonym chosen with ``!nom-public``), never under the live display name, which anyone
can set to a moderator's name."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from bridge.models import DigestMessage
from tests.harness import Forum, ForumStarter, eventually
from tests.matrix_user import TestUser

pytestmark = pytest.mark.homeserver

BOUND_SECONDS = 5


async def quote_of(forum: Forum, make_user, name: str, display: str, text: str):
    """A member who agreed to be quoted, whose message a moderator marks (📰); the week is
    published with the quote on the page. Returns the person, their DM and the message."""
    person = await make_user(name, display_name=display)
    dm = await forum.admit(person, publication=True)
    room = forum.room()
    await forum.join(person, room)
    await forum.join(forum.mod, room)
    target = await person.send_text(room, text)
    await forum.mod.react(room, target, "📰")
    await forum.digest.publish(forum.week())

    async def on_page() -> bool:
        status, page, _ = await forum.get(f"/fr/week/{forum.week()}/")
        return status == 200 and text in page

    await eventually(on_page, 20, "the quote is on the week's page")
    return person, dm, target


async def authors(forum: Forum, target: str) -> dict[str, str]:
    """Who each output says wrote ``target``: the stored row, the week's page, the feed
    and the JSON API."""
    week = forum.week()
    out: dict[str, str] = {}
    async with forum.ctx.db.sessionmaker() as s:
        out["store"] = str(
            await s.scalar(
                select(DigestMessage.display_name).where(DigestMessage.event_id == target)
            )
        )
    status, page, _ = await forum.get(f"/fr/week/{week}/")
    assert status == 200
    out["page"] = page
    status, feed, _ = await forum.get("/fr/feed.atom")
    assert status == 200
    out["feed"] = feed
    status, raw, _ = await forum.get("/api/digests.json")
    assert status == 200
    found = [
        q["author"]
        for w in json.loads(raw)["weeks"]
        for t in w["topics"]
        for q in t["highlights"]
        if q["event_id"] == target
    ]
    out["json"] = found[0] if found else ""
    return out


def attributed_to(seen: dict[str, str], name: str) -> bool:
    """Every output attributes the quote to ``name`` (the page and the feed say "— NAME,")."""
    return (
        seen["store"] == name
        and seen["json"] == name
        and f"— {name}," in seen["page"]
        and f"— {name}," in seen["feed"]
    )


async def set_display_name(forum: Forum, user: TestUser, name: str) -> None:
    """``user`` takes ``name`` as display name; the moderator sees the new member event in
    the topic room (Synapse updates the rooms after answering the profile request)."""
    mark = forum.mod.mark()
    await user.request(
        "PUT", f"/_matrix/client/v3/profile/{user.user_id}/displayname", {"displayname": name}
    )
    await forum.mod.wait_for(
        lambda e: (
            e["room_id"] == forum.room()
            and e["type"] == "m.room.member"
            and e.get("state_key") == user.user_id
            and e["content"].get("displayname") == name
        ),
        20,
        after=mark,
    )


async def handled_later_message(forum: Forum, user: TestUser, text: str) -> None:
    """``user`` (who consents) writes ``text`` in the topic room and the digest stores it:
    everything the digest received before (a profile change) was handled."""
    await user.send_text(forum.room(), text)

    async def stored() -> bool:
        return any(text in b for b in await forum.stored_bodies())

    await eventually(stored, 20, "the later message was stored")


async def test_display_name_change_never_relabels_a_quote(start_forum: ForumStarter, make_user):
    """Defect 7: a member quoted as "Zoé Martin" takes the moderator's name ("Afi") as
    display name; the published quote keeps the name she was quoted under."""
    forum = await start_forum("membership", "digest", moderator=True, moderator_joins=())
    text = "NOM-STABLE: les filles ont besoin de cantines scolaires."
    zoe, _, target = await quote_of(forum, make_user, "zoe", "Zoé Martin", text)

    async def as_zoe() -> bool:
        return attributed_to(await authors(forum, target), "Zoé Martin")

    await eventually(as_zoe, 20, "every output quotes Zoé Martin")

    await set_display_name(forum, zoe, "Afi")  # the moderator's display name
    await handled_later_message(forum, zoe, "NOM-STABLE-APRES: un autre message.")
    seen = await authors(forum, target)
    assert attributed_to(seen, "Zoé Martin"), {k: v[:300] for k, v in seen.items()}
    assert "— Afi," not in seen["page"]
    forum.assert_alive()
