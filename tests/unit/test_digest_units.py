"""The digest's pure core and its store, without a homeserver: summariser, sanitiser,
weeks, relative links, answers, and a week built from rows on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bridge.collector import answer_of
from bridge.repositories import is_newspaper
from bridge.sanitize import clean_html, strip_reply_fallback
from bridge.site import relativize
from bridge.summarize import Summariser, language_of, sentences, tokens
from bridge.weeks import parse_week, previous_week, week_bounds, week_of


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
