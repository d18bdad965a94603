"""Pure parts of the spam checker: the texts a client shows, the flood gate, verdicts and
the module's configuration (the listener: tests/web/test_antispam_listener.py)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from forum.events import Message
from forum.homeserver.config import ANTISPAM_CALLBACKS, antispam_module
from forum.settings import ConfigError, ModerationSection, parse_settings
from moderation.antispam.judge import ALLOW, Verdict, forget_refused
from moderation.bot.protections import (
    BannedWords,
    Facts,
    Flood,
    FloodWindows,
    Sent,
    evaluate,
)
from moderation.bot.text import html_text, message_texts
from tests.harness import BASE_CONFIG

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def message(content: dict[str, Any], event_id: str = "$e", sender: str = "@a:x") -> Message:
    return Message(
        room_id="!r:x",
        event_id=event_id,
        sender=sender,
        type="m.room.message",
        origin_server_ts=0,
        content=content,
        raw={"content": content},
        msgtype="m.text",
        body=str(content.get("body", "")),
    )


def test_html_text_keeps_what_a_reader_sees():
    assert html_text("<p>Quelle <b>AR</b>NAQUE</p><p>b &amp; c<br>d</p>") == (
        "Quelle ARNAQUE b & c d "
    )
    assert "evil" not in html_text("<script>evil()</script>ok")


def test_message_texts_cover_formatted_body_and_edits():
    content = {
        "body": "* salut",
        "formatted_body": "<i>salut</i>",
        "m.new_content": {"body": "nouveau", "formatted_body": "<b>caché</b>"},
    }
    assert message_texts(content) == ["* salut", "salut", "nouveau", "caché"]
    assert message_texts({"body": 3, "formatted_body": None}) == []


@pytest.mark.parametrize(
    "content",
    [
        {"body": "Quelle ARNÂQUE"},
        {"body": "salut", "formatted_body": "<p>salut <b>arnaque</b></p>"},
        {"body": "* salut", "m.new_content": {"body": "salut, arnaque"}},
        {"body": "* salut", "m.new_content": {"body": "x", "formatted_body": "<b>Arnaque</b>"}},
    ],
)
async def test_banned_word_anywhere_a_client_shows(content: dict[str, Any]):
    facts = Facts(ModerationSection(words=["arnaque"]), NOW)
    assert BannedWords().decide(content, "@a:x", facts) is not None


async def test_banned_word_not_inside_another_word_nor_in_markup():
    facts = Facts(ModerationSection(words=["arnaque"]), NOW)
    for content in (
        {"body": "arnaqueurs"},
        {"body": "ok", "formatted_body": '<a href="https://x/arnaque">lien</a>'},
    ):
        assert BannedWords().decide(content, "@a:x", facts) is None


def test_flood_gate_lets_the_rate_through_and_refuses_beyond():
    settings = ModerationSection(flood_messages=3, flood_seconds=60)
    windows = FloodWindows()

    def refused(sender: str, event_id: str, at: float) -> bool:
        recent = windows.record(sender, Sent(at, "!r:x", event_id), settings.flood_seconds)
        finding = evaluate([Flood()], {"body": "m"}, sender, Facts(settings, NOW, None, recent))
        if finding is not None:
            forget_refused(windows, sender, event_id)  # refused: not counted
        return finding is not None

    outcomes = [refused("@a:x", f"$e{i}", 1000.0 + i) for i in range(6)]
    assert outcomes == [False, False, True, True, True, True]
    assert not refused("@b:x", "$o", 1006.0)
    # once the window has passed, the rate is allowed again
    assert not refused("@a:x", "$later", 1000.0 + 61 + 1)


def test_verdict_json_is_what_synapse_hands_the_client():
    assert ALLOW.allowed
    v = Verdict("M_LIMIT_EXCEEDED", "trop vite", {"retry_after_ms": 1000}, rule="flood")
    assert not v.allowed
    assert v.as_json() == {
        "errcode": "M_LIMIT_EXCEEDED",
        "error": "trop vite",
        "retry_after_ms": 1000,
    }


def test_module_configuration_fails_open_on_every_callback():
    entry = antispam_module("http://127.0.0.1:8009/", "/secret")
    config = entry["config"]
    assert entry["module"] == "synapse_http_antispam.HTTPAntispam"
    assert config["base_url"] == "http://127.0.0.1:8009"
    assert config["authorization_path"] == "/secret"
    assert set(config["enabled_callbacks"]) == set(ANTISPAM_CALLBACKS)
    assert all(config["fail_open"][c] is True for c in ANTISPAM_CALLBACKS)
    assert "accept_make_join" not in ANTISPAM_CALLBACKS  # Synapse 1.163 refuses to start


def test_antispam_settings_refuse_a_short_secret_and_a_public_address():
    data = copy.deepcopy(BASE_CONFIG)
    data["antispam"] = {"secret": "court"}
    with pytest.raises(ConfigError) as info:
        parse_settings(data, "test.toml", env={})
    assert "antispam.secret" in str(info.value)
    assert "court" not in str(info.value)  # a secret is never shown
    data["antispam"] = {"host": "0.0.0.0"}
    with pytest.raises(ConfigError, match="antispam.host"):
        parse_settings(data, "test.toml", env={})
    data["antispam"] = {"secret": "${SPAM_SECRET}", "port": 9100}
    settings = parse_settings(data, "test.toml", env={"SPAM_SECRET": "x" * 20})
    assert settings.antispam.url == "http://127.0.0.1:9100"
    assert settings.antispam.enabled
