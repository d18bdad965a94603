"""Pure parts of the spam checker: the texts a client shows, the flood gate, verdicts and
the module's configuration (the listener: tests/web/test_antispam_listener.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from forum.events import Message
from forum.homeserver.config import ANTISPAM_CALLBACKS, antispam_module
from forum.settings import ConfigError, ModerationSection, parse_settings
from moderation.antispam.judge import ALLOW, FloodGate, Verdict
from moderation.bot.protections import BannedWords
from moderation.bot.text import html_text, message_texts
from moderation.bot.tuning import Tuning
from tests.harness import BASE_CONFIG


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
    words = BannedWords(Tuning(ModerationSection(words=["arnaque"])))
    assert await words.check(message(content)) is not None


async def test_banned_word_not_inside_another_word_nor_in_markup():
    words = BannedWords(Tuning(ModerationSection(words=["arnaque"])))
    for content in (
        {"body": "arnaqueurs"},
        {"body": "ok", "formatted_body": '<a href="https://x/arnaque">lien</a>'},
    ):
        assert await words.check(message(content)) is None


async def test_flood_gate_lets_the_rate_through_and_refuses_beyond():
    gate = FloodGate(Tuning(ModerationSection(flood_messages=3, flood_seconds=60)))
    outcomes = []
    for i in range(6):
        ev = message({"body": f"m{i}"}, event_id=f"$e{i}")
        gate.observe(ev)
        refused = await gate.check(ev) is not None
        if refused:
            gate.acted(ev)  # refused: not counted
        outcomes.append(refused)
    assert outcomes == [False, False, True, True, True, True]
    other = message({"body": "hi"}, event_id="$o", sender="@b:x")
    gate.observe(other)
    assert await gate.check(other) is None


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
