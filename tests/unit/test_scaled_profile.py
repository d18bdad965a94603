"""The scaled profile's settings and Synapse worker configuration (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from forum.homeserver.workers import WorkerLayout, postgres_args
from forum.settings import ConfigError, database_url, load_settings


def test_profile_and_persisters_come_from_the_environment(tmp_path: Path) -> None:
    plain = load_settings(env={})
    assert plain.homeserver.embedded.profile == "single"
    assert database_url(plain, tmp_path).startswith("sqlite+aiosqlite:///")

    env = {"FORUM_PROFILE": "scaled", "FORUM_EVENT_PERSISTERS": "3"}
    scaled = load_settings(env=env)
    assert scaled.homeserver.embedded.profile == "scaled"
    assert scaled.homeserver.embedded.scaled.event_persisters == 3
    assert database_url(scaled, tmp_path) == "postgresql+asyncpg://postgres@127.0.0.1:5432/forum"


@pytest.mark.parametrize(
    ("env", "where"),
    [
        ({"FORUM_PROFILE": "huge"}, "profile"),
        ({"FORUM_EVENT_PERSISTERS": "0"}, "event_persisters"),
        ({"FORUM_EVENT_PERSISTERS": "four"}, "event_persisters"),
    ],
)
def test_a_bad_profile_is_named(env: dict[str, str], where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env)
    assert where in str(caught.value)


def test_worker_layout_shards_events_over_the_persisters() -> None:
    layout = WorkerLayout(
        database_url="postgresql://synapse:s3cret@db.example:5433/matrix",
        event_persisters=3,
        base_port=9000,
    )
    config = layout.shared_config()
    persisters = ["event_persister1", "event_persister2", "event_persister3"]
    assert config["stream_writers"] == {"events": persisters}
    assert config["federation_sender_instances"] == ["federation_sender1"]
    assert config["redis"] == {"enabled": True, "host": "127.0.0.1", "port": 6379}
    names = {*persisters, "generic_worker1", "federation_sender1", "main"}
    assert set(config["instance_map"]) == names
    ports = [entry["port"] for entry in config["instance_map"].values()]
    assert sorted(ports) == list(range(9000, 9006))  # one listener each, no clash
    assert config["instance_map"]["main"]["port"] == layout.main_listener()["port"] == 9000
    assert config["database"] == {
        "name": "psycopg2",
        "args": {
            "user": "synapse",
            "password": "s3cret",
            "database": "matrix",
            "host": "db.example",
            "port": 5433,
            "cp_min": 5,
            "cp_max": 10,
        },
    }
    generic = next(w for w in layout.workers() if w.kind == "generic_worker")
    listener = layout.worker_config(generic, "/x/log.yaml")["worker_listeners"][0]
    assert listener["resources"] == [{"names": ["client", "replication"]}]


def test_a_database_url_without_a_database_is_refused() -> None:
    with pytest.raises(ValueError, match="DATABASE"):
        postgres_args("postgresql://postgres@127.0.0.1:5432")
