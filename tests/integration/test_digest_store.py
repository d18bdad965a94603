"""The digest's store on SQLite and PostgreSQL: a week built from stored rows, and erasure."""

from __future__ import annotations

from datetime import timedelta

from bridge.digest import build_week
from bridge.repositories import DigestStore
from bridge.weeks import week_bounds
from forum.consent import ConsentRow
from forum.settings import load_settings


async def test_week_from_store_and_erasure(db):
    settings = load_settings()
    rooms = {f"topic:{t.slug}": f"!{t.slug}:x" for t in settings.topics}
    rooms["announcements"] = "!ann:x"
    slug = settings.topics[0].slug
    room = rooms[f"topic:{slug}"]
    week = "2026-W48"
    start, _ = week_bounds(week, settings.digest.timezone)
    async with db.sessionmaker() as s, s.begin():
        # both consented to publication before the week (outputs show covered words only)
        for who in ("@a:x", "@b:x"):
            s.add(
                ConsentRow(
                    user_id=who,
                    scope="publication",
                    granted=True,
                    method="test",
                    created_at=start - timedelta(days=1),
                )
            )
        store = DigestStore(s)
        for i, (who, text) in enumerate(
            [
                ("@a:x", "Les cantines scolaires gardent les filles à l'école."),
                ("@a:x", "Les cantines scolaires manquent dans le nord du pays."),
                ("@b:x", "Les cantines scolaires et les filles, un sujet important."),
            ]
        ):
            ts = start + timedelta(hours=i + 1)
            await store.add_activity(f"$m{i}", room, "message", who, ts)
            await store.put_message(
                event_id=f"$m{i}",
                room_id=room,
                topic=slug,
                sender=who,
                display_name=who,
                body=text,
                html=None,
                ts=ts,
                reply_to=None,
                thread_root=None,
                edited=False,
                basis="consent",
            )
        await store.add_activity("$j", room, "join", "@c:x", start + timedelta(hours=5))
        await store.add_activity("$late", room, "message", "@c:x", start + timedelta(days=8))
        await store.mark("$m0", room, "@a:x", "À lire", "$r", "@mod:x", "ok")
    async with db.sessionmaker() as s:
        digest = await build_week(s, settings, rooms, week)
    topic = digest.topics[0]
    assert [h.heading for h in topic.highlights] == ["À lire"]
    assert (topic.messages, topic.participants, topic.new_members) == (3, 2, 1)
    assert topic.key_points
    assert all(k.event_id != "$m0" for k in topic.key_points)
    assert all(t.empty for t in digest.topics[1:])
    async with db.sessionmaker() as s, s.begin():
        assert await DigestStore(s).erase_user("@a:x") == 2
    async with db.sessionmaker() as s:
        digest = await build_week(s, settings, rooms, week)
    topic = digest.topics[0]
    assert topic.highlights == []
    assert all(k.author == "@b:x" for k in topic.key_points)
    assert (topic.messages, topic.participants) == (3, 2)  # the figures stay
    assert "@a:x" not in str(digest.to_json())


async def test_every_committed_change_moves_the_counter(db, db_url):
    """The change counter a running site polls: a committed change moves it, for every
    connection; a rollback or a read does not."""
    from forum.storage import Database

    async def version() -> int:
        async with db.sessionmaker() as s:
            return await DigestStore(s).version()

    before = await version()
    async with db.sessionmaker() as s, s.begin():
        await DigestStore(s).publish("2026-W48")
    after_publish = await version()
    assert after_publish > before

    async with db.sessionmaker() as s:
        await DigestStore(s).weeks()
        await DigestStore(s).get_state("export_dir")
    assert await version() == after_publish

    async with db.sessionmaker() as s:
        async with s.begin() as transaction:
            await DigestStore(s).publish("2026-W49")
            await transaction.rollback()
        async with s.begin():  # the same session, next transaction: nothing changed
            await DigestStore(s).weeks()
    assert await version() == after_publish

    other = await Database.open(db_url)  # another process's connection
    try:
        async with other.sessionmaker() as s, s.begin():
            assert await DigestStore(s).erase_user("@nobody:x") == 0
        async with other.sessionmaker() as s:
            assert await DigestStore(s).version() == after_publish + 1
    finally:
        await other.close()
    assert await version() == after_publish + 1
