"""The digest's pure core and its store, without a homeserver: summariser, sanitiser,
weeks, relative links, answers, and a week built from rows on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bridge.collector import answer_of
from bridge.repositories import is_newspaper
from bridge.sanitize import clean_html, mentioned, publishable
from bridge.site import relativize
from bridge.summarize import Summariser, language_of, sentences, tokens
from bridge.weeks import parse_week, previous_week, week_bounds, week_of
from forum.matrix import strip_reply_fallback


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


ALICE = "@alice:elsewhere.test"  # never consented
KOSSI = "@kossi:forum.test"  # consented; the digest calls him "Kossi A."
NAMES = {KOSSI: "Kossi A."}
NEUTRAL = "un·e membre"


def test_only_words_are_published():
    """Text, notices and emotes only: no location, file, image... (issue #10, point 6)."""
    for msgtype in ("m.text", "m.notice", "m.emote"):
        out = publishable(msgtype, "Bonjour à tous", "<p>Bonjour</p>", NAMES, NEUTRAL)
        assert out is not None
        assert out.body == "Bonjour à tous"
        assert out.html == "<p>Bonjour</p>"
    for msgtype, body in (
        ("m.location", "Chez moi geo:6.1319,1.2228"),
        ("m.file", "rapport-confidentiel.pdf"),
        ("m.image", "photo-de-famille.jpg"),
        ("m.audio", "voix.ogg"),
        ("m.video", "video.mp4"),
        ("org.example.custom", "quelque chose"),
        ("", "sans type"),
    ):
        assert publishable(msgtype, body, None, NAMES, NEUTRAL) is None, msgtype


def test_mention_pill_of_a_non_consenting_person_becomes_neutral():
    for href in (
        f"https://matrix.to/#/{ALICE}",
        "https://matrix.to/#/%40alice%3Aelsewhere.test?via=elsewhere.test",
        "matrix:u/alice:elsewhere.test",
    ):
        out = publishable(
            "m.text",
            "Alice Doe: merci !",
            f'<p><a href="{href}">Alice Doe</a>: merci !</p>',
            NAMES,
            NEUTRAL,
        )
        assert out is not None
        assert out.html is not None
        for text in (out.html, out.body):
            assert "alice" not in text.lower(), (href, text)
            assert "Doe" not in text
            assert "matrix.to" not in text
            assert "merci" in text
            assert NEUTRAL in text
        assert "<a" not in out.html
    assert mentioned(
        "Alice Doe: salut @bob:x.test", f'<a href="https://matrix.to/#/{ALICE}">Alice Doe</a>'
    ) == {ALICE, "@bob:x.test"}


def test_mention_pill_of_a_consenting_person_becomes_their_name():
    out = publishable(
        "m.text",
        "Kossi: bonne idée",
        f'<a href="https://matrix.to/#/{KOSSI}">Kossi</a>: bonne idée',
        NAMES,
        NEUTRAL,
    )
    assert out is not None
    assert out.html is not None
    assert "Kossi A." in out.html
    assert "Kossi A." in out.body
    for text in (out.html, out.body):
        assert KOSSI not in text
        assert "kossi:forum.test" not in text
        assert "matrix.to" not in text
    assert "<a" not in out.html


def test_bare_matrix_ids_in_the_plain_body():
    out = publishable(
        "m.text", f"Demandez à {ALICE} ou à {KOSSI}, ou à @bob:x.test.", None, NAMES, NEUTRAL
    )
    assert out is not None
    assert out.body == f"Demandez à {NEUTRAL} ou à Kossi A., ou à {NEUTRAL}."
    assert out.html is None
    # an e-mail address is not a Matrix ID
    out = publishable("m.text", "écrivez à contact@ecole.example", None, NAMES, NEUTRAL)
    assert out is not None
    assert out.body == "écrivez à contact@ecole.example"


def test_spoilers_are_dropped():
    out = publishable(
        "m.text",
        "La fin du film: LE-TRAITRE-EST-LE-MAIRE. Voilà.",
        '<p>La fin du film: <span data-mx-spoiler="fin">LE-TRAITRE-EST-LE-MAIRE</span>. Voilà.</p>',
        NAMES,
        NEUTRAL,
    )
    assert out is not None
    assert out.html is not None
    for text in (out.html, out.body):
        assert "TRAITRE" not in text
        assert "Voilà" in text
        assert "La fin du film" in text
    assert "LE-TRAITRE" not in clean_html("<span data-mx-spoiler>LE-TRAITRE</span> x")


def test_only_http_links_are_kept():
    html = (
        '<p><a href="javascript:alert(1)">jlink</a> <a href="mxc://x.test/abc">mlink</a> '
        '<a href="geo:6.13,1.22">glink</a> <a href="mailto:a@b.test">elink</a> '
        '<a href="data:text/html,x">dlink</a> '
        '<a href="https://ecole.example/a">slink</a> <a href="http://ecole.example/b">hlink</a></p>'
    )
    for clean in (
        clean_html(html),
        (publishable("m.text", "x", html, NAMES, NEUTRAL) or pytest.fail("dropped")).html or "",
    ):
        for bad in ("javascript", "mxc:", "geo:", "mailto:", "data:"):
            assert bad not in clean, (bad, clean)
        for text in ("jlink", "mlink", "glink", "elink", "dlink"):
            assert text in clean  # the words stay, the link goes
        assert 'href="https://ecole.example/a"' in clean
        assert 'href="http://ecole.example/b"' in clean
        assert clean.count("<a ") == 2


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
