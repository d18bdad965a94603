"""Settings: the real config loads; every kind of error names its key, value and expectation."""

from __future__ import annotations

import copy
import tomllib

import pytest

from forum.settings import DEFAULT_CONFIG, ConfigError, load_settings, parse_settings

BASE = tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))


def problems_of(mutate, env=None) -> list[str]:
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(ConfigError) as err:
        parse_settings(data, "test.toml", env=env or {})
    return [str(p) for p in err.value.problems]


def test_default_config_is_the_first_network():
    s = load_settings(DEFAULT_CONFIG, env={})
    assert s.forum.languages == ["fr", "en"]
    assert s.text(s.rooms.space.name) == "Espace commun"
    assert s.text(s.rooms.lobby.name) == "Accueil"
    assert len(s.topics) == 6
    assert {t.slug for t in s.topics} >= {"droits-enfants", "egalite-filles"}
    for t in s.topics:
        assert set(t.name) == {"fr", "en"}
        assert set(t.topic) == {"fr", "en"}
    assert s.power_levels.invite > s.power_levels.members
    assert s.membership_bot_id == "@accueil:localhost"
    assert s.moderator_ids == ["@moderatrice:localhost"]


@pytest.mark.parametrize(
    ("mutate", "path", "expected"),
    [
        (lambda d: d.pop("forum"), "forum", "required"),
        (lambda d: d["web"].update(port="eighty"), "web.port", "integer"),
        (lambda d: d["web"].update(port=70000), "web.port", "less than or equal"),
        (lambda d: d["homeserver"].update(mode="cloud"), "homeserver.mode", "'embedded'"),
        (lambda d: d["homeserver"].update(mode="external"), "homeserver", "url"),
        (lambda d: d["forum"].update(langauges=["fr"]), "forum.langauges", "no such option"),
        (lambda d: d["digest"].update(schedule="every monday"), "digest.schedule", "cron"),
        (lambda d: d["digest"].update(timezone="Lome"), "digest.timezone", "IANA"),
        (lambda d: d["bots"].update(lanes=0), "bots.lanes", "greater than or equal to 1"),
        (lambda d: d["topics"][1].update(alias="Bad Alias"), "topics[1].alias", "pattern"),
        (
            lambda d: d["topics"][2].update(slug="droits-enfants"),
            "slug used more than once",
            "droits-enfants",
        ),
        (lambda d: d["topics"][0]["name"].pop("fr"), "topics[0].name", "primary language"),
        (
            lambda d: d["rooms"]["lobby"]["name"].update(de="Willkommen"),
            "rooms.lobby.name",
            "not listed",
        ),
        (lambda d: d["power_levels"].update(invite=0), "power_levels", "consent gate"),
        (lambda d: d.update(moderators=["not a user!"]), "moderators[0]", "Matrix user id"),
        (lambda d: d.update(room_version="9"), "room_version", "'10'"),
        (lambda d: d["database"].update(url="sqlite:///x.db"), "database.url", "async"),
        (
            lambda d: d["bots"]["membership"].update(localpart="moderation"),
            "bots",
            "different localparts",
        ),
        (lambda d: d.update(topics=[]), "topics", "at least 1"),
    ],
)
def test_each_error_names_key_value_and_expectation(mutate, path, expected):
    found = problems_of(mutate)
    assert any(path in p and expected in p for p in found), found


def test_every_problem_is_reported_at_once():
    def many(d):
        d["web"]["port"] = "x"
        d["digest"]["timezone"] = "Nowhere/City"
        d["homeserver"]["colour"] = "blue"

    found = problems_of(many)
    assert len(found) == 3, found


def test_secrets_come_from_the_environment_and_are_never_shown():
    def with_env(d):
        d["bots"]["moderation"]["password"] = "${FORUM_MOD_PW}"

    data = copy.deepcopy(BASE)
    with_env(data)
    s = parse_settings(data, env={"FORUM_MOD_PW": "hunter2-secret"})
    assert s.bots.moderation.password.get_secret_value() == "hunter2-secret"
    assert "hunter2-secret" not in repr(s)
    assert "hunter2-secret" not in str(s.bots)
    missing = problems_of(with_env)
    assert any("FORUM_MOD_PW" in p and "bots.moderation.password" in p for p in missing)

    def bad_secret(d):
        d["bots"]["moderation"]["password"] = ["not", "a", "secret-value-xyz"]

    assert all("secret-value-xyz" not in p for p in problems_of(bad_secret))


def test_syntax_error_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[forum\nname = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(bad, env={})
    assert "valid TOML" in str(err.value)
    assert "line 1" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path / "absent.toml", env={})
    assert "readable file" in str(err.value)


# --- issue #11 point 6: power-level order, and no secret in any message ---------------


@pytest.mark.parametrize(
    ("members", "moderator", "invite", "membership_bot"),
    [(50, 50, 60, 60), (60, 50, 70, 70), (90, 50, 95, 95)],
)
def test_members_must_stay_below_moderators(members, moderator, invite, membership_bot):
    """Members at or above the moderators' level would be exempt from the protections
    and could curate: the checker refuses it, naming both levels."""

    def mutate(d):
        d["power_levels"].update(
            members=members, moderator=moderator, invite=invite, membership_bot=membership_bot
        )

    found = problems_of(mutate)
    assert any("power_levels" in p and "members" in p and "moderator" in p for p in found), found


def test_moderators_may_not_outrank_the_moderation_bot():
    found = problems_of(lambda d: d["power_levels"].update(moderator=100, moderation_bot=90))
    assert any("moderation_bot" in p for p in found), found


SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        # a database URL with the wrong scheme: its password sits in the userinfo
        (
            lambda d: d.setdefault("database", {}).update(url=f"postgres://forum:{SECRET}@db/x"),
            "database.url",
        ),
        (
            lambda d: d.setdefault("database", {}).update(
                url=f"mysql://forum@db/x?password={SECRET}&sslmode=require"
            ),
            "database.url",
        ),
        (
            lambda d: d["web"].update(
                public_url=f"ftp://user:{SECRET}@example.org/?token={SECRET}"
            ),
            "web.public_url",
        ),
        (
            lambda d: d["homeserver"].update(
                mode="external", url=f"https://bot:{SECRET}@matrix.example.org", server_name=7
            ),
            "homeserver.server_name",
        ),
        (lambda d: d["bots"]["moderation"].update(access_token=[SECRET]), "access_token"),
        (lambda d: d["bots"]["moderation"].update(password={"a": SECRET}), "password"),
    ],
)
def test_no_secret_is_ever_printed(mutate, path):
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(ConfigError) as err:
        parse_settings(data, "test.toml", env={})
    text = str(err.value)
    assert path in text, text
    assert SECRET not in text, text


def test_redact_hides_passwords_wherever_they_sit():
    from forum.settings import redact

    for value in (
        f"postgresql+asyncpg://forum:{SECRET}@db:5432/forum",
        f"https://db/x?sslmode=require&password={SECRET}",
        f"https://h/?access_token={SECRET}&x=1",
        f"connect to mysql://u:{SECRET}@h/x failed",
        f"password={SECRET} host=db",
    ):
        shown = redact(value)
        assert SECRET not in shown, shown
        assert "***" in shown, shown
    assert redact("postgresql+asyncpg://forum@db/forum") == "postgresql+asyncpg://forum@db/forum"


def test_report_limit_and_glob_threshold_are_settings_the_bot_takes():
    from moderation.bot.tuning import Tuning

    shipped = load_settings(DEFAULT_CONFIG, env={}).moderation
    assert (shipped.reports_per_hour, shipped.glob_force_above) == (5, 3)
    data = copy.deepcopy(BASE)
    data["moderation"].update(reports_per_hour=12, glob_force_above=7)
    settings = parse_settings(data, "test.toml", env={})
    assert (settings.moderation.reports_per_hour, settings.moderation.glob_force_above) == (12, 7)
    tuning = Tuning(settings.moderation)
    assert (tuning.reports_per_hour, tuning.glob_force_above) == (12, 7)


@pytest.mark.parametrize("key", ["reports_per_hour", "glob_force_above"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, "greater than or equal to 1"), (-2, "greater than"), ("many", "integer")],
)
def test_report_limit_and_glob_threshold_must_be_positive_integers(key, value, expected):
    found = problems_of(lambda d: d["moderation"].update({key: value}))
    assert any(f"moderation.{key}" in p and expected in p and str(value) in p for p in found), found
