"""Provisioning against the real Synapse, seen by members as they would see it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import tomli_w

from forum.provisioning import provision
from tests.harness import CONFIG_DIR, ForumStarter, forum_data, register_bots, settings_from
from tests.matrix_user import MatrixRequestError

pytestmark = pytest.mark.homeserver


async def test_layout_as_members_see_it(make_user, start_forum: ForumStarter):
    moderator = await make_user("mod")
    service = await start_forum(moderator=moderator, moderator_joins=())
    settings = service.settings
    ids = service.rooms
    space_id = ids["space"]

    outsider = await make_user("outsider")
    # The Space's hierarchy lists the topic rooms with their names and join rules.
    rooms = {r["room_id"]: r for r in await outsider.hierarchy(space_id)}
    for topic in settings.topics:
        room = rooms[ids[f"topic:{topic.slug}"]]
        assert room["name"] == topic.name["fr"]
        assert room["join_rule"] == "knock_restricted"
    assert rooms[space_id]["join_rule"] == "knock"
    assert rooms[ids["lobby"]]["join_rule"] == "public"
    assert ids["management"] not in rooms  # private: never listed

    # A non-member is refused a direct join to a topic room, and may knock.
    topic_room = ids["topic:droits-enfants"]
    with pytest.raises(MatrixRequestError) as refused:
        await outsider.join(topic_room, via=service.via)
    assert refused.value.status == 403
    await outsider.knock(topic_room, "Bonjour, je voudrais participer", via=service.via)

    # The lobby is public: anyone joins and reads the configured power levels.
    await outsider.join(settings.alias_id(settings.rooms.lobby.alias))
    pl = await outsider.get_state_event(ids["lobby"], "m.room.power_levels")
    assert pl["users"][moderator.user_id] == 50
    assert pl["users"][settings.moderation_bot_id] == 100
    assert pl["users"][settings.membership_bot_id] == 40
    assert (pl["invite"], pl["kick"], pl["ban"], pl["redact"]) == (40, 50, 50, 50)
    assert pl["users_default"] == 0

    # The moderator is invited everywhere, joins, and sees the same levels in a topic room.
    await moderator.wait_for_invite(ids["management"])
    await moderator.join(ids["management"], via=service.via)
    mpl = await moderator.get_state_event(ids["management"], "m.room.power_levels")
    assert mpl["users"][moderator.user_id] == 50
    rules = await moderator.get_state_event(ids["management"], "m.room.join_rules")
    assert rules["join_rule"] == "invite"
    await moderator.join(ids["announcements"], via=service.via)
    apl = await moderator.get_state_event(ids["announcements"], "m.room.power_levels")
    assert apl["events_default"] == 50  # only moderators post announcements
    hv = await moderator.get_state_event(ids["policy"], "m.room.history_visibility")
    assert hv["history_visibility"] == "world_readable"
    parent = await moderator.get_state_event(ids["announcements"], "m.space.parent", space_id)
    assert parent["via"] == service.via

    # The membership bot joined every room; a second run changes nothing.
    mem = await outsider.request("GET", f"/_matrix/client/v3/rooms/{ids['lobby']}/joined_members")
    assert settings.membership_bot_id in mem["joined"]
    again, _ = await provision(
        settings, service.ctx.moderation_gateway, service.ctx.db.sessionmaker, dry_run=True
    )
    assert again.changes == []
    assert again.problems == []


async def test_config_changes_are_applied(synapse, make_user, start_forum: ForumStarter):
    first_mod = await make_user("mod1")
    service = await start_forum(moderator=first_mod, moderator_joins=())
    data = service.data
    gw, sm = service.ctx.moderation_gateway, service.ctx.db.sessionmaker
    ids = dict(service.rooms)

    new_mod = await make_user("mod2")
    data["moderators"].append(new_mod.user_id)
    data["topics"][0]["name"]["fr"] = "Droits de l'enfant (renommé)"
    data["topics"].append(
        {
            "slug": "sante-ado",
            "alias": data["topics"][0]["alias"] + "-sante",
            "name": {"fr": "Santé des ados", "en": "Teen health"},
            "topic": {"fr": "Santé", "en": "Health"},
        }
    )
    removed = data["topics"].pop(1)
    changed = settings_from(data)

    the_plan, result = await provision(changed, gw, sm)
    assert result is not None
    assert not result.failed
    actions = {(c.action, c.room, c.event_type) for c in the_plan.changes}
    assert ("create_room", "topic:sante-ado", None) in actions
    assert ("set_state", "topic:droits-enfants", "m.room.name") in actions
    removed_id = ids[f"topic:{removed['slug']}"]
    assert result.detached == [removed_id]

    outsider = await make_user("reader")
    rooms = {r["room_id"]: r for r in await outsider.hierarchy(ids["space"])}
    assert rooms[ids["topic:droits-enfants"]]["name"] == "Droits de l'enfant (renommé)"
    assert rooms[result.room_ids["topic:sante-ado"]]["name"] == "Santé des ados"
    assert removed_id not in rooms  # detached, not deleted
    await new_mod.wait_for_invite(ids["topic:droits-enfants"])
    await new_mod.join(ids["topic:droits-enfants"], via=service.via)
    pl = await new_mod.get_state_event(ids["topic:droits-enfants"], "m.room.power_levels")
    assert pl["users"][new_mod.user_id] == 50

    again, _ = await provision(changed, gw, sm, dry_run=True)
    assert again.changes == []


async def test_cli_provision_json_then_nothing(synapse, tmp_path):
    data = forum_data(synapse)
    settings = settings_from(data)
    await register_bots(synapse, settings)
    for role in ("membership", "moderation"):
        data["bots"][role]["password"] = "${FORUM_TEST_" + role.upper() + "_PW}"
    env = dict(
        os.environ,
        FORUM_HOME=str(tmp_path / "home"),
        FORUM_TEST_MEMBERSHIP_PW=settings.bots.membership.password.get_secret_value(),
        FORUM_TEST_MODERATION_PW=settings.bots.moderation.password.get_secret_value(),
    )
    config = tmp_path / "forum.toml"
    config.write_text(tomli_w.dumps(data), encoding="utf-8")
    (tmp_path / "charter").symlink_to(CONFIG_DIR / "charter")

    def forum(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "forum", "--config", str(config), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    dry = forum("provision", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["dry_run"] is True
    assert sum(1 for c in planned["plan"] if c["action"] == "create_room") == 11

    first = forum("provision", "--json")
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert len(out["applied"]) == len(out["plan"]) > 11
    assert out["failed"] == []
    for secret in ("FORUM_TEST_MEMBERSHIP_PW", "FORUM_TEST_MODERATION_PW"):
        assert env[secret] not in first.stdout + first.stderr

    second = forum("provision")
    assert second.returncode == 0, second.stderr
    assert "Nothing to change" in second.stdout
