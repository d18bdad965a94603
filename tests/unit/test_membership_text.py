"""The membership bot's reading of answers and its Markdown escaping (pure)."""

from __future__ import annotations

import pytest

from moderation.membership.text import (
    guess_language,
    is_acceptance,
    markdown_to_html,
    normalise,
    yes_no,
)


@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        ("J'accepte", True),
        ("j’ACCEPTE !!!", True),
        ("  Oui. ", True),
        ("I accept", True),
        ("yes", True),
        ("Accept", True),
        ("jaccepte", True),
        ("je n'accepte pas", False),
        ("no", False),
        ("", False),
    ],
)
def test_acceptance_forms(text, accepted):
    assert is_acceptance(text) is accepted


def test_yes_no_and_language_guess():
    assert (yes_no("Non !"), yes_no("YES"), yes_no("peut-être")) == (False, True, None)
    langs = ["fr", "en"]
    assert guess_language("Bonjour, je voudrais participer", langs) == "fr"
    assert guess_language("Hi, I want to join the forum", langs) == "en"
    assert guess_language("English", langs) == "en"
    assert guess_language("Français", langs) == "fr"
    assert guess_language("🙂 ???", langs) is None
    assert guess_language(None, langs) is None
    assert normalise("Élève  à l'école") == "eleve a l ecole"


def test_markdown_is_escaped():
    out = markdown_to_html("# T <b>\n\n1. **x** <script>alert(1)</script>\n2. y\n\nend & *it*")
    assert "<script>" not in out
    assert "&lt;script&gt;" in out
    assert "<h1>T &lt;b&gt;</h1>" in out
    assert "<ol>\n<li><strong>x</strong>" in out
    assert "<p>end &amp; <em>it</em></p>" in out
