"""Public names (issue #10 point 7, issue #12's look-alike defect): a member is quoted
under the public name recorded at publication consent (their display name then, or a
pseudonym chosen with ``!nom-public``), never under the live display name, which anyone
can set to a moderator's name."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from bridge.models import DigestMessage
from forum.public_names import PublicNames
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


async def ask(forum: Forum, person: TestUser, dm: str, text: str, *expect: str) -> str:
    """``person`` writes ``text`` in their DM; the bot's answer holding one of ``expect``."""
    mark = person.mark()
    await person.send_text(dm, text)
    answer = await forum.wait_bot_text(person, dm, *expect, after=mark)
    return str(answer["content"]["body"])


async def download(person: TestUser, mxc: str) -> dict:
    server, media_id = mxc.removeprefix("mxc://").split("/", 1)
    return await person.request("GET", f"/_matrix/client/v1/media/download/{server}/{media_id}")


async def test_the_display_name_at_consent_is_the_default_public_name(
    start_forum: ForumStarter, make_user
):
    forum = await start_forum("membership", "digest", moderator=True, moderator_joins=())
    awa = await make_user("awa", display_name="Awa Kpodar")
    dm = await forum.admit(awa, publication=True)
    told = await forum.wait_bot_text(awa, dm, "sous le nom")
    body = told["content"]["body"]
    assert "« Awa Kpodar »" in body, body
    assert "!nom-public" in body, body

    status = await ask(forum, awa, dm, "!statut", "Charte")
    assert "Nom public (quand vous êtes cité·e) : « Awa Kpodar »." in status
    assert "« Awa Kpodar »" in await ask(forum, awa, dm, "!nom-public", "sous le nom")
    assert "!nom-public" in await ask(forum, awa, dm, "!aide", "Commandes")

    # !mes-donnees: the readable message and the JSON file hold the public name.
    mark = awa.mark()
    await awa.send_text(dm, "!mes-donnees")
    file_ev = await awa.wait_for(
        lambda e: e["room_id"] == dm and e["content"].get("msgtype") == "m.file", after=mark
    )
    readable = [
        e
        for e in awa.events[mark:]
        if e["room_id"] == dm
        and e.get("sender") == forum.membership_bot_id
        and "Nom public" in str(e["content"].get("body", ""))
    ]
    assert readable
    assert "Awa Kpodar" in readable[0]["content"]["body"]
    data = await download(awa, file_ev["content"]["url"])
    assert data["public_name"]["name"] == "Awa Kpodar"
    assert data["public_name"]["chosen"] is False

    # Quoted under it; a later display name changes nothing.
    room = forum.room()
    await forum.join(awa, room)
    await forum.join(forum.mod, room)
    text = "DEFAUT-AWA: des bourses pour les filles du secondaire."
    target = await awa.send_text(room, text)
    await forum.mod.react(room, target, "📰")
    await forum.digest.publish(forum.week())

    async def as_awa() -> bool:
        return attributed_to(await authors(forum, target), "Awa Kpodar")

    await eventually(as_awa, 20, "every output quotes Awa Kpodar")
    await set_display_name(forum, awa, "Awa K.")
    await handled_later_message(forum, awa, "DEFAUT-AWA-APRES: encore un mot.")
    assert attributed_to(await authors(forum, target), "Awa Kpodar")
    assert "« Awa Kpodar »" in await ask(
        forum, awa, dm, "!public-name", "under the name", "sous le nom"
    )
    forum.assert_alive()


async def test_a_pseudonym_relabels_the_quote_within_5_s(
    start_forum: ForumStarter, make_user, db_url
):
    """``!nom-public`` with a pseudonym: the published quote carries it on the page, the
    feed and the JSON within 5 s; a mention of the person shows it too (on SQLite and
    PostgreSQL)."""
    forum = await start_forum(
        "membership", "digest", moderator=True, moderator_joins=(), db_url=db_url
    )
    text = "PSEUDO-KOSSI: les mariages précoces privent les filles de classe."
    kossi, dm, target = await quote_of(forum, make_user, "kossi", "Kossi Mensah", text)

    async def as_kossi() -> bool:
        return attributed_to(await authors(forum, target), "Kossi Mensah")

    await eventually(as_kossi, 20, "every output quotes Kossi Mensah")

    answer = await ask(forum, kossi, dm, "!nom-public Plume Verte", "nom public", "Rien")
    assert "« Plume Verte »" in answer, answer

    async def as_plume() -> bool:
        seen = await authors(forum, target)
        return attributed_to(seen, "Plume Verte") and "Kossi Mensah" not in seen["page"]

    await eventually(as_plume, BOUND_SECONDS, "the quote carries the pseudonym")
    assert "Plume Verte" in await ask(forum, kossi, dm, "!statut", "Charte")

    # A consenting member mentions Kossi: the pill becomes the pseudonym; a person who
    # did not consent becomes « un·e membre ».
    ama = await make_user("ama", display_name="Ama Secret")
    await forum.consent(ama)
    await forum.join(ama, forum.room())
    shy = await make_user("shy", display_name="Timide Personne")
    await forum.join(shy, forum.room())
    pill = f'<a href="https://matrix.to/#/{kossi.user_id}">Kossi Mensah</a>'
    shy_pill = f'<a href="https://matrix.to/#/{shy.user_id}">Timide Personne</a>'
    await ama.send_text(
        forum.room(),
        "MENTION-PSEUDO: merci Kossi Mensah et Timide Personne",
        f"MENTION-PSEUDO: merci {pill} et {shy_pill}",
    )

    async def mention_stored() -> str:
        found = [b for b in await forum.stored_bodies() if "MENTION-PSEUDO" in b]
        return found[0] if found else ""

    await eventually(mention_stored, 20, "the mention is stored")
    stored = await mention_stored()
    assert "Plume Verte" in stored, stored
    assert "un·e membre" in stored, stored
    assert "Kossi" not in stored, stored
    assert "Timide" not in stored, stored
    forum.assert_alive()


LOOKALIKES = {
    "Cyrillic А and і": "Аfі",
    "U+034F": "Afi\u034f",
    "zero-width space": "A\u200bfi",
    "Hangul filler": "\u3164Afi",
    "fullwidth": "Ａｆｉ",
}


async def test_a_lookalike_of_a_moderators_name_is_refused(start_forum: ForumStarter, make_user):
    """The moderator is "Afi": a public name shaped like it is refused with a clear
    message, and nothing changes."""
    forum = await start_forum("membership", "digest", moderator=True)
    yao = await make_user("yao", display_name="Yao")
    dm = await forum.admit(yao, publication=True)
    for what, lookalike in LOOKALIKES.items():
        answer = await ask(
            forum, yao, dm, f"!nom-public {lookalike}", "Rien n'a été changé", "noté"
        )
        assert "ressemble" in answer, (what, answer)
    assert "« Yao »" in await ask(forum, yao, dm, "!nom-public", "sous le nom")
    forum.assert_alive()


async def test_other_refusals_are_clear(start_forum: ForumStarter, make_user):
    """A member's display name, another's public name, a name too long, one made of
    invisible characters: refused with a clear message, nothing changed."""
    forum = await start_forum("membership", "digest")
    koffi = await make_user("koffi", display_name="Koffi")
    koffi_dm = await forum.admit(koffi, publication=True)
    await forum.join(koffi, forum.room())
    assert "« Baobab »" in await ask(forum, koffi, koffi_dm, "!nom-public Baobab", "nom public")
    edem = await make_user("edem", display_name="Edem")
    dm = await forum.admit(edem, publication=True)

    refused = "Rien n'a été changé"
    taken = await ask(forum, edem, dm, "!nom-public K0ffi", refused, "noté")  # display name
    assert "ressemble" in taken, taken
    taken = await ask(forum, edem, dm, "!nom-public Ba0bab", refused, "noté")  # public name
    assert "ressemble" in taken, taken
    long = await ask(forum, edem, dm, "!nom-public " + "x" * 60, refused, "noté")
    assert "trop long" in long, long
    assert "48" in long, long
    blank = await ask(forum, edem, dm, "!nom-public \u2800\u3164", refused, "noté")
    assert "invisibles" in blank, blank
    assert "« Edem »" in await ask(forum, edem, dm, "!nom-public", "sous le nom")
    ok = await ask(forum, edem, dm, "!nom-public Étoile du Matin", "nom public", refused)
    assert "« Étoile du Matin »" in ok, ok
    assert "« Étoile du Matin »" in await ask(forum, edem, dm, "!nom-public", "sous le nom")
    forum.assert_alive()


async def test_a_consent_given_before_public_names(start_forum: ForumStarter, make_user):
    """Someone who consented before public names existed has none: their display name
    is recorded as it the first time a quote needs it, never the live one afterwards;
    a display name shaped like the moderator's ("Afi") is not taken as a default."""
    forum = await start_forum("digest", moderator=True, moderator_joins=())
    room = forum.room()
    mawuli = await make_user("mawuli", display_name="Mawuli")
    fake = await make_user("fake", display_name="Аfі")  # Cyrillic А and і
    for user in (forum.mod, mawuli, fake):
        await forum.join(user, room)
    await forum.consent(mawuli)  # a consent record only: no public name
    await forum.consent(fake)
    first = await mawuli.send_text(room, "AVANT-MAWULI: des latrines dans chaque école.")
    spoof = await fake.send_text(room, "AVANT-FAUX: je parle au nom des modérateurs.")
    for target in (first, spoof):
        await forum.mod.react(room, target, "📰")
    await forum.digest.publish(forum.week())

    async def as_mawuli() -> bool:
        return attributed_to(await authors(forum, first), "Mawuli")

    await eventually(as_mawuli, 20, "every output quotes Mawuli")
    fake_name = fake.user_id.removeprefix("@").split(":")[0]

    async def spoof_as_localpart() -> bool:
        return attributed_to(await authors(forum, spoof), fake_name)

    await eventually(spoof_as_localpart, 20, "the look-alike is quoted under its user id")
    async with forum.ctx.db.sessionmaker() as s:
        recorded = await PublicNames(s).get(mawuli.user_id)
    assert recorded is not None
    assert (recorded.name, recorded.chosen, recorded.method) == ("Mawuli", False, "default")

    await set_display_name(forum, mawuli, "Mawuli le Grand")
    await handled_later_message(forum, mawuli, "AVANT-MAWULI-APRES: un autre mot.")
    assert attributed_to(await authors(forum, first), "Mawuli")
    forum.assert_alive()
