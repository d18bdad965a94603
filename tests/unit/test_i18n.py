"""Catalogs parse, French is complete, and every string the code shows is in them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from forum.i18n import LOCALE_DIR, I18n, catalog_path, parse_accept_language

FORUM_DIR = Path(__file__).resolve().parents[2] / "forum"
LANGS = ["fr", "en"]


def load(lang: str) -> Catalog:
    with catalog_path(lang).open("rb") as fp:
        return read_po(fp, locale=lang, domain="forum")


def ids(catalog: Catalog) -> set[object]:
    return {m.id if isinstance(m.id, str) else tuple(m.id) for m in catalog if m.id}


@pytest.mark.parametrize("lang", LANGS)
def test_catalog_parses(lang: str) -> None:
    catalog = load(lang)
    assert catalog.locale is not None
    assert str(catalog.locale) == lang
    assert len(ids(catalog)) > 0
    assert not [m.id for m in catalog if m.id and m.fuzzy]
    # placeholders and plural forms agree between msgid and msgstr
    assert [(m.id, errs) for m, errs in catalog.check()] == []


def test_french_catalog_is_complete() -> None:
    untranslated = []
    for message in load("fr"):
        if not message.id:
            continue
        strings = (
            [message.string] if isinstance(message.string, str) else list(message.string or [])
        )
        if not all(s and s.strip() for s in strings):
            untranslated.append(message.id)
    assert untranslated == []


def test_catalogs_have_the_same_messages() -> None:
    assert ids(load("fr")) == ids(load("en"))


def test_every_string_of_the_web_app_is_in_the_catalogs() -> None:
    method_map = [("**/templates/**.html", "jinja2.ext:babel_extract"), ("**.py", "python")]
    options = {"**/templates/**.html": {"trimmed": "true", "extensions": "jinja2.ext.i18n"}}
    found = {
        msg
        for _, _, msg, _, _ in extract_from_dir(
            FORUM_DIR / "web", method_map=method_map, options_map=options
        )
    }
    assert found
    catalog = ids(load("fr"))
    assert sorted(map(str, found - catalog)) == []


def test_translations_are_used_and_cached() -> None:
    i18n = I18n(LANGS)
    assert i18n.gettext("fr")("Page not found") == "Page introuvable"
    assert i18n.gettext("en")("Page not found") == "Page not found"
    assert i18n.translations("fr") is i18n.translations("fr")
    # a language without a catalog shows the English source
    other = I18n(["ee", "fr"], locale_dir=LOCALE_DIR)
    assert other.gettext("ee")("Page not found") == "Page not found"
    assert i18n.ngettext("fr")("one", "many", 2) == "many"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "fr"),
        ("", "fr"),
        ("fr", "fr"),
        ("en", "en"),
        ("EN-us", "en"),
        ("en-US;q=0.9", "en"),
        ("fr;q=0.5, en;q=0.9", "en"),
        ("de, en-GB;q=0.8, fr;q=0.7", "en"),
        ("en;q=0, fr;q=0.1", "fr"),
        ("*", "fr"),
        ("garbage;q=abc,,;", "fr"),
        ("<script>", "fr"),
    ],
)
def test_negotiate(header: str | None, expected: str) -> None:
    assert I18n(LANGS).negotiate(header) == expected


def test_negotiate_defaults_to_the_primary_language() -> None:
    assert I18n(["en", "fr"]).negotiate("de") == "en"


def test_parse_accept_language_orders_by_weight() -> None:
    assert parse_accept_language("a;q=0.2, b, c;q=0.5, d;q=0") == ["b", "c", "a"]


def test_dates_in_the_readers_language() -> None:
    i18n = I18n(LANGS)
    day = dt.date(2026, 6, 23)
    assert i18n.format_date(day, "fr") == "23 juin 2026"
    assert i18n.format_date(day, "en") == "June 23, 2026"
    moment = dt.datetime(2026, 6, 23, 8, 0, tzinfo=dt.UTC)
    assert "2026" in i18n.format_datetime(moment, "fr")
    assert i18n.language_name("fr") == "Français"
    assert i18n.language_name("en") == "English"
