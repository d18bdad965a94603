"""Moderator approval (``approval = "moderators"``): a card in the management room,
approved or denied by command or reaction; the person is told the outcome, and a denied
knock is answered by a kick with the reason."""

from __future__ import annotations

import secrets

import pytest
import pytest_asyncio
from sqlalchemy import make_url

from forum.storage import create_database_if_missing, drop_database
from moderation.membership.repositories import People
from tests.harness import CHARTER_FR, PUBLICATION_Q, ForumStarter, is_membership
from tests.matrix_user import TestUser
from tests.storage_fixtures import POSTGRES_BASE_URL

pytestmark = pytest.mark.homeserver


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def forum(start_module_forum: ForumStarter):
    """One forum for the module, on PostgreSQL (the other modules use SQLite)."""
    pg = make_url(POSTGRES_BASE_URL).set(database=f"forum_test_{secrets.token_hex(6)}")
    await create_database_if_missing(pg)
    try:
        yield await start_module_forum(
            "membership",
            moderator=True,
            db_url=pg.render_as_string(hide_password=False),
            config={"membership": {"approval": "moderators"}},
        )
    finally:
        await start_module_forum.close()
        await drop_database(pg)


async def until_card(forum, user: TestUser) -> tuple[str, dict]:
    """Walk ``user`` through charter and publication by a knock on a topic room; return
    the DM room and the card the moderator sees."""
    mod: TestUser = forum.moderator
    topic = forum.ctx.rooms.topic_ids["egalite-filles"]
    await user.knock(topic, "Bonjour, je suis journaliste", via=forum.via)
    room = await forum.wait_dm(user)
    await forum.wait_bot_text(user, room, CHARTER_FR)
    mark = user.mark()
    await user.send_text(room, "oui")
    await forum.wait_bot_text(user, room, *PUBLICATION_Q, after=mark)
    mark = user.mark()
    await user.send_text(room, "non")
    await forum.wait_bot_text(user, room, "modératrice", after=mark)
    card = await forum.wait_bot_text(
        mod, forum.ctx.rooms["management"], f"adhésion de {user.user_id}"
    )
    return room, card


async def test_approve_by_command(forum, make_user):
    user = await make_user("approved")
    room, _card = await until_card(forum, user)
    management = forum.ctx.rooms["management"]
    # Nothing is invited before a moderator decides.
    await forum.assert_nothing(
        user,
        lambda e: e["_section"] == "invite" and e["room_id"] in forum.rooms.forum_ids,
        forum.membership_marker(user, room),
        after=0,
        what="an invite before the moderators' decision",
    )
    mark = user.mark()
    await forum.moderator.send_text(management, f"!approve {user.user_id}")
    await forum.wait_bot_text(forum.moderator, management, "approuvé")
    await forum.wait_invites(user)
    await forum.wait_bot_text(user, room, "Vous êtes invité", after=mark)


async def test_deny_by_command_kicks_the_knock_with_reason(forum, make_user):
    user = await make_user("denied")
    room, _card = await until_card(forum, user)
    management = forum.ctx.rooms["management"]
    topic = forum.ctx.rooms.topic_ids["egalite-filles"]
    mark = user.mark()
    await forum.moderator.send_text(management, f"!deny {user.user_id} profil non vérifié")
    told = await forum.wait_bot_text(user, room, "refusée", after=mark)
    assert "profil non vérifié" in told["content"]["body"]
    # The knock is answered by a kick (by the moderation bot) carrying the reason.
    kicked = await user.wait_for(
        is_membership(topic, user.user_id, "leave"),
        timeout=20,
    )
    assert "profil non vérifié" in kicked["content"].get("reason", "")
    assert kicked["sender"] == forum.settings.moderation_bot_id
    records = await forum.history(user.user_id)
    assert [(r.scope, r.granted) for r in records] == [("charter", True), ("publication", False)]


async def test_reactions_on_the_card(forum, make_user):
    yes_user = await make_user("card-yes")
    no_user = await make_user("card-no")
    _, yes_card = await until_card(forum, yes_user)
    no_room, no_card = await until_card(forum, no_user)
    management = forum.ctx.rooms["management"]
    await forum.moderator.react(management, yes_card["event_id"], "✅")
    await forum.wait_invites(yes_user)
    mark = no_user.mark()
    await forum.moderator.react(management, no_card["event_id"], "❌")
    await forum.wait_bot_text(no_user, no_room, "refusée", after=mark)


async def test_non_moderator_cannot_approve(forum, make_user):
    user = await make_user("waiting")
    await until_card(forum, user)
    management = forum.ctx.rooms["management"]
    # A second person invited to the management room without the moderator level.
    intruder = await make_user("intruder")
    await forum.ctx.moderation_gateway.invite(management, intruder.user_id)
    await intruder.wait_for_invite(management)
    await intruder.join(management, via=forum.via)
    await intruder.send_text(management, f"!approve {user.user_id}")
    await forum.wait_bot_text(intruder, management, "Seuls les modératrices")
    await forum.ctx.moderation_gateway.kick(management, intruder.user_id)
    # The request is still pending: a moderator can still decide.
    await forum.moderator.send_text(management, f"!deny {user.user_id}")
    await forum.wait_bot_text(forum.moderator, management, f"{user.user_id} refusé")


async def left_after_card(forum, user: TestUser) -> tuple[str, dict, int]:
    """``user`` reaches the approval card, then types ``!quitter`` in the DM; returns the
    DM room, the card, and ``user``'s buffer position before anything was decided."""
    room, card = await until_card(forum, user)
    mark = user.mark()
    await user.send_text(room, "!quitter")
    await forum.wait_bot_text(user, room, "Vous avez quitté", after=mark)
    return room, card, mark


async def not_admitted(forum, user: TestUser, room: str, mark: int) -> None:
    """No invite to any forum room reached ``user`` since ``mark``; the store has them
    out, their charter consent withdrawn and their request closed."""
    await forum.assert_nothing(
        user,
        lambda e: e["_section"] == "invite" and e["room_id"] in forum.rooms.forum_ids,
        forum.membership_marker(user, room),
        after=mark,
        what="an invite after the person left",
    )
    person = await forum.person(user.user_id)
    assert person is not None
    assert person.step == "left"
    charter = [r.granted for r in await forum.history(user.user_id) if r.scope == "charter"]
    assert charter == [True, False]
    async with forum.ctx.db.sessionmaker() as s:
        approvals = await People(s).approvals(user.user_id)
    assert [a.status for a in approvals] == ["withdrawn"]


async def moderator_answer(forum, user: TestUser, mark: int) -> str:
    """The membership bot's next message about ``user`` in the management room."""
    answer = await forum.wait_bot_text(
        forum.moderator, forum.ctx.rooms["management"], user.user_id, after=mark
    )
    return str(answer["content"]["body"])


async def test_who_left_cannot_be_approved_by_command(forum, make_user):
    user = await make_user("left-command")
    room, _card, mark = await left_after_card(forum, user)
    mod_mark = forum.moderator.mark()
    await forum.moderator.send_text(forum.ctx.rooms["management"], f"!approuver {user.user_id}")
    body = await moderator_answer(forum, user, mod_mark)
    assert "a quitté" in body, body
    assert "approuvé·e par" not in body, body
    await not_admitted(forum, user, room, mark)


async def test_who_left_cannot_be_approved_by_card_reaction(forum, make_user):
    user = await make_user("left-card")
    room, card, mark = await left_after_card(forum, user)
    mod_mark = forum.moderator.mark()
    await forum.moderator.react(forum.ctx.rooms["management"], card["event_id"], "✅")
    body = await moderator_answer(forum, user, mod_mark)
    assert "a quitté" in body, body
    assert "approuvé·e par" not in body, body
    await not_admitted(forum, user, room, mark)


async def test_a_decision_with_a_bad_argument_gets_the_registrys_usage_error(forum):
    """``!approve`` and ``!deny`` have their arguments parsed by the shared registry from
    their declarations, as the moderation bot's commands: a missing or malformed user
    gets the usage line (the command as written) and what is wrong, in the forum's
    language."""
    management, mod = forum.ctx.rooms["management"], forum.moderator

    async def ask(text: str) -> str:
        mark = mod.mark()
        await mod.send_text(management, text)
        answer = await forum.wait_bot_text(mod, management, "Utilisation", "Usage", after=mark)
        return str(answer["content"]["body"])

    malformed = await ask("!approve kossi")
    assert malformed == "Utilisation : !approve UTILISATEUR (UTILISATEUR : kossi n'est pas valable)"
    missing = await ask("!refuser")
    assert missing == "Utilisation : !refuser UTILISATEUR [RAISON] (UTILISATEUR manquant)"
