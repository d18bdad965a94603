"""The digest's pure core and its store, without a homeserver: summariser, sanitiser,
weeks, relative links, answers, and a week built from rows on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bridge.collector import answer_of
from bridge.digest import build_week
from bridge.repositories import DigestStore, is_newspaper
from bridge.sanitize import clean_html, strip_reply_fallback
from bridge.site import relativize
from bridge.summarize import Summariser, language_of, sentences, tokens
from bridge.weeks import parse_week, previous_week, week_bounds, week_of
from forum.settings import load_settings


def test_summariser_picks_the_weeks_themes():
    texts = [
        "Les cantines scolaires aident les filles à rester à l'école. Bonne journée à tous.",
        "Merci pour la réunion d'hier.",
        "Dans mon village, les cantines scolaires ont fermé et les filles ont quitté l'école.",
        "We should write to the ministry about school canteens for girls.",
        "ok",
    ]
    s: Summariser[int] = Summariser(2)
    for t in texts:
        s.observe(t)
    for i, t in enumerate(texts):
        s.offer(t, i)
    points = s.key_points()
    assert [p.source for p in points] == [2, 0] or [p.source for p in points] == [0, 2]
    assert all("cantines scolaires" in p.text for p in points)
    assert all("Bonne journée" not in p.text for p in points)  # one sentence, not the message


def test_summariser_keeps_few_candidates():
    s: Summariser[int] = Summariser(3, candidates=5)
    for i in range(1000):
        s.observe(f"les filles et l'école numéro {i}")
    for i in range(1000):
        s.offer(f"les filles et l'école numéro {i}", i)
    assert len(s._heap) == 5
    assert len(s.key_points()) <= 3


def test_language_and_sentences():
    assert language_of("the girls and the schools are in the north") == "en"
    assert language_of("les filles et les écoles sont dans le nord") == "fr"
    assert sentences("M. Koffi est venu. Il a parlé des écoles.") == [
        "M. Koffi est venu.",
        "Il a parlé des écoles.",
    ]
    assert "les" not in tokens("les écoles et the schools")


def test_sanitiser_is_an_allow_list():
    dirty = (
        '<p onclick="x()">a<script>alert(1)</script><img src=x onerror=y>'
        '<a href="javascript:alert(1)">j</a><a href="https://ok.example">ok</a>'
        "<iframe src=//evil></iframe><style>p{}</style><mx-reply>quoted</mx-reply></p>"
    )
    clean = clean_html(dirty)
    for bad in ("script", "onclick", "onerror", "<img", "javascript", "iframe", "style", "quoted"):
        assert bad not in clean
    assert 'href="https://ok.example"' in clean
    assert strip_reply_fallback("> <@a:x> hello\n> more\n\nmy reply") == "my reply"


def test_weeks():
    start, end = week_bounds("2026-W48", "Africa/Lome")
    assert start == datetime(2026, 11, 23, tzinfo=UTC)
    assert end - start == timedelta(days=7)
    monday_8 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    assert previous_week(monday_8, "Africa/Lome") == "2026-W48"
    assert week_of(datetime(2026, 11, 29, 23, 30, tzinfo=UTC), "Europe/Paris") == "2026-W49"
    for bad in ("2026-48", "2026-W54", "x"):
        with pytest.raises(ValueError, match="week"):
            parse_week(bad)


def test_relative_links_and_answers():
    html = '<a href="/fr/">x</a><link href="/static/style.css?v=abc"><a href="https://m.to/">'
    assert relativize(html, 2) == (
        '<a href="../../fr/index.html">x</a><link href="../../static/style.css">'
        '<a href="https://m.to/">'
    )
    assert answer_of("Oui !") is True
    assert answer_of("no.") is False
    assert answer_of("peut-être") is None
    assert is_newspaper("📰")
    assert is_newspaper("📰\ufe0f")
    assert not is_newspaper("👍")


async def test_week_from_store_and_erasure(db):
    settings = load_settings()
    rooms = {f"topic:{t.slug}": f"!{t.slug}:x" for t in settings.topics}
    rooms["announcements"] = "!ann:x"
    slug = settings.topics[0].slug
    room = rooms[f"topic:{slug}"]
    week = "2026-W48"
    start, _ = week_bounds(week, settings.digest.timezone)
    async with db.sessionmaker() as s, s.begin():
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
