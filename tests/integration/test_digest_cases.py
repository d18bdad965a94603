"""The digest's consent cases the tests did not cover (issue #10), on one forum with the
real bots: a per-quote answer given by reaction; an answer by someone other than the
author (not counted); a quote question left unanswered; a non-moderator's 📰 or
``!digest``; messages sent while not consenting (before a grant, after a withdrawal);
another person's words quoted inside a reply. Each output (week page, feed, JSON API,
the static export) is checked on its own, with a quote that must be there as the proof
that the outputs were brought up to date."""

from __future__ import annotations

import pytest
import pytest_asyncio
from sqlalchemy import select

from bridge.models import DigestHighlight, QuotePermission
from tests.harness import Forum, ForumStarter, is_reply, published_forum_with_export
from tests.integration.test_consent_journeys import (
    consenting_quote,
    highlighted,
    holds_everywhere,
    outputs,
)
from tests.matrix_user import TestUser

pytestmark = pytest.mark.homeserver


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def forum(start_module_forum: ForumStarter, tmp_path_factory: pytest.TempPathFactory):
    """One forum for the module (as in the consent journeys): membership bot, digest, a
    moderator in the topic room, the week published, a static export kept up to date."""
    return await published_forum_with_export(start_module_forum, tmp_path_factory)


async def absent_everywhere(forum: Forum, *markers: str) -> None:
    """None of ``markers`` is in any output (checked once the outputs are up to date:
    call it after a :func:`holds_everywhere` of something that happened later)."""
    shown = {
        m: [name for name, text in (await outputs(forum)).items() if m in text] for m in markers
    }
    assert not any(shown.values()), f"shown although never allowed: {shown}"


async def not_consenting(forum: Forum, name: str) -> tuple[TestUser, str]:
    """A member admitted through the bot who refused publication; their DM."""
    person = await forum.user(name, name.capitalize())
    dm = await forum.admit(person, publication=False)
    await forum.join(person, forum.room())
    return person, dm


async def asked(forum: Forum, person: TestUser, dm: str, text: str, after: int) -> str:
    """The moderator marks ``text`` of ``person``: the quote question's event id."""
    question = await forum.wait_bot_text(person, dm, text, after=after)
    return str(question["event_id"])


async def status_of(forum: Forum, target: str) -> str | None:
    async with forum.ctx.db.sessionmaker() as s:
        row = await s.get(DigestHighlight, target)
    return row.status if row else None


async def test_per_quote_answer_by_reaction(forum: Forum):
    """A 👍 on the quote question is a "yes": the message is quoted in every output."""
    person, dm = await not_consenting(forum, "reaction")
    text = "PAR-REACTION: les cantines scolaires gardent les filles à l'école."
    target = await person.send_text(forum.room(), text)
    mark = person.mark()
    await forum.mod.react(forum.room(), target, "📰")
    question = await asked(forum, person, dm, "PAR-REACTION", mark)
    await person.react(dm, question, "👍")
    await highlighted(forum, target)
    await holds_everywhere(forum, "PAR-REACTION")


async def test_answer_by_someone_else_is_not_counted(forum: Forum):
    """A third person in the author's DM answers "oui" and reacts 👍 to the question:
    not counted. The author's own "non" is what counts (and is bound: the bot answers
    it), and the message is published nowhere."""
    person, dm = await not_consenting(forum, "autrice")
    friend = await forum.user("amie", "Amie")
    await person.invite(dm, friend.user_id)
    await friend.join(dm)
    text = "PAS-ELLE: les cantines scolaires manquent dans le nord."
    target = await person.send_text(forum.room(), text)
    mark = person.mark()
    await forum.mod.react(forum.room(), target, "📰")
    question = await asked(forum, person, dm, "PAS-ELLE", mark)
    await friend.react(dm, question, "👍")
    await friend.send(
        dm,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "oui",
            "m.relates_to": {"m.in_reply_to": {"event_id": question}},
        },
    )
    await friend.send_text(dm, "oui")
    mark = person.mark()
    await person.send(
        dm,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "non",
            "m.relates_to": {"m.in_reply_to": {"event_id": question}},
        },
    )
    await forum.wait_bot_text(person, dm, "ne sera pas cité", after=mark)
    assert await status_of(forum, target) == "refused"
    async with forum.ctx.db.sessionmaker() as s:
        permission = await s.get(QuotePermission, target)
    assert permission is not None
    assert permission.granted is False
    await consenting_quote(forum, "temoin1", "TEMOIN-UN: un sujet important.")
    await absent_everywhere(forum, "PAS-ELLE")
    assert not any("PAS-ELLE" in b for b in await forum.stored_bodies())


async def test_unanswered_question_is_never_published(forum: Forum):
    """Asked, never answered: the mark waits ("asking"), the words are neither stored
    nor shown, whatever else is published."""
    person, dm = await not_consenting(forum, "silence")
    text = "SANS-REPONSE: les cantines scolaires et les mariages précoces."
    target = await person.send_text(forum.room(), text)
    mark = person.mark()
    await forum.mod.react(forum.room(), target, "📰")
    await asked(forum, person, dm, "SANS-REPONSE", mark)
    await consenting_quote(forum, "temoin2", "TEMOIN-DEUX: un autre sujet important.")
    assert await status_of(forum, target) == "asking"
    await absent_everywhere(forum, "SANS-REPONSE")
    assert not any("SANS-REPONSE" in b for b in await forum.stored_bodies())


async def test_a_non_moderator_cannot_curate(forum: Forum):
    """A member's 📰 and ``!digest`` do nothing: no mark, no question to the author; a
    moderator's 📰 afterwards does (the proof the first two were handled). The
    ``!digest`` (a command) is answered in reply, in the forum's primary language, that
    only moderators choose the quotes; the 📰 (a reaction, not a command) stays silent."""
    author, dm = await not_consenting(forum, "auteur")
    member, _ = await not_consenting(forum, "membre")
    room = forum.room()
    first = await author.send_text(room, "NON-MOD-UN: les cantines scolaires du sud.")
    second = await author.send_text(room, "NON-MOD-DEUX: les cantines scolaires de l'est.")
    third = await author.send_text(room, "PAR-MOD: les cantines scolaires de l'ouest.")
    mark, member_mark = author.mark(), member.mark()
    await member.react(room, first, "📰")
    command = await member.send(
        room,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "!digest à lire",
            "m.relates_to": {"m.in_reply_to": {"event_id": second}},
        },
    )
    await forum.mod.react(room, third, "📰")
    await asked(forum, author, dm, "PAR-MOD", mark)
    questions = [
        e
        for e in author.events[mark:]
        if e["room_id"] == dm
        and e["type"] == "m.room.message"
        and e["sender"] == forum.membership_bot_id
        and "NON-MOD" in str(e["content"].get("body", ""))
    ]
    assert not questions, questions
    async with forum.ctx.db.sessionmaker() as s:
        marks = set(await s.scalars(select(DigestHighlight.target)))
    assert third in marks
    assert first not in marks
    assert second not in marks
    notice = await member.wait_for(is_reply(room, forum.bot_id, command), 20, after=member_mark)
    assert "Seuls les modérateurs" in notice["content"]["body"], notice
    answers = [
        e
        for e in member.events[member_mark:]
        if e["room_id"] == room and e["type"] == "m.room.message" and e["sender"] == forum.bot_id
    ]
    assert [e["event_id"] for e in answers] == [notice["event_id"]], answers  # 📰: silent


async def test_words_sent_without_consent_are_never_published(forum: Forum):
    """Messages sent before a grant, or after a withdrawal, are never stored nor shown,
    even once the person (again) agrees; what they write after agreeing is."""
    late, late_dm = await not_consenting(forum, "tardive")
    room = forum.room()
    await late.send_text(room, "AVANT-ACCORD: les cantines scolaires avant mon accord.")
    mark = late.mark()
    await late.send_text(late_dm, "!publication oui")
    await forum.wait_bot_text(late, late_dm, "peuvent être cités", after=mark)
    after_grant = await late.send_text(room, "APRES-ACCORD: les cantines scolaires ensuite.")

    text = "AVANT-RETRAIT: les cantines scolaires avant le retrait."
    back, back_dm, _ = await consenting_quote(forum, "retour", text)
    mark = back.mark()
    await back.send_text(back_dm, "!retirer")
    await forum.wait_bot_text(back, back_dm, "noté", after=mark)
    await back.send_text(room, "PENDANT-RETRAIT: les cantines scolaires sans accord.")
    mark = back.mark()
    await back.send_text(back_dm, "!publication oui")
    await forum.wait_bot_text(back, back_dm, "peuvent être cités", after=mark)
    after_regrant = await back.send_text(room, "APRES-RETOUR: les cantines scolaires enfin.")

    for target in (after_grant, after_regrant):
        await forum.mod.react(room, target, "📰")
    await highlighted(forum, after_grant)
    await highlighted(forum, after_regrant)
    await holds_everywhere(forum, "APRES-ACCORD")
    await holds_everywhere(forum, "APRES-RETOUR")
    stored = " ".join(await forum.stored_bodies())
    for never in ("AVANT-ACCORD", "AVANT-RETRAIT", "PENDANT-RETRAIT"):
        assert never not in stored, never
    await absent_everywhere(forum, "AVANT-ACCORD", "AVANT-RETRAIT", "PENDANT-RETRAIT")


async def test_someone_elses_words_in_a_reply_are_not_published(forum: Forum):
    """A consenting member replies to a member who never agreed: the reply fallback (the
    other's words, name and Matrix ID) is neither stored nor shown; the reply is."""
    other, _ = await not_consenting(forum, "bob")
    room = forum.room()
    theirs = "PAROLES-BOB: les cantines scolaires coûtent trop cher."
    original = await other.send_text(room, theirs)
    replier = await forum.user("alice", "Alice")
    await forum.admit(replier, publication=True)
    await forum.join(replier, room)
    mine = "MA-REPONSE: les cantines scolaires valent leur prix."
    reply = await replier.send(
        room,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": f"> <{other.user_id}> {theirs}\n\n{mine}",
            "format": "org.matrix.custom.html",
            "formatted_body": (
                f'<mx-reply><blockquote><a href="https://matrix.to/#/{room}/{original}">'
                f'In reply to</a> <a href="https://matrix.to/#/{other.user_id}">'
                f"{other.user_id}</a><br>{theirs}</blockquote></mx-reply>{mine}"
            ),
            "m.relates_to": {"m.in_reply_to": {"event_id": original}},
        },
    )
    await forum.mod.react(room, reply, "📰")
    await highlighted(forum, reply)
    await holds_everywhere(forum, "MA-REPONSE")
    await absent_everywhere(forum, "PAROLES-BOB", other.user_id)
    stored = " ".join(await forum.stored_bodies())
    assert "PAROLES-BOB" not in stored
    assert other.user_id not in stored
