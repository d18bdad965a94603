"""The one declared command registry (``moderation.commands``), shared by both bots: every
command either bot answers is declared, each declaration's help exists in French and
English, and the membership bot's parser and help come from the declarations."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from babel.messages.pofile import read_po

from forum.i18n import I18n
from moderation.bot.bot import registry
from moderation.commands import Command, UsageError, parse_line
from moderation.membership import approval, declared
from moderation.membership.commands import MemberCommands, find_name
from moderation.membership.shared import LOCALE_DIR as MEMBERSHIP_LOCALE

ROOT = Path(__file__).resolve().parents[2]
MODERATION_LOCALE = ROOT / "moderation" / "bot" / "locale"


def _catalog(locale_dir: Path, lang: str) -> dict[str, str]:
    with (locale_dir / lang / "LC_MESSAGES" / "forum.po").open("rb") as fp:
        return {m.id: m.string for m in read_po(fp) if m.id and isinstance(m.id, str)}


def _texts(cmd: Command) -> list[str]:
    texts = [cmd.help, *cmd.examples, *(a.help for a in cmd.flags), *(a.label for a in cmd.args)]
    return [t for t in (*texts, cmd.details) if t]


def _member_commands() -> MemberCommands:
    shared = SimpleNamespace(
        prefix="!", i18n=I18n(["fr", "en"], locale_dir=MEMBERSHIP_LOCALE), lang_of=lambda p: "fr"
    )
    return MemberCommands(shared, None, None)  # type: ignore[arg-type]


def test_every_command_the_moderation_bot_answers_is_declared_and_others_are_answered():
    """The moderation bot answers exactly the commands declared with a handler; those it
    leaves to the membership bot are that bot's own declarations (one object), those it
    leaves to the digest are answered by ``bridge.preview``."""
    from bridge.preview import COMMANDS, command_of

    names = [n for c in registry.commands for n in c.names]
    assert len(names) == len(set(names)), "a name declared twice"
    for cmd in registry.commands:
        if cmd.handler is not None:
            continue
        if cmd.answered_by == "membership":
            assert any(cmd is c for c in declared.management.commands), cmd.name
        else:
            assert cmd.answered_by == "digest", cmd.name
            assert {command_of(n) for n in cmd.names} == {cmd.name}
    for c in declared.management.commands:
        assert any(c is r for r in registry.commands), c.name
    assert {n for c in registry.commands if c.answered_by == "digest" for n in c.names} >= {
        n for names in COMMANDS.values() for n in names
    }


def test_every_command_the_membership_bot_answers_is_declared():
    """Each DM command has a handler, each handler a declaration; the management room's
    approve/deny are recognised by their declared names only."""
    commands = _member_commands()
    assert set(commands.handlers) == {c.name for c in declared.dm.commands}
    names = [n for c in declared.dm.commands for n in c.names]
    assert len(names) == len(set(names)), "a name declared twice"
    assert set(declared.APPROVE.names) == approval.APPROVE
    assert set(declared.DENY.names) == approval.DENY
    for cmd in [*declared.dm.commands, *declared.management.commands]:
        assert cmd.handler is None
        assert cmd.answered_by == "membership"


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("aide", "aide"),
        ("HELP", "aide"),
        ("statut", "statut"),
        ("status", "statut"),
        ("mes-données", "mes-donnees"),
        ("My-Data", "mes-donnees"),
        ("nom-public", "nom-public"),
        ("public-name", "nom-public"),
        ("withdraw", "retirer"),
        ("report", "signaler"),
        ("leave", "quitter"),
        ("publication", "publication"),
    ],
)
def test_the_membership_parser_uses_the_declared_names(written, expected):
    cmd = declared.dm.find(find_name(written))
    assert cmd is not None
    assert cmd.name == expected


def test_an_alias_declared_once_works_in_parse_and_help():
    """Every declared name is found by the parser and shown by the help."""
    commands = _member_commands()
    for lang in ("fr", "en"):
        text = commands.help_text(lang)
        for cmd in declared.dm.commands:
            for name in cmd.names:
                assert declared.dm.find(find_name(name)) is cmd
                assert f"!{name}" in text, (lang, name)


@pytest.mark.parametrize(
    ("registry_commands", "locale_dir"),
    [
        (lambda: declared.dm.commands, MEMBERSHIP_LOCALE),
        (lambda: registry.commands, MODERATION_LOCALE),
    ],
    ids=["membership", "moderation"],
)
def test_each_declared_commands_help_exists_in_french_and_english(registry_commands, locale_dir):
    fr, en = _catalog(locale_dir, "fr"), _catalog(locale_dir, "en")
    for cmd in registry_commands():
        assert cmd.help, cmd.name
        for text in _texts(cmd):
            assert text in en, (cmd.name, text)
            assert fr.get(text), (cmd.name, text)
    for cmd in declared.dm.commands:
        assert cmd.details, cmd.name
        assert cmd.examples, cmd.name


def test_the_details_of_one_command_in_french_and_english():
    commands = _member_commands()
    fr = commands.details_text("fr", "statut")
    assert fr.splitlines()[:2] == ["!statut", "vos consentements et votre adhésion"]
    assert {"Aussi : !status.", "  !statut"} <= set(fr.splitlines())
    en = commands.details_text("en", "!status")
    assert en.splitlines()[:2] == ["!status", "your consents and membership"]
    assert {"Also: !statut.", "  !status"} <= set(en.splitlines())
    assert commands.details_text("fr", "nom-public").splitlines()[0] == "!nom-public [NOM]"
    unknown = commands.details_text("en", "statu")
    assert unknown.startswith("Unknown command: !statu. Did you mean !statut?")
    assert "Commands:" in unknown


def test_the_membership_commands_arguments_are_parsed_by_the_registry():
    """The DM commands' arguments are parsed from their declarations (as the moderation
    bot's are): a text is taken as written, yes/no in any language, and a bad argument
    is a UsageError that the registry's messages explain in French and English."""
    assert parse_line(declared.PUBLIC_NAME, "  Ama d'Almeida l'aînée ") == {
        "name": "Ama d'Almeida l'aînée"
    }
    assert parse_line(declared.PUBLICATION, "pas d'accord") == {"answer": False}
    assert parse_line(declared.PUBLICATION, "Oui") == {"answer": True}
    assert parse_line(declared.WITHDRAW, "") == {"n": None}
    with pytest.raises(UsageError) as err:
        parse_line(declared.PUBLICATION, "peut-être")
    fr = I18n(["fr", "en"], locale_dir=MEMBERSHIP_LOCALE).gettext("fr")
    told = err.value.told("!", fr)
    assert told == "Utilisation : !publication oui|non (oui|non : peut-être n'est pas valable)"
    with pytest.raises(UsageError) as err:
        parse_line(declared.STATUS, "maintenant")
    assert err.value.told("!", str, name="status") == "Usage: !status (unexpected maintenant)"
