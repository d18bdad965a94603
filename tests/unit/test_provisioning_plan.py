"""The provisioning plan is a pure function of the settings and what is observed."""

from __future__ import annotations

from types import SimpleNamespace

from forum.provisioning import (
    Observed,
    ObservedRoom,
    declared_power_levels,
    desired_layout,
    plan,
)
from tests.harness import forum_data, settings_from

#: what the settings need of a homeserver (none is started)
HS = SimpleNamespace(url="http://127.0.0.1:1", server_name="forum.test")


def test_plan_is_pure_and_complete():
    """With nothing on the homeserver, the plan creates every declared room, Space first."""
    settings = settings_from(forum_data(HS, moderators=["@m:forum.test"]))
    empty = Observed(rooms={}, alias_targets={})
    creates = [
        c
        for c in plan(settings, settings.moderation_bot_id, empty).changes
        if c.action == "create_room"
    ]
    assert [c.room for c in creates] == [
        r.key for r in desired_layout(settings, settings.moderation_bot_id)
    ]
    assert creates[0].room == "space"
    assert creates[0].content["creation_content"] == {"type": "m.space"}
    topic = next(c for c in creates if c.room.startswith("topic:"))
    rules = next(s for s in topic.content["initial_state"] if s["type"] == "m.room.join_rules")
    assert rules["content"]["join_rule"] == "knock_restricted"
    assert rules["content"]["allow"][0]["room_id"] == "<new:space>"
    assert topic.content["room_version"] in {"10", "11", "12"}


def test_plan_v12_keeps_creator_out_of_users():
    data = forum_data(HS)
    data["room_version"] = "12"
    settings = settings_from(data)
    for room in desired_layout(settings, settings.moderation_bot_id):
        assert settings.moderation_bot_id not in room.power_levels["users"]


def test_plan_reports_foreign_alias():
    settings = settings_from(forum_data(HS))
    lobby_alias = settings.alias_id(settings.rooms.lobby.alias)
    observed = Observed(rooms={}, alias_targets={lobby_alias: "!someone-else:forum.test"})
    result = plan(settings, settings.moderation_bot_id, observed)
    assert "lobby" not in {c.room for c in result.changes if c.action == "create_room"}
    assert any(lobby_alias in p for p in result.problems)
    assert isinstance(ObservedRoom("!x", {}).membership("@a:b"), type(None))


def test_declared_power_levels_keep_mutes_and_drop_other_undeclared_entries():
    settings = settings_from(forum_data(HS, moderators=["@m:forum.test"]))
    declared = desired_layout(settings, settings.moderation_bot_id)[0].power_levels
    current = {
        **declared,
        "users": {
            **declared["users"],
            "@muted:forum.test": -1,  # a mute: kept
            "@old-moderator:forum.test": 50,  # no longer declared: goes
            "@m:forum.test": -1,  # a declared moderator: the declared level wins
        },
    }
    want = declared_power_levels(current, declared)
    assert want["users"] == {**declared["users"], "@muted:forum.test": -1}
    assert want["users"]["@m:forum.test"] == 50
    assert {k: v for k, v in want.items() if k != "users"} == {
        k: v for k, v in declared.items() if k != "users"
    }
    assert declared_power_levels(None, declared) == declared
