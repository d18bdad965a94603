"""Translations for everything people read: web pages now, bot messages too.

Catalogs are plain ``.po`` files in ``forum/locale/<lang>/LC_MESSAGES/forum.po`` (source
strings in English). They are read and compiled in memory on first use, so there is no
compile step and no ``.mo`` file to keep in sync. A language without a catalog falls back
to the English source strings.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from babel.core import Locale, UnknownLocaleError, negotiate_locale
from babel.dates import format_date as _babel_format_date
from babel.dates import format_datetime as _babel_format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

log = logging.getLogger(__name__)

DOMAIN = "forum"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
_FALLBACK_LOCALE = "en"

Gettext = Callable[[str], str]
Ngettext = Callable[[str, str, int], str]


def catalog_path(lang: str, locale_dir: Path = LOCALE_DIR) -> Path:
    """Where the ``.po`` catalog of ``lang`` lives."""
    return locale_dir / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


def parse_accept_language(header: str | None) -> list[str]:
    """Language ranges of an ``Accept-Language`` header, most wanted first.

    Ranges with ``q=0`` and malformed parts are dropped; equal weights keep their order.
    """
    if not header:
        return []
    weighted: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")):
        fields = [f.strip() for f in part.split(";")]
        tag = fields[0]
        if not tag or len(tag) > 35 or not all(c.isalnum() or c in "-_*" for c in tag):
            continue
        q = 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q <= 0.0:
            continue
        weighted.append((-min(q, 1.0), index, tag.replace("_", "-").lower()))
    weighted.sort()
    return [tag for _, _, tag in weighted]


class I18n:
    """The forum's languages (primary first) and their translations."""

    def __init__(self, languages: Sequence[str], locale_dir: Path = LOCALE_DIR) -> None:
        if not languages:
            raise ValueError("I18n needs at least one language")
        self.languages: tuple[str, ...] = tuple(languages)
        self.default: str = self.languages[0]
        self._locale_dir = locale_dir
        self._cache: dict[str, NullTranslations] = {}
        for lang in self.languages:  # read now, at startup: a broken catalog fails early
            self.translations(lang)

    # --- catalogs -------------------------------------------------------------------
    def translations(self, lang: str) -> NullTranslations:
        """Translations for ``lang`` (read and compiled once, then cached).

        The forum's languages are loaded by the constructor; another language is read on
        first use.
        """
        cached = self._cache.get(lang)
        if cached is None:
            cached = self._cache[lang] = self._load(lang)
        return cached

    def _load(self, lang: str) -> NullTranslations:
        path = catalog_path(lang, self._locale_dir)
        if not path.is_file():
            if lang != _FALLBACK_LOCALE:
                log.warning("no catalog for language %r (%s): English texts are used", lang, path)
            return NullTranslations()
        with path.open("rb") as fp:
            catalog = read_po(fp, locale=lang, domain=DOMAIN)
        buffer = io.BytesIO()
        write_mo(buffer, catalog)
        buffer.seek(0)
        return Translations(fp=buffer, domain=DOMAIN)

    def gettext(self, lang: str) -> Gettext:
        return self.translations(lang).gettext

    def ngettext(self, lang: str) -> Ngettext:
        return self.translations(lang).ngettext

    # --- choosing a language --------------------------------------------------------
    def negotiate(self, accept_language: str | None) -> str:
        """The best of our languages for an ``Accept-Language`` header (default: primary)."""
        preferred = [p for p in parse_accept_language(accept_language) if p != "*"]
        found = negotiate_locale(preferred, list(self.languages), sep="-")
        if found is None:
            return self.default
        found = found.lower()
        for lang in self.languages:
            if lang.lower() == found:
                return lang
        return self.default

    # --- formatting -----------------------------------------------------------------
    def locale(self, lang: str) -> Locale:
        """The Babel locale of ``lang`` (English when CLDR does not know it)."""
        try:
            return Locale.parse(lang)
        except (UnknownLocaleError, ValueError):
            return Locale.parse(_FALLBACK_LOCALE)

    def language_name(self, lang: str) -> str:
        """The name of ``lang`` in that language ("Français", "English")."""
        name = self.locale(lang).get_display_name(lang) if lang else None
        if not name:
            return lang
        return name[:1].upper() + name[1:]

    def format_date(self, value: dt.date, lang: str, format: str = "long") -> str:
        return _babel_format_date(value, format=format, locale=self.locale(lang))

    def format_datetime(
        self,
        value: dt.datetime,
        lang: str,
        format: str = "medium",
        tzinfo: dt.tzinfo | None = None,
    ) -> str:
        return _babel_format_datetime(value, format=format, tzinfo=tzinfo, locale=self.locale(lang))
