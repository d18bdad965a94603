"""The moderation bot's pure parts, with no homeserver: each protection's decision
(:func:`moderation.bot.protections.evaluate`), the policy-list index and the power-level
changes both bots make."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

import pytest

from forum.gateway.powers import creators_of, without_creators
from forum.matrix import server_of
from forum.settings import ModerationSection
from moderation.bot.protections import (
    Facts,
    Sent,
    default_protections,
    evaluate,
    wants_join_time,
)
from moderation.policy_index import PolicyIndex, Rule
from moderation.powers import MUTED_LEVEL, muting, unmuting

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
SETTINGS = ModerationSection(
    words=["arnaque", "Escroquerie"],
    mention_limit=3,
    new_member_hours=24,
    flood_messages=3,
    flood_seconds=10,
)
RULES = default_protections()


def judge(content: dict[str, Any], **facts: Any) -> str | None:
    found = evaluate(RULES, content, "@a:x", Facts(SETTINGS, NOW, **facts))
    return None if found is None else found.kind


def text(body: str, **more: Any) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body, **more}


# --- protections ---------------------------------------------------------------------
def test_a_clean_message_is_no_offence() -> None:
    assert judge(text("Bonjour à toutes et à tous")) is None


@pytest.mark.parametrize("body", ["C'est une ARNAQUE", "une escroquérie ici", "arnaque!"])
def test_banned_words_ignore_case_and_accents(body: str) -> None:
    assert judge(text(body)) == "word"


def test_banned_words_are_whole_words() -> None:
    assert judge(text("les arnaqueurs")) is None


def test_banned_words_follow_the_settings_in_force() -> None:
    calm = SETTINGS.model_copy(update={"words": []})
    assert evaluate(RULES, text("arnaque"), "@a:x", Facts(calm, NOW)) is None


def test_mentions_beyond_the_limit() -> None:
    four = {"user_ids": [f"@u{i}:x" for i in range(4)]}
    assert judge(text("salut", **{"m.mentions": four})) == "mentions"
    three = {"user_ids": [f"@u{i}:x" for i in range(3)]}
    assert judge(text("salut", **{"m.mentions": three})) is None
    assert judge(text("@a:x @b:x @c:x @d:x")) == "mentions"


def test_links_and_media_from_a_new_member_only() -> None:
    link = text("voir https://spam.example/offre")
    image = {"msgtype": "m.image", "body": "photo.jpg", "url": "mxc://x/y"}
    new, old = NOW - timedelta(hours=2), NOW - timedelta(days=3)
    assert wants_join_time(RULES, link)
    assert wants_join_time(RULES, image)
    assert not wants_join_time(RULES, text("bonjour"))
    assert judge(link, joined_at=new) == "new-member-link"
    assert judge(image, joined_at=new) == "new-member-link"
    assert judge(link, joined_at=old) is None
    assert judge(link) is None  # never seen joining: not judged new
    assert judge(text("bonjour"), joined_at=new) is None
    html_link = text("voir ceci", formatted_body='<a href="https://x.example">ceci</a>')
    assert judge(html_link, joined_at=new) == "new-member-link"


def test_flood_takes_every_recent_message() -> None:
    recent = tuple(Sent(100.0 + i, "!r:x", f"$e{i}") for i in range(3))
    found = evaluate(RULES, text("encore"), "@a:x", Facts(SETTINGS, NOW, recent=recent))
    assert found is not None
    assert found.kind == "flood"
    assert found.earlier == tuple(("!r:x", f"$e{i}") for i in range(3))
    assert judge(text("encore"), recent=recent[:2]) is None


def test_the_first_protection_decides() -> None:
    """A banned word in a flood is reported as the word (the order is the list's)."""
    recent = tuple(Sent(100.0 + i, "!r:x", f"$e{i}") for i in range(3))
    assert judge(text("arnaque"), recent=recent) == "word"


def test_a_decision_is_pure() -> None:
    """The same inputs give the same answer, and nothing is remembered between calls."""
    content = text("voir https://spam.example", **{"m.mentions": {"user_ids": ["@b:x"]}})
    facts = Facts(SETTINGS, NOW, joined_at=NOW - timedelta(hours=1))
    first = evaluate(RULES, content, "@a:x", facts)
    assert first == evaluate(RULES, content, "@a:x", facts)
    assert content == text("voir https://spam.example", **{"m.mentions": {"user_ids": ["@b:x"]}})


# --- the policy-list index -----------------------------------------------------------
def test_policy_index_exact_globs_and_servers() -> None:
    index = PolicyIndex()
    index.set("k1", Rule("user", "@spammer:evil.example", "spam"))
    index.set("k2", Rule("user", "@bot_*:*", "bots"))
    index.set("k3", Rule("server", "*.bad.example", "bad"))
    index.set("k4", Rule("user", "*:worse.example", ""))
    index.set("k5", Rule("server", "plain.example", ""))
    assert index.user_rule("@spammer:evil.example") == ("k1", index.get("k1"))
    assert index.user_rule("@bot_7:anywhere.example") is not None
    assert index.user_rule("@bot:anywhere.example") is None
    assert index.user_rule("@a:x.bad.example") == ("k3", index.get("k3"))
    assert index.user_rule("@a:bad.example") is None  # the glob needs a subdomain
    assert index.user_rule("@a:worse.example") == ("k4", index.get("k4"))
    assert index.user_rule("@a:plain.example") == ("k5", index.get("k5"))
    assert index.server_rule("plain.example") is not None
    assert index.user_rule("@someone:good.example") is None
    index.remove("k3")
    assert index.user_rule("@a:x.bad.example") is None
    index.set("k1", Rule("user", "@other:evil.example", ""))  # replaced
    assert index.user_rule("@spammer:evil.example") is None
    assert len(index) == 4


def test_two_rules_with_one_entity_keep_it_banned_until_both_go() -> None:
    index = PolicyIndex()
    index.set("a", Rule("user", "@x*:s", ""))
    index.set("b", Rule("user", "@x*:s", ""))
    index.remove("a")
    assert index.user_rule("@xy:s") == ("b", index.get("b"))
    index.remove("b")
    assert index.user_rule("@xy:s") is None


def test_policy_index_agrees_with_walking_every_rule() -> None:
    """On random rules and users, the index finds a rule exactly when a walk through
    every rule with fnmatch does."""
    rng = random.Random(12)
    servers = ["a.example", "b.example", "x.a.example", "evil.org", "spam.net"]
    locals_ = ["bot", "bot_1", "bob", "spam99", "amina", "x"]
    pieces = ["*", "?", "bo", "t", "spam", "_", "9", ".example", "a", ":", "@"]
    index = PolicyIndex()
    rules: dict[str, Rule] = {}
    for i in range(300):
        kind = rng.choice(["user", "server"])
        if rng.random() < 0.4:
            entity = (
                f"@{rng.choice(locals_)}:{rng.choice(servers)}"
                if kind == "user"
                else rng.choice(servers)
            )
        else:
            entity = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 5)))
        rule = Rule(kind, entity, "")
        rules[f"k{i}"] = rule
        index.set(f"k{i}", rule)
    for key in rng.sample(sorted(rules), 60):
        index.remove(key)
        del rules[key]

    def walk(user: str) -> bool:
        return any(
            (r.kind == "user" and fnmatchcase(user, r.entity))
            or (r.kind == "server" and fnmatchcase(server_of(user), r.entity))
            for r in rules.values()
        )

    for local in locals_:
        for server in servers:
            user = f"@{local}:{server}"
            found = index.user_rule(user)
            assert (found is not None) == walk(user), user
            if found is not None:
                key, rule = found
                assert rules[key] == rule


# --- power levels --------------------------------------------------------------------
def test_muting_and_unmuting_change_only_what_they_must() -> None:
    pl: dict[str, Any] = {"users": {"@mod:x": 50}, "events_default": 0}
    assert muting("@a:x")(pl)
    assert pl["users"] == {"@mod:x": 50, "@a:x": MUTED_LEVEL}
    assert not muting("@a:x")(pl)  # already: nothing to write
    assert unmuting("@a:x")(pl)
    assert pl["users"] == {"@mod:x": 50}
    assert not unmuting("@a:x")(pl)
    assert not unmuting("@mod:x")(pl)  # a moderator's level is not a mute


def test_the_membership_bots_mutes_leave_locked_rooms_alone() -> None:
    locked: dict[str, Any] = {"users": {}, "events_default": 50}
    assert not muting("@a:x", open_rooms_only=True)(locked)
    assert muting("@a:x")(locked)  # the moderation bot mutes everywhere


def test_creators_of_a_v12_room_are_never_written_in_users() -> None:
    create = {"sender": "@bot:x", "content": {"room_version": "12"}}
    assert creators_of(create) == frozenset({"@bot:x"})
    assert creators_of({"sender": "@bot:x", "content": {"room_version": "11"}}) == frozenset()
    extra = {"sender": "@bot:x", "content": {"room_version": "12", "additional_creators": ["@c:x"]}}
    assert creators_of(extra) == frozenset({"@bot:x", "@c:x"})
    pl: dict[str, Any] = {"users": {"@a:x": 50}}
    muting("@bot:x")(pl)
    without_creators(pl, creators_of(create))
    assert pl == {"users": {"@a:x": 50}}


def test_every_rule_naming_a_user_is_found() -> None:
    """A member matched by several rules is banned under each (each one's removal is
    then weighed on its own)."""
    index = PolicyIndex()
    index.set("u", Rule("user", "@spam*:evil.example", ""))
    index.set("s", Rule("server", "evil.example", ""))
    index.set("o", Rule("user", "@other:evil.example", ""))
    assert [key for key, _ in index.user_rules("@spam1:evil.example")] == ["u", "s"]
