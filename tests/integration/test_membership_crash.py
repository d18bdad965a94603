"""Kill the real service process (SIGKILL) between the consent record and the invite;
restart it; the person is invited exactly once and nothing else is done twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from sqlalchemy import delete, select, update

from bridge.models import QuotePermission
from forum.consent import ConsentRecords
from forum.settings import database_url
from forum.storage import Database, Outbox
from forum.storage.models import OutboxRow, ProcessedEvent, SyncToken
from moderation.membership.models import PersonRow
from moderation.membership.outbox import INVITE, NOTIFY, add_notice
from tests.harness import (
    PUBLICATION_Q,
    Forum,
    ForumStarter,
    forum_data,
    register_bots,
    settings_from,
)

pytestmark = pytest.mark.homeserver

ROOT = Path(__file__).resolve().parents[2]


async def start_process(config: Path, home: Path, *, crash: bool) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.harness",
        "serve-crash" if crash else "serve",
        str(config),
        str(home),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(f"service exited early ({await proc.wait()})")
            if line.strip() == b"READY":
                return proc


async def outbox_invites(db: Database, user_id: str) -> list[OutboxRow]:
    async with db.sessionmaker() as s:
        rows = await s.scalars(select(OutboxRow).where(OutboxRow.kind == INVITE))
        return [r for r in rows if r.payload.get("user_id") == user_id]


async def forget_handled(
    first: Forum, home: Path, user_id: str | None = None, **person: Any
) -> None:
    """As after a crash of the stopped forum ``first``: the membership bot forgets its sync
    token and which events it handled (they are replayed at the next start), and the
    person ``user_id`` loses the ``person`` values (a question's event id never recorded)."""
    bot = first.settings.membership_bot_id
    db = await Database.open(database_url(first.settings, home))
    try:
        async with db.sessionmaker() as s, s.begin():
            await s.execute(delete(SyncToken).where(SyncToken.account == bot))
            await s.execute(delete(ProcessedEvent).where(ProcessedEvent.account == bot))
            if user_id is not None:
                await s.execute(
                    update(PersonRow).where(PersonRow.user_id == user_id).values(**person)
                )
    finally:
        await db.close()


async def test_sigkill_between_consent_and_invite(synapse, make_user, tmp_path):
    data = forum_data(synapse)
    settings = settings_from(data)
    await register_bots(synapse, settings)
    config = tmp_path / "forum.toml"
    config.write_text(tomli_w.dumps(data), encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()

    proc = await start_process(config, home, crash=True)
    try:
        user = await make_user("crash")
        ids = {
            key: await user.resolve_alias(settings.alias_id(spec.alias))
            for key, spec in (
                ("space", settings.rooms.space),
                ("lobby", settings.rooms.lobby),
                ("announcements", settings.rooms.announcements),
            )
        }
        for t in settings.topics:
            ids[f"topic:{t.slug}"] = await user.resolve_alias(settings.alias_id(t.effective_alias))
        svc = Forum(synapse, settings, ids)  # the service runs in its own process
        await user.knock(ids["space"], "Bonjour, je voudrais participer", via=[synapse.server_name])
        room = await svc.wait_dm(user)
        await svc.wait_bot_text(user, room, "Charte")
        mark = user.mark()
        await user.send_text(room, "oui")
        await svc.wait_bot_text(user, room, *PUBLICATION_Q, after=mark)
        await user.send_text(room, "oui")
        async with asyncio.timeout(30):
            code = await proc.wait()
        assert code == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    # Killed after the commit: the consent and the queued invites are there, not sent.
    db = await Database.open(database_url(settings, home))
    try:
        async with db.sessionmaker() as s:
            status = await ConsentRecords(s).status(user.user_id)
        assert (status.charter_version, status.publication) == (1, True)
        pending = await outbox_invites(db, user.user_id)
        assert len(pending) == len(ids)
        assert all(r.done_at is None for r in pending)
    finally:
        await db.close()
    await svc.assert_nothing(
        user,
        lambda e: e["_section"] == "invite" and e["room_id"] in ids.values(),
        svc.own_marker(user, room),
        after=0,
        what="an invite sent before the crash",
    )

    proc = await start_process(config, home, crash=False)
    try:
        for room_id in ids.values():
            await user.wait_for_invite(room_id, timeout=30)
        await svc.wait_bot_text(user, room, "Vous êtes invité")
        # Give a replay a chance to do something twice, then count.
        await user.send_text(room, "!statut")
        await svc.wait_bot_text(user, room, "Charte : version 1")
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await proc.wait()
    space_invites = [
        e
        for e in user.events
        if e.get("_section") == "invite"
        and e["room_id"] == ids["space"]
        and e.get("type") == "m.room.member"
        and e.get("state_key") == user.user_id
        and e["content"].get("membership") == "invite"
    ]
    assert len(space_invites) == 1
    assert svc.dm_invites(user) == {room}
    welcomes = [
        e
        for e in user.events
        if e.get("room_id") == room and "Vous êtes invité" in e.get("content", {}).get("body", "")
    ]
    assert len(welcomes) == 1
    db = await Database.open(database_url(settings, home))
    try:
        rows = await outbox_invites(db, user.user_id)
        assert len(rows) == len(ids)
        assert all(r.done_at is not None for r in rows)
        async with db.sessionmaker() as s:
            records = await ConsentRecords(s).history(user.user_id)
        assert [r.scope for r in records] == ["charter", "publication"]
    finally:
        await db.close()


async def test_replayed_sync_does_nothing_twice(start_forum: ForumStarter, make_user, tmp_path):
    """The bot forgets its sync token and which events it handled, restarts, and sees
    every knock and answer again: still one DM, one invite, the same records."""
    home = tmp_path / "home"
    first = await start_forum("membership", home=home)
    try:
        user = await make_user("replay")
        room = await first.admit(user)
        space = first.ctx.rooms["space"]
    finally:
        await start_forum.stop(first)
    await forget_handled(first, home)
    second = await start_forum("membership", data=first.data, home=home)
    try:
        await second.ctx.membership_gateway.wait_synced(30)
        # A later person goes through: the replayed backlog was handled before her.
        later = await make_user("later")
        await second.admit(later)
        assert second.dm_invites(user) == {room}
        space_invites = [
            e
            for e in user.events
            if e.get("_section") == "invite"
            and e["room_id"] == space
            and e.get("type") == "m.room.member"
            and e.get("state_key") == user.user_id
        ]
        assert len(space_invites) == 1
        records = await second.history(user.user_id)
        assert [r.scope for r in records] == ["charter", "publication"]
        charters = [
            e
            for e in user.events
            if e.get("room_id") == room and "Charte de" in e.get("content", {}).get("body", "")
        ]
        assert len(charters) == 1
    finally:
        await start_forum.stop(second)


async def test_killed_between_asking_publication_and_recording_the_question(
    start_forum: ForumStarter, make_user, tmp_path
):
    """The bot asked the publication question and was killed before recording the
    question's id and the batch's token (seen in the fault suite): the charter answer is
    replayed at the next start and the question is asked again, but the person sees it
    once."""
    home = tmp_path / "home"
    first = await start_forum("membership", home=home)
    try:
        user = await make_user("asked")
        mark = user.mark()
        await user.knock(first.rooms["space"], "Bonjour", via=first.via)
        room = await first.wait_dm(user, after=mark)
        await first.wait_bot_text(user, room, "Charte de")
        mark = user.mark()
        await user.send_text(room, "oui")
        await first.wait_bot_text(user, room, *PUBLICATION_Q, after=mark)
        asked = user.mark()
    finally:
        await start_forum.stop(first)
    await forget_handled(first, home, user.user_id, question_event_id=None)
    second = await start_forum("membership", data=first.data, home=home)
    try:
        await second.ctx.membership_gateway.wait_synced(30)
        await second.assert_nothing(
            user,
            lambda e: e["room_id"] == room and "Encore une question" in e["content"]["body"],
            second.membership_marker(user, room),
            after=asked,
            what="the publication question asked twice",
        )
    finally:
        await start_forum.stop(second)


async def test_a_notice_sent_again_from_the_outbox_is_seen_once(
    start_forum: ForumStarter, make_user
):
    """The outbox delivers at least once: killed after a notice was sent but before the
    item was marked done, the next start sends it again. The person sees it once (the
    item's transaction id makes the homeserver return the same event)."""
    forum = await start_forum("membership")
    user = await make_user("notice")
    room = await forum.admit(user)
    async with forum.ctx.db.sessionmaker() as s, s.begin():
        await add_notice(Outbox(s), room, "AVIS-UNIQUE: une seule fois", "test:once")
    async with forum.ctx.db.sessionmaker() as s:
        item = await s.scalar(select(OutboxRow).where(OutboxRow.dedupe_key.like("%test:once")))
    assert item is not None
    executor = forum.feature("membership").outbox_executors[NOTIFY]
    await executor(item.payload)  # the worker may also have sent it: a replay either way
    await user.wait_for_text(room, "AVIS-UNIQUE")
    mark = user.mark()
    await executor(item.payload)
    await forum.assert_nothing(
        user,
        lambda e: e["room_id"] == room and "AVIS-UNIQUE" in e["content"]["body"],
        forum.membership_marker(user, room),
        after=mark,
        what="the notice shown twice",
    )


async def test_killed_between_sending_the_charter_and_recording_it(
    start_forum: ForumStarter, make_user, tmp_path
):
    """The bot sent the charter and was killed before recording the charter's event id
    and the batch's token (seen in the fault suite: "the bot said twice in the DM"): the
    knock is replayed at the next start and the charter sent again, but the person sees
    it once."""
    home = tmp_path / "home"
    first = await start_forum("membership", home=home)
    try:
        user = await make_user("charter")
        mark = user.mark()
        await user.knock(first.rooms["space"], "Bonjour", via=first.via)
        room = await first.wait_dm(user, after=mark)
        await first.wait_bot_text(user, room, "Charte de")
        sent = user.mark()
    finally:
        await start_forum.stop(first)
    await forget_handled(first, home, user.user_id, charter_event_id=None)
    second = await start_forum("membership", data=first.data, home=home)
    try:
        await second.ctx.membership_gateway.wait_synced(30)
        await second.assert_nothing(
            user,
            lambda e: e["room_id"] == room and "Charte de" in e["content"]["body"],
            second.membership_marker(user, room),
            after=sent,
            what="the charter sent twice",
        )
        # and the charter shown once still answers
        mark = user.mark()
        await user.send_text(room, "oui")
        await second.wait_bot_text(user, room, *PUBLICATION_Q, after=mark)
    finally:
        await start_forum.stop(second)


async def test_a_quote_question_asked_again_after_a_crash_is_seen_once(
    start_forum: ForumStarter, make_user
):
    """The digest's quote question was sent and the service was killed before recording
    it (seen in the long fault run: "the bot said twice in the DM: > Message 0 de 14 ...
    Pouvons-nous citer"): the outbox asks again at the next start, but the person sees the
    question once (its transaction id comes from the message it is about)."""
    forum = await start_forum("membership", "digest", moderator=True, moderator_joins=())
    kossi = await make_user("kossi")
    dm = await forum.admit(kossi, publication=False)
    room = forum.room()
    await forum.join(kossi, room)
    await forum.join(forum.mod, room)
    target = await kossi.send_text(room, "QUOTE-ONCE: un message à citer")
    mark = kossi.mark()
    await forum.mod.react(room, target, "📰")
    await forum.wait_bot_text(kossi, dm, "QUOTE-ONCE", after=mark)
    asked = kossi.mark()
    collector = forum.feature("digest").collector
    async with forum.ctx.db.sessionmaker() as s, s.begin():
        await s.execute(delete(QuotePermission).where(QuotePermission.target == target))
    # the outbox item run again, as after a crash between sending and recording
    await collector.ask_from_outbox({"room_id": room, "target": target, "author": kossi.user_id})
    await forum.assert_nothing(
        kossi,
        lambda e: e["room_id"] == dm and "QUOTE-ONCE" in e["content"]["body"],
        forum.membership_marker(kossi, dm),
        after=asked,
        what="the quote question asked twice",
    )
