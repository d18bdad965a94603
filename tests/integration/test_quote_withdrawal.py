"""A per-quote permission is a consent like the others (DESIGN.md consent rules 3 and 4,
issue #10 point 4): a member who never agreed to be quoted in general allows one message
to be quoted when asked; ``!statut`` lists that permission, ``!retirer`` and
``!publication non`` withdraw it (the quote leaves the page, the feed and the JSON), and
``!mes-donnees`` tells everything the digest holds about the person."""

from __future__ import annotations

import pytest

from tests.harness import Forum, ForumStarter, eventually
from tests.matrix_user import TestUser

pytestmark = pytest.mark.homeserver

BOUND_SECONDS = 60


async def quoted_member(forum: Forum, make_user, name: str, text: str) -> tuple[TestUser, str, str]:
    """A member without publication consent whose message a moderator marks (📰) and who
    answers "oui" to the quote question; the week is published with the quote in it.
    Returns the person, their DM with the membership bot and the quoted message's id."""
    person = await make_user(name, display_name=name.capitalize())
    dm = await forum.admit(person, publication=False)
    room = forum.room()
    await forum.join(person, room)
    await forum.join(forum.mod, room)
    target = await person.send_text(room, text)
    mark = person.mark()
    await forum.mod.react(room, target, "📰")
    await forum.wait_bot_text(person, dm, text, after=mark)
    mark = person.mark()
    await person.send_text(dm, "oui")
    await forum.wait_bot_text(person, dm, "Merci", after=mark)
    await forum.digest.publish(forum.week())
    return person, dm, target


async def outputs(forum: Forum) -> str:
    week = forum.week()
    texts = [" ".join(await forum.stored_bodies())]
    for path in (f"/fr/week/{week}/", f"/en/week/{week}/", "/fr/feed.atom", "/api/digests.json"):
        status, body, _ = await forum.get(path)
        assert status == 200, path
        texts.append(body)
    return "\n".join(texts)


async def ask(forum: Forum, person: TestUser, dm: str, text: str, *expect: str) -> dict:
    mark = person.mark()
    await person.send_text(dm, text)
    return await forum.wait_bot_text(person, dm, *expect, after=mark)


async def download(person: TestUser, mxc: str) -> dict:
    server, media_id = mxc.removeprefix("mxc://").split("/", 1)
    return await person.request("GET", f"/_matrix/client/v1/media/download/{server}/{media_id}")


async def test_status_my_data_and_withdraw(start_forum: ForumStarter, make_user):
    forum = await start_forum("membership", "digest", moderator=True, moderator_joins=())
    text = "CITATION-ZOE: les cantines scolaires gardent les filles à l'école."
    zoe, dm, target = await quoted_member(forum, make_user, "zoe", text)
    assert text.split(":")[0] in await outputs(forum)

    # !statut lists the permission (numbered, with the words it is about).
    status = await ask(forum, zoe, dm, "!statut", "Charte")
    body = status["content"]["body"]
    assert "Citation dans le résumé : non." in body
    assert "CITATION-ZOE" in body, body
    assert "1." in body

    # !mes-donnees: a readable message and the JSON file, with what the digest holds.
    mark = zoe.mark()
    await zoe.send_text(dm, "!mes-donnees")
    file_ev = await zoe.wait_for(
        lambda e: e["room_id"] == dm and e["content"].get("msgtype") == "m.file", after=mark
    )
    readable = [
        e
        for e in zoe.events[mark:]
        if e["room_id"] == dm
        and e.get("sender") == forum.membership_bot_id
        and "CITATION-ZOE" in str(e["content"].get("body", ""))
    ]
    assert readable, "the readable summary shows the stored message and the quote"
    assert "formatted_body" in readable[0]["content"]
    data = await download(zoe, file_ev["content"]["url"])
    digest = data["digest"]
    assert [(p["event_id"], p["granted"]) for p in digest["quote_permissions"]] == [(target, True)]
    assert [m["event_id"] for m in digest["stored_messages"]] == [target]
    assert "CITATION-ZOE" in digest["stored_messages"][0]["body"]
    assert [q["event_id"] for q in digest["published_quotes"]] == [target]
    assert digest["published_quotes"][0]["week"] == forum.week()

    # !retirer withdraws it: a clear answer, then the quote leaves every output.
    answer = await ask(forum, zoe, dm, "!retirer", "retiré", "rien à retirer")
    assert "rien à retirer" not in answer["content"]["body"]

    async def gone() -> bool:
        return "CITATION-ZOE" not in await outputs(forum)

    await eventually(gone, BOUND_SECONDS, "the withdrawn quote left every output")
    status = await ask(forum, zoe, dm, "!statut", "Charte")
    assert "CITATION-ZOE" not in status["content"]["body"]
    await ask(forum, zoe, dm, "!retirer", "rien à retirer")


async def test_withdraw_one_by_number(start_forum: ForumStarter, make_user, db_url):
    """One permission, by its number in the status (on SQLite and PostgreSQL)."""
    forum = await start_forum(
        "membership", "digest", moderator=True, moderator_joins=(), db_url=db_url
    )
    text = "CITATION-YAO: une idée sur les écoles rurales et les filles."
    yao, dm, _ = await quoted_member(forum, make_user, "yao", text)
    assert "CITATION-YAO" in await outputs(forum)
    await ask(forum, yao, dm, "!retirer 2", "numéro 2")
    answer = await ask(forum, yao, dm, "!retirer 1", "retiré")
    assert "CITATION-YAO" in answer["content"]["body"]

    async def gone() -> bool:
        return "CITATION-YAO" not in await outputs(forum)

    await eventually(gone, BOUND_SECONDS, "the withdrawn quote left every output")
    # No longer listed, nothing left to withdraw (the answer is kept as a refusal: ids only).
    status = await ask(forum, yao, dm, "!statut", "Charte")
    assert "CITATION-YAO" not in status["content"]["body"]
    await ask(forum, yao, dm, "!retirer", "rien à retirer")


async def test_publication_no_erases_quotes(start_forum: ForumStarter, make_user):
    forum = await start_forum("membership", "digest", moderator=True, moderator_joins=())
    text = "CITATION-AWA: les cantines des écoles rurales, mon idée."
    awa, dm, _ = await quoted_member(forum, make_user, "awa", text)
    assert "CITATION-AWA" in await outputs(forum)
    await ask(forum, awa, dm, "!publication non", "ne seront pas cités")

    async def gone() -> bool:
        return "CITATION-AWA" not in await outputs(forum)

    await eventually(gone, BOUND_SECONDS, "the quote left every output")
