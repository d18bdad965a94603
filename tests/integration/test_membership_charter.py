"""A new charter version: every member is asked again; after the grace period (0 days
here) who has not accepted may no longer post (or is removed); accepting restores it.
Restarts are part of the story: state survives them and nothing is done twice."""

from __future__ import annotations

import copy

import pytest

from tests.harness import ForumStarter, config_dir_with_charters, is_membership
from tests.matrix_user import MatrixRequestError, TestUser

pytestmark = pytest.mark.homeserver


async def can_post(user: TestUser, room: str) -> bool:
    try:
        await user.send_text(room, "Bonjour à toutes et à tous")
    except MatrixRequestError as exc:
        if exc.status != 403:
            raise
        return False
    return True


async def test_new_charter_mute_restore_and_remove(start_forum: ForumStarter, make_user, tmp_path):
    config_dir = config_dir_with_charters(tmp_path / "config", versions=(1, 2, 3))
    home = tmp_path / "home"
    first = await start_forum("membership", home=home, config_dir=config_dir)
    data = first.data
    try:
        topic = first.ctx.rooms.topic_ids["droits-jeunes"]
        amina = await make_user("amina")
        kossi = await make_user("kossi")
        amina_dm = await first.admit(amina)
        kossi_dm = await first.admit(kossi, publication=False)
        for user in (amina, kossi):
            await user.join(first.ctx.rooms["space"], via=first.via)
            await user.join(topic, via=first.via)
        assert await can_post(amina, topic)
    finally:
        await start_forum.stop(first)

    # Version 2, grace 0 days, mute on expiry.
    v2 = copy.deepcopy(data)
    v2["membership"]["charter"].update({"version": 2, "grace_days": 0, "on_expiry": "mute"})
    marks = {u.user_id: u.mark() for u in (amina, kossi)}
    second = await start_forum("membership", data=v2, home=home, config_dir=config_dir)
    try:
        asked = await second.wait_bot_text(
            amina, amina_dm, "La charte a changé", after=marks[amina.user_id]
        )
        assert "Version 2" in asked["content"]["body"]
        k_asked = await second.wait_bot_text(
            kossi, kossi_dm, "La charte a changé", after=marks[kossi.user_id]
        )
        # The grace period is over at once: both are muted in the topic room.
        await second.wait_bot_text(amina, amina_dm, "ne pouvez plus écrire")
        pl = await amina.get_state_event(topic, "m.room.power_levels")
        assert pl["users"][amina.user_id] == -1
        assert not await can_post(amina, topic)
        # Accepting (a reply for one, a reaction for the other) gives the voice back.
        mark = amina.mark()
        await amina.send_text(amina_dm, "J'accepte")
        await second.wait_bot_text(amina, amina_dm, "version 2 est enregistrée", after=mark)
        assert await can_post(amina, topic)
        await second.wait_bot_text(kossi, kossi_dm, "ne pouvez plus écrire")
        mark = kossi.mark()
        await kossi.react(kossi_dm, k_asked["event_id"], "✅")
        await second.wait_bot_text(kossi, kossi_dm, "version 2 est enregistrée", after=mark)
        assert await can_post(kossi, topic)
        records = await second.history(amina.user_id)
        charters = [(r.charter_version, r.method) for r in records if r.scope == "charter"]
        assert charters == [(1, "reply"), (2, "reply")]
        row = await second.person(amina.user_id)
        assert row is not None
        assert (row.muted, row.reconsent_version, row.grace_deadline) == (False, None, None)
    finally:
        await start_forum.stop(second)

    # Version 3 with removal: kossi does not answer and is removed; one DM all along.
    v3 = copy.deepcopy(v2)
    v3["membership"]["charter"].update({"version": 3, "on_expiry": "remove"})
    third = await start_forum("membership", data=v3, home=home, config_dir=config_dir)
    try:
        space = third.ctx.rooms["space"]
        await third.wait_bot_text(kossi, kossi_dm, "retiré·e du forum", timeout=30)
        await kossi.wait_for(
            is_membership(space, kossi.user_id, "leave"),
            timeout=20,
        )
        assert (await third.person(kossi.user_id)).step == "left"
        assert third.dm_invites(kossi) == {kossi_dm}
        assert third.dm_invites(amina) == {amina_dm}
    finally:
        await start_forum.stop(third)
