"""The moderation bot's commands against a real Synapse: authority, usage, space-wide
actions, policy publishing, audit and echoes. One forum for the module; each test uses
its own people."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import pytest_asyncio

from moderation.bot.actions import rule_state_key
from moderation.bot.repositories import Audit
from tests.harness import Forum, ForumStarter, is_message, is_reply
from tests.matrix_user import Event, MatrixRequestError

pytestmark = pytest.mark.homeserver


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def forum(start_module_forum: ForumStarter) -> Forum:
    return await start_module_forum(
        "moderation", moderator=True, moderator_joins="*", moderation={"flood_messages": 100}
    )


def touches(user_id: str) -> Callable[[Event], bool]:
    """A ban, kick or mute of ``user_id`` seen in a room."""

    def pred(e: Event) -> bool:
        if e["type"] == "m.room.member":
            return e["state_key"] == user_id and e["content"]["membership"] in ("ban", "leave")
        return e["type"] == "m.room.power_levels" and e["content"]["users"].get(user_id) == -1

    return pred


async def test_help_in_both_languages_and_refusals(forum: Forum):
    help_text = await forum.command("!aide")
    for name in ("!ban", "!bannir", "!mute", "!sourdine", "!redact", "!lock", "!case"):
        assert name in help_text
    assert "!help" in await forum.command("!help")

    # A person in the management room without the moderator level is refused, every time.
    helper = await forum.user("helper")
    await forum.mod.invite(forum.mgmt, helper.user_id)
    await helper.join(forum.mgmt, via=[forum.hs.server_name])
    target = await forum.member("target")
    mark = forum.mod.mark()
    answer = await forum.command(f"!ban {target.user_id} spam", sender=helper)
    assert "Refusé" in answer
    assert "50" in answer
    assert "Refusé" in await forum.command(f"!mute {target.user_id}", sender=helper)
    await forum.assert_nothing(
        forum.mod,
        touches(target.user_id),
        forum.moderation_marker(),
        after=mark,
        what="a refused command carried out",
    )
    member = await forum.mod.get_state_event(forum.topic, "m.room.member", target.user_id)
    assert member["membership"] == "join"

    # Authority follows the room's power levels as they change (read from the room's
    # state, kept in step by its m.room.power_levels events).
    async def set_level(level: int) -> None:
        content = await forum.mod.get_state_event(forum.mgmt, "m.room.power_levels")
        content["users"][helper.user_id] = level
        await forum.ctx.moderation_gateway.put_state(forum.mgmt, "m.room.power_levels", content)

    await set_level(50)
    assert "Simulation" in await forum.command("!etat", sender=helper)
    await set_level(0)
    assert "Refusé" in await forum.command("!etat", sender=helper)

    # Bad arguments give the usage line.
    assert "!mute UTILISATEUR [DURÉE] [RAISON]" in await forum.command("!mute")
    assert "!dry-run on|off" in await forum.command("!dry-run peut-être")
    assert "!case NUMÉRO" in await forum.command("!case abc ban")

    # The same command outside the management room is ignored, even from a moderator.
    mark = forum.mod.mark()
    outside = await forum.mod.send_text(forum.ids["lobby"], f"!ban {target.user_id} spam")
    await forum.assert_nothing(
        forum.mod,
        lambda e: touches(target.user_id)(e) or is_reply(e["room_id"], forum.bot_id, outside)(e),
        forum.moderation_marker(),
        after=mark,
        what="a command outside the management room carried out or answered",
    )
    async with forum.ctx.db.sessionmaker() as s:
        refused = [e for e in await Audit(s).entries(helper.user_id) if e.action == "refused"]
    assert len(refused) == 3


async def test_ban_everywhere_published_and_unban(forum: Forum):
    spammer = await forum.member("spammer")
    mark = forum.mod.mark()
    echo = await forum.command(f"!ban {spammer.user_id} pourriel répété")
    assert spammer.user_id in echo
    assert "pourriel répété" in echo
    assert "!unban" in echo
    await forum.wait_membership(spammer.user_id, "ban", after=mark)
    member = await forum.mod.get_state_event(forum.topic, "m.room.member", spammer.user_id)
    assert member["reason"] == "pourriel répété"

    # Another user (not a member) reads the rule back from the world-readable policy list.
    reader = await forum.user("reader")
    rule = await reader.get_state_event(
        forum.ids["policy"], "m.policy.rule.user", rule_state_key(spammer.user_id)
    )
    assert rule == {
        "entity": spammer.user_id,
        "recommendation": "m.ban",
        "reason": "pourriel répété",
    }

    mark = forum.mod.mark()
    assert spammer.user_id in await forum.command(f"!debannir {spammer.user_id}")
    await forum.wait_membership(spammer.user_id, "leave", after=mark)
    rule = await reader.get_state_event(
        forum.ids["policy"], "m.policy.rule.user", rule_state_key(spammer.user_id)
    )
    assert rule == {}
    async with forum.ctx.db.sessionmaker() as s:
        entries = await Audit(s).entries(spammer.user_id)
    ban = next(e for e in entries if e.action == "ban")
    assert ban.actor == forum.mod.user_id
    assert ban.reason == "pourriel répété"
    assert set(ban.rooms) == set(forum.forum_rooms)
    assert ban.event_id
    assert [e.action for e in entries][-1] == "unban"


async def test_a_join_handled_after_the_ban_bans_nothing_again(forum: Forum):
    """A join the bot handles late (after the person's ban, in the same sync batch as the
    rule, say) finds them banned already: no second ban, no second audit entry."""
    late = await forum.member("tardif")
    state = await forum.mod.request("GET", f"/_matrix/client/v3/rooms/{forum.topic}/state")
    (join_event,) = (
        e["event_id"]
        for e in state["result"]
        if e["type"] == "m.room.member" and e["state_key"] == late.user_id
        and e["content"]["membership"] == "join"
    )  # fmt: skip
    mark = forum.mod.mark()
    await forum.command(f"!ban {late.user_id} raid")
    await forum.wait_membership(late.user_id, "ban", after=mark)
    # the join, handled only now
    assert await forum.bot.policy_lists.ban_on_join(late.user_id, forum.topic, join_event)
    async with forum.ctx.db.sessionmaker() as s:
        actions = [e.action for e in await Audit(s).entries(late.user_id)]
    assert actions == ["ban"]


async def test_glob_ban_hits_matching_members_only(forum: Forum):
    a = await forum.member("globa")
    b = await forum.member("globb")
    keep = await forum.member("keeper")
    pattern = a.user_id.split("-")[0] + "-*"  # "@globa-*"
    mark = forum.mod.mark()
    echo = await forum.command(f"!ban {pattern}:{forum.hs.server_name} raid")
    assert a.user_id in echo
    assert b.user_id not in echo
    await forum.wait_membership(a.user_id, "ban", after=mark)
    for u in (b, keep):
        m = await forum.mod.get_state_event(forum.topic, "m.room.member", u.user_id)
        assert m["membership"] == "join"
    # A later join matching the published glob is banned on arrival.
    late = await forum.user("globa")
    mark = forum.mod.mark()
    await forum.ctx.moderation_gateway.invite(forum.ids["space"], late.user_id)
    await late.join(forum.ids["space"], via=[forum.hs.server_name])
    await forum.wait_membership(late.user_id, "ban", after=mark)
    # Unbanning the glob withdraws the rule and lifts the bans it caught.
    mark = forum.mod.mark()
    echo = await forum.command(f"!unban {pattern}:{forum.hs.server_name}")
    assert "Refusé" not in echo
    for u in (a.user_id, late.user_id):
        await forum.wait_membership(u, "leave", after=mark)


async def test_moderators_cannot_be_targets(forum: Forum):
    for cmd in ("!ban", "!kick", "!mute", "!warn", "!redact"):
        answer = await forum.command(f"{cmd} {forum.mod.user_id} test")
        assert "Refusé" in answer, cmd
    m = await forum.mod.get_state_event(forum.topic, "m.room.member", forum.mod.user_id)
    assert m["membership"] == "join"


async def test_kick_warn_and_history(forum: Forum):
    person = await forum.member("kicked")
    mark = forum.mod.mark()
    pmark = person.mark()
    echo = await forum.command(f"!warn {person.user_id} restez courtois")
    assert f"{person.user_id} averti(e)." in echo  # a direct message, not "in 0 rooms"
    dm = await forum.dm_room(person, after=pmark)
    await person.wait_for_text(dm, "restez courtois", after=pmark)
    # A second warning reuses the same DM room.
    await forum.command(f"!avertir {person.user_id} deuxième fois")
    second = await person.wait_for_text(dm, "deuxième fois", after=pmark)
    assert second["room_id"] == dm
    # Bad arguments: the usage line, and what is wrong, in the bot's language.
    assert "Utilisation : !kick UTILISATEUR [RAISON] (UTILISATEUR manquant)" in await forum.command(
        "!expulser"
    )
    await forum.command(f"!kick {person.user_id} hors sujet")
    await forum.wait_membership(person.user_id, "leave", after=mark)
    history = await forum.command(f"!historique {person.user_id}")
    assert "averti(e) — " in history  # the actions in the bot's language
    assert "expulsé(e) — " in history
    assert "hors sujet" in history


async def test_mute_and_unmute_everywhere(forum: Forum):
    person = await forum.member("muted")
    echo = await forum.command(f"!mute {person.user_id} 10m calmez-vous")
    assert "10m" in echo
    assert "!unmute" in echo
    for room in forum.forum_rooms:
        assert await forum.power(room, person.user_id) == -1
    with pytest.raises(MatrixRequestError) as refused:
        await person.send_text(forum.topic, "je parle quand même")
    assert refused.value.status == 403
    async with forum.ctx.db.sessionmaker() as s:
        from moderation.bot.repositories import Mutes

        mute = await Mutes(s).get(person.user_id)
    assert mute is not None
    assert mute.until is not None
    await forum.command(f"!unmute {person.user_id}")
    for room in forum.forum_rooms:
        assert await forum.power(room, person.user_id) == 0
    await person.send_text(forum.topic, "merci")


async def test_redact_recent_messages(forum: Forum):
    person = await forum.member("redacted")
    ids = [await person.send_text(forum.topic, f"message {i}") for i in range(4)]
    ids.append(await person.send_text(forum.ids["lobby"], "ailleurs"))
    other = await forum.member("bystander")
    kept = await other.send_text(forum.topic, "je reste")
    mark = forum.mod.mark()
    echo = await forum.command(f"!redact {person.user_id} 3 nettoyage")
    assert "3" in echo
    await forum.wait_redacted(ids[-3:], after=mark)
    mark = forum.mod.mark()
    await forum.command(f"!effacer {person.user_id} 1h")
    await forum.wait_redacted(ids[:2], after=mark)
    event = await other.request("GET", f"/_matrix/client/v3/rooms/{forum.topic}/event/{kept}")
    assert event["content"]["body"] == "je reste"


async def test_lock_and_unlock_topic_rooms(forum: Forum):
    person = await forum.member("locked")
    assert "!unlock" in await forum.command("!verrouiller")
    with pytest.raises(MatrixRequestError):
        await person.send_text(forum.topic, "bloqué")
    await forum.mod.send_text(forum.topic, "les modérateurs parlent encore")
    await person.send_text(forum.ids["lobby"], "l'accueil reste ouvert")
    await forum.command("!unlock")
    pl = await forum.mod.get_state_event(forum.topic, "m.room.power_levels")
    assert pl["events_default"] == 0
    await person.send_text(forum.topic, "de nouveau possible")


async def test_display_names_and_look_alikes(forum: Forum):
    unique = await forum.member("named", display_name="Kossi Unique")
    await forum.member("twin1", display_name="Ama Twin")
    await forum.member("twin2", display_name="Ama Twin")
    answer = await forum.command('!warn "Ama Twin" attention')
    assert "ambigu" in answer
    mark = forum.mod.mark()
    echo = await forum.command('!kick "kossi  unique" test')
    assert unique.user_id in echo
    await forum.wait_membership(unique.user_id, "leave", after=mark)
    # A look-alike of the moderator's name (bidi control, zero-width space) is not the
    # moderator: the echo shows the real id of whoever was targeted.
    fake = await forum.member("fake", display_name="A\u200bfi\u202e")
    echo = await forum.command("!warn Afi attention")
    assert "ambigu" in echo
    assert fake.user_id in echo
    assert forum.mod.user_id in echo
    assert "Personne" in await forum.command("!warn Inconnu attention")


async def test_dry_run_switch_and_ban_server(forum: Forum):
    assert "activée" in await forum.command("!simulation on")
    assert forum.bot.dry_run
    assert "désactivée" in await forum.command("!dry-run off")
    assert "Refusé" in await forum.command(f"!ban-server {forum.hs.server_name} nope")
    await forum.command("!ban-server spam.example raids")
    acl = await forum.mod.get_state_event(forum.topic, "m.room.server_acl")
    assert "spam.example" in acl["deny"]
    assert acl["allow"] == ["*"]
    rule = await forum.mod.get_state_event(
        forum.ids["policy"], "m.policy.rule.server", rule_state_key("spam.example")
    )
    assert rule["entity"] == "spam.example"
    # The room is still usable by local people.
    mark = forum.mod.mark()
    await forum.mod.send_text(forum.topic, "toujours là")
    await forum.mod.wait_for(is_message(forum.topic, forum.mod.user_id, "toujours là"), after=mark)
    status = await forum.command("!etat")
    assert "Simulation : non." in status
    assert f"Flood : {forum.bot.cfg.flood_messages} messages en 20 s." in status
    assert "Étapes : warn → mute:1h → ban" in status
    # Undone as easily: the rule is withdrawn and the ACL lets the server in again.
    echo = await forum.command("!unban-server spam.example")
    assert "spam.example" in echo
    acl = await forum.mod.get_state_event(forum.topic, "m.room.server_acl")
    assert "spam.example" not in acl["deny"]
    rule = await forum.mod.get_state_event(
        forum.ids["policy"], "m.policy.rule.server", rule_state_key("spam.example")
    )
    assert rule == {}
