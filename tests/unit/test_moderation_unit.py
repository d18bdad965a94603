"""Pure parts of the moderation bot: the command framework, text helpers, settings."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from forum.events import Membership, Message
from forum.settings import ConfigError, ModerationSection, parse_settings
from moderation.bot.bot import registry
from moderation.bot.commands import UsageError, parse_args
from moderation.bot.protections import Facts, Flood, FloodWindows, JoinWave
from moderation.bot.text import (
    fold,
    glob_match,
    mention_count,
    normalize_name,
    parse_duration,
    skeleton,
    word_pattern,
)
from moderation.bot.tuning import Tuning
from tests.harness import BASE_CONFIG as _BASE

_NOW = datetime(2026, 11, 30, tzinfo=UTC)


def parsed(line: str) -> tuple[str, dict[str, object]]:
    split = registry.split(line, "!")
    assert split is not None
    cmd, tokens = split
    return cmd.name, parse_args(cmd, tokens)


def test_commands_parse_typed_arguments_in_both_languages():
    assert parsed("!mute @a:x 10m trop fort") == (
        "mute",
        {"user": "@a:x", "duration": timedelta(minutes=10), "reason": "trop fort"},
    )
    assert parsed("!sourdine @a:x calmez-vous") == (
        "mute",
        {"user": "@a:x", "duration": None, "reason": "calmez-vous"},
    )
    assert parsed("!effacer @a:x 2h") == ("redact", {"user": "@a:x", "limit": timedelta(hours=2),
                                                      "reason": None})  # fmt: skip
    assert parsed("!redact @a:x 20 spam")[1]["limit"] == 20
    assert parsed('!warn "Ama Twin" soyez courtoise') == (
        "warn",
        {"user": "Ama Twin", "reason": "soyez courtoise"},
    )
    assert parsed("!DRY-RUN On") == ("dry-run", {"mode": "on"})
    assert registry.split("!unknown x", "!") is None
    assert registry.split("ban @a:x", "!") is None


@pytest.mark.parametrize(
    ("line", "usage"),
    [
        ("!warn @a:x", "!warn USER REASON"),
        ("!ban", "!ban USER [REASON]"),
        ("!dry-run maybe", "!dry-run on|off"),
        (
            "!case x ban",
            "!case NUMBER dismiss|redact|warn|mute|ban|classer|effacer|avertir|silence|bannir",
        ),
        ("!lock now", "!lock"),
    ],
)
def test_bad_arguments_give_the_usage_line(line, usage):
    split = registry.split(line, "!")
    assert split is not None
    with pytest.raises(UsageError) as err:
        parse_args(*split)
    assert err.value.command.usage("!") == usage


def test_every_command_has_french_and_english_names_and_help():
    for cmd in registry.commands:
        assert cmd.help, cmd.name
        assert cmd.aliases, cmd.name


def test_text_helpers():
    pattern = word_pattern(["arnaque", "Idiot"])
    assert pattern is not None
    assert pattern.search(fold("Quelle ARNÂQUE !"))
    assert pattern.search(fold("ídiot"))
    assert not pattern.search(fold("les arnaqueurs, idiotismes"))
    assert normalize_name("  Afi\u200b\u202e ") == "afi"
    assert skeleton("Аfі") == skeleton("Afi")  # Cyrillic А and і
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("soon") is None
    assert glob_match("@*:spam.example", "@bot1:spam.example")
    assert not glob_match("@*:spam.example", "@a:spam.example.org")
    assert mention_count({"m.mentions": {"user_ids": ["@a:x", "@b:x"]}}, "hi @c:x @a:x") == 3


def test_lookalike_names_share_a_skeleton():
    """Unicode's confusables data (UTS #39), not a hand-made table: scripts and forms
    that no short list covers still meet on the same skeleton."""
    same = [
        ("Moderatrice", "Ｍｏｄｅｒａｔｒｉｃｅ"),  # fullwidth
        ("Moderatrice", "𝐌𝐨𝐝𝐞𝐫𝐚𝐭𝐫𝐢𝐜𝐞"),  # mathematical bold
        ("Kossi", "Ꮶossі"),  # Cherokee K, Cyrillic i
        ("Amina", "Аmіnа"),  # Cyrillic a and i
        ("Paul", "Pau1"),  # digit one for l
        ("Ilona", "lIona"),  # capital I for small l
        ("Yao", "Ya0"),
        ("Afi", "A\u200bf\u202ei"),  # zero-width space, bidi override
        ("Élodie", "Elodie"),
    ]
    for real, fake in same:
        assert skeleton(real) == skeleton(fake), (real, fake)
    for a, b in [("Afi", "Ami"), ("Kossi", "Kassi"), ("Yao", "Yawo")]:
        assert skeleton(a) != skeleton(b), (a, b)


def test_moderation_settings_are_validated():
    data = dict(_BASE)
    data["moderation"] = {"steps": ["warn", "mute:soon"], "policy_lists": ["bans"]}
    with pytest.raises(ConfigError) as err:
        parse_settings(data, "t", env={})
    text = str(err.value)
    assert "moderation.steps[1]" in text
    assert "moderation.policy_lists" in text


def test_every_string_of_the_moderation_bot_is_in_both_catalogs():
    from babel.messages.extract import extract_from_dir
    from babel.messages.pofile import read_po

    bot_dir = Path(__file__).resolve().parents[2] / "moderation" / "bot"
    found = {
        msg if isinstance(msg, str) else msg[0]
        for _, _, msg, _, _ in extract_from_dir(
            bot_dir, method_map=[("**.py", "python")], keywords={"t": None, "_": None}
        )
    }
    assert len(found) > 50
    for lang in ("fr", "en"):
        with (bot_dir / "locale" / lang / "LC_MESSAGES" / "forum.po").open("rb") as fp:
            catalog = read_po(fp)
        have = {m.id for m in catalog if m.id}
        assert sorted(found - have) == [], lang
        if lang == "fr":
            assert all(m.string for m in catalog if m.id), "untranslated French messages"


def _message(sender: str, n: int, ts: int, age: int | None = None) -> Message:
    raw: dict[str, object] = {"origin_server_ts": ts}
    if age is not None:
        raw["unsigned"] = {"age": age}
    return Message(
        room_id="!r:x", event_id=f"$e{n}", sender=sender, type="m.room.message",
        origin_server_ts=ts, content={"body": "x"}, raw=raw, msgtype="m.text", body="x",
    )  # fmt: skip


@pytest.mark.parametrize(
    "stamp",
    [
        lambda i: 1_000_000_000_000 + i * 3_600_000,  # a remote server: an hour apart, long ago
        lambda i: 4_000_000_000_000 - i * 3_600_000,  # in the future, going backwards
        lambda i: 0,
    ],
)
async def test_flood_window_uses_the_receive_time_not_origin_server_ts(stamp):
    """A remote server sets origin_server_ts; five messages received at once are a flood
    whatever it says."""
    settings = ModerationSection(flood_messages=5, flood_seconds=10)
    windows, flood = FloodWindows(), Flood()
    found = None
    for i in range(5):
        ev = _message("@remote:evil.example", i, stamp(i))
        recent = windows.observe(ev, settings.flood_seconds)
        found = flood.decide(ev.content, ev.sender, Facts(settings, _NOW, recent=recent))
    assert found is not None
    assert len(found.earlier) == 5


async def test_flood_window_reads_the_homeservers_age():
    """``unsigned.age`` (how long ago the homeserver received the event) dates a message
    replayed late: messages received an hour apart are no flood."""
    settings = ModerationSection(flood_messages=3, flood_seconds=10)
    windows, flood = FloodWindows(), Flood()
    found = None
    for i in range(3):
        ev = _message("@a:x", i, 0, age=(2 - i) * 3_600_000)
        recent = windows.observe(ev, settings.flood_seconds)
        found = flood.decide(ev.content, ev.sender, Facts(settings, _NOW, recent=recent))
    assert found is None


async def test_join_wave_window_uses_the_receive_time():
    waves: list[int] = []

    class Consequences:
        async def join_wave(self, n: int, seconds: int) -> None:
            waves.append(n)

    class Switch:
        current = Consequences()

    class Locks:
        async def joins_locked(self) -> bool:
            return False

    tuning = Tuning(ModerationSection(join_wave_joins=3, join_wave_seconds=60))
    wave = JoinWave(tuning, locks=Locks(), consequences=Switch())  # type: ignore[arg-type]
    for i in range(3):  # remote joins stamped a day apart, received at once
        ev = Membership(
            room_id="!r:x", event_id=f"$j{i}", sender=f"@u{i}:evil.example",
            type="m.room.member", origin_server_ts=1_000_000_000_000 + i * 86_400_000,
            content={"membership": "join"}, raw={}, target=f"@u{i}:evil.example",
            membership="join", prev_membership=None,
        )  # fmt: skip
        await wave.joined_event(ev)
    assert waves == [3]


async def test_a_second_wave_seen_while_the_first_locks_the_rooms_locks_nothing_again():
    """Knocks are handled side by side (lanes): a second window fills while the first
    wave's rooms are being locked; it finds them locked and does not lock them twice."""
    waves: list[int] = []
    locking = asyncio.Event()
    release = asyncio.Event()

    class Locks:
        locked = False

        async def joins_locked(self) -> bool:
            return self.locked

    locks = Locks()

    class Consequences:
        async def join_wave(self, n: int, seconds: int) -> None:
            waves.append(n)
            locking.set()
            await release.wait()  # the rooms' join rules being written
            locks.locked = True

    class Switch:
        current = Consequences()

    tuning = Tuning(ModerationSection(join_wave_joins=2, join_wave_seconds=60))
    wave = JoinWave(tuning, locks=locks, consequences=Switch())  # type: ignore[arg-type]
    await wave.joined("@a:x", 100.0)
    first = asyncio.ensure_future(wave.joined("@b:x", 100.5))
    async with asyncio.timeout(5):
        await locking.wait()
    await wave.joined("@c:x", 101.0)
    second = asyncio.ensure_future(wave.joined("@d:x", 101.5))  # a full window again
    release.set()
    async with asyncio.timeout(5):
        await asyncio.gather(first, second)
    assert waves == [2]


def test_the_digest_preview_commands_are_in_the_help_and_left_to_the_digest():
    """The moderation bot lists the preview's commands and never answers them; the
    digest (bridge.preview) answers every name the help shows."""
    from bridge.preview import COMMANDS, command_of

    for names in COMMANDS.values():
        declared = registry.find(names[0])
        assert declared is not None, names
        assert declared.handler is None
        assert declared.answered_by == "digest"
        assert {command_of(n) for n in declared.names} == {names[0]}
