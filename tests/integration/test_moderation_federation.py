"""Subscription to another community's policy list on the second homeserver: its rules
are enforced in every forum room, live additions too, and a removed rule is undone, even
when it was removed while the bot was down."""

from __future__ import annotations

import asyncio
import secrets
from urllib.parse import quote

import pytest

from moderation.bot.repositories import Audit
from tests.conftest import MakeUserOn, SynapsePair
from tests.harness import ForumStarter, antispam_config, eventually, is_membership
from tests.matrix_user import MatrixRequestError

pytestmark = pytest.mark.federation


async def test_remote_policy_list_rules_added_and_removed(
    synapse_pair: SynapsePair, make_user_on: MakeUserOn, tmp_path
) -> None:
    a, b = synapse_pair
    curator = await make_user_on(b, "curator")
    alias_name = f"bans-{secrets.token_hex(3)}"
    list_room = await curator.create_room(
        preset="public_chat",
        room_alias_name=alias_name,
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "world_readable"},
            }
        ],
    )
    early = await make_user_on(a, "early")
    await curator.put_state(
        list_room, "m.policy.rule.user", {"entity": early.user_id, "recommendation": "m.ban",
                                          "reason": "spam ailleurs"}, "r1",
    )  # fmt: skip

    mod = await make_user_on(a, "mod")
    home = tmp_path / "home"
    async with ForumStarter(a, lambda: tmp_path) as start_forum:
        forum = await start_forum(
            "moderation",
            moderator=mod,
            moderator_joins="*",
            moderation={"policy_lists": [f"#{alias_name}:{b.server_name}"]},
            home=home,
        )
        # A rule present when the bot subscribes is enforced at once (ahead of any join).
        await forum.mod.wait_for(
            lambda e: (
                e["type"] == "m.room.member"
                and e["state_key"] == early.user_id
                and e["content"]["membership"] == "ban"
            ),
            30,
        )
        member = await forum.member("member")
        mark = forum.mod.mark()
        await curator.put_state(
            list_room, "m.policy.rule.user", {"entity": member.user_id,
                                              "recommendation": "m.ban", "reason": "raid"}, "r2",
        )  # fmt: skip
        await forum.wait_membership(member.user_id, "ban", after=mark, timeout=30)
        ban = await forum.mod.get_state_event(forum.topic, "m.room.member", member.user_id)
        assert ban["reason"] == "raid"

        mark = forum.mod.mark()
        await curator.put_state(list_room, "m.policy.rule.user", {}, "r2")
        await forum.wait_membership(member.user_id, "leave", after=mark, timeout=30)
        actions: list[tuple[str, str]] = []

        async def unban_audited() -> bool:  # once lifted in every room, not only the topic
            async with forum.ctx.db.sessionmaker() as s:
                entries = await Audit(s).entries(member.user_id)
            actions[:] = [(e.action, e.source) for e in entries]
            return ("unban", "policy") in actions

        await eventually(unban_audited, 30, "the unban in the audit log")
        assert actions == [("ban", "policy"), ("unban", "policy")]
        # The moderator is never a target, even when a list names them.
        await curator.put_state(
            list_room, "m.policy.rule.user", {"entity": mod.user_id, "recommendation": "m.ban",
                                              "reason": "erreur"}, "r3",
        )  # fmt: skip
        # A later rule is the sync point: rules from one server arrive in order.
        victim = await forum.member("victim")
        mark = forum.mod.mark()
        await curator.put_state(
            list_room, "m.policy.rule.user", {"entity": "@victim-*:" + a.server_name,
                                              "recommendation": "m.ban"}, "r4",
        )  # fmt: skip
        await forum.wait_membership(victim.user_id, "ban", after=mark, timeout=30)
        member_ev = await forum.mod.get_state_event(forum.topic, "m.room.member", mod.user_id)
        assert member_ev["membership"] == "join"

        # A rule removed while the bot is down: its bans are lifted when it starts again.
        await start_forum.stop(forum)
        await curator.put_state(list_room, "m.policy.rule.user", {}, "r4")
        mark = forum.mod.mark()
        await start_forum(
            "moderation", data=forum.data, home=home, moderator=mod, moderator_joins=()
        )
        await forum.wait_membership(victim.user_id, "leave", after=mark, timeout=60)
        async with forum.ctx.db.sessionmaker() as s:
            actions = [(e.action, e.source) for e in await Audit(s).entries(victim.user_id)]
        assert actions == [("ban", "policy"), ("unban", "policy")]


async def test_a_wave_of_remote_knocks_is_decided_at_the_door(
    synapse_pair: SynapsePair, make_user_on: MakeUserOn, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Knocks from another server pass the spam checker before the homeserver stores them
    (Synapse checks every event it receives over federation): the join-wave protection
    counts them there, at the pace people knock. The bot's own count (from its sync) is
    switched off here: only the door can decide. (A knock of our own server's people is
    not shown to the module; the bot counts those from its sync.)"""
    a, b = synapse_pair
    mod = await make_user_on(a, "mod")
    async with ForumStarter(a, lambda: tmp_path) as start:
        forum = await start(
            "moderation",
            moderator=mod,
            moderator_joins="*",
            config=antispam_config(a),
            moderation={"join_wave_joins": 3, "join_wave_seconds": 60},
        )
        bot = forum.bot

        async def not_counted(ev: object) -> None:  # the bot never counts what its sync shows
            return None

        monkeypatch.setattr(bot.join_wave, "joined_event", not_counted)
        mark = forum.mod.mark()
        people = [await make_user_on(b, f"remoteknock{i}") for i in range(3)]
        await asyncio.gather(
            *(p.knock(forum.ids["space"], "Hello", via=[a.server_name]) for p in people)
        )
        await forum.management_message("!unlock-joins", after=mark, timeout=30)
        for room in bot.actions.topic_rooms:
            rules = await forum.mod.get_state_event(room, "m.room.join_rules")
            assert rules["join_rule"] == "knock"
        await forum.command("!unlock-joins")
        assert not bot.locks.doors_closed


async def test_a_strangers_direct_chat_with_the_moderation_bot_is_refused_at_the_door(
    synapse_pair: SynapsePair, make_user_on: MakeUserOn, tmp_path
) -> None:
    """With the spam checker on, a person of another server who is not a forum member
    cannot invite the moderation bot, even from a server where forum members live: the
    invitation fails at once with the reason, and the bot never receives it (without the
    checker, the bot declines it after the fact). A member of that server can."""
    a, b = synapse_pair
    mod = await make_user_on(a, "mod")
    async with ForumStarter(a, lambda: tmp_path) as start:
        forum = await start(
            "moderation", moderator=mod, moderator_joins="*", config=antispam_config(a)
        )
        friend = await make_user_on(b, "dmfriend")  # a forum member on the other server
        await mod.invite(forum.topic, friend.user_id)
        await friend.wait_for_invite(forum.topic, timeout=30)
        await friend.join(forum.topic, via=[a.server_name])
        stranger = await make_user_on(b, "dmstranger")
        # The rule reads the forum's members from the homeserver. On a loaded machine the
        # first reading can outlast the check's deadline: that invitation is let through
        # (fail-open, and the bot declines it later), the reading goes on, and the next
        # invitation is judged from it. A few tries, each in a new room.
        refusal: MatrixRequestError | None = None
        for _ in range(5):
            dm = await stranger.create_room(preset="trusted_private_chat")
            try:
                await stranger.invite(dm, forum.bot_id)
            except MatrixRequestError as exc:
                refusal = exc
                break
        assert refusal is not None, "five invitations of the bot let through"
        assert refusal.errcode == "M_FORBIDDEN", refusal
        assert "ne parle qu'avec les membres du forum" in str(refusal.body), refusal
        members = await stranger.request("GET", f"/_matrix/client/v3/rooms/{quote(dm)}/members")
        assert forum.bot_id not in {e["state_key"] for e in members["chunk"]}
        friendly = await friend.create_room(
            is_direct=True, invite=[forum.bot_id], preset="trusted_private_chat"
        )
        await friend.wait_for(is_membership(friendly, forum.bot_id, "join"), 30)
