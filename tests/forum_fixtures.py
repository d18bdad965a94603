"""A whole forum under test: settings derived from the real config/forum.toml, made unique
per test (aliases and bot accounts get a tag), bots registered on the session Synapse.

Import from the root conftest (``pytest_plugins``)."""

from __future__ import annotations

import copy
import secrets
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest_asyncio

from forum.app import Service
from forum.context import Feature
from forum.homeserver import EmbeddedHomeserver
from forum.settings import DEFAULT_CONFIG, Settings, parse_settings

CONFIG_DIR = DEFAULT_CONFIG.parent
_BASE = tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))


def forum_data(
    hs: EmbeddedHomeserver,
    *,
    tag: str | None = None,
    moderators: Iterable[str] = (),
    db_url: str | None = None,
) -> dict[str, Any]:
    """The real configuration as a dict, pointed at ``hs`` and made unique by ``tag``."""
    tag = tag or secrets.token_hex(3)
    data = copy.deepcopy(_BASE)
    data["homeserver"] = {
        "mode": "external",
        "url": hs.url,
        "server_name": hs.server_name,
        "max_retries": 8,
        "request_timeout_seconds": 30,
    }
    for role in ("membership", "moderation"):
        bot = data["bots"][role]
        bot["localpart"] = f"{bot['localpart']}-{tag}"
        bot["password"] = f"pw-{role}-{tag}"
    for room in data["rooms"].values():
        room["alias"] = f"{room['alias']}-{tag}"
    for topic in data["topics"]:
        topic["alias"] = f"{topic['slug']}-{tag}"
    data["moderators"] = list(moderators)
    data["demo"] = {"accounts": []}
    if db_url:
        data["database"] = {"url": db_url}
    return data


def settings_from(data: dict[str, Any]) -> Settings:
    return parse_settings(data, "test settings", env={})


async def register_bots(hs: EmbeddedHomeserver, settings: Settings) -> None:
    for bot, admin in ((settings.bots.moderation, True), (settings.bots.membership, False)):
        assert bot.password is not None
        await hs.register(
            bot.localpart,
            bot.password.get_secret_value(),
            admin=admin,
            display_name=bot.display_name,
        )


StartForum = Callable[..., Awaitable[Service]]


@pytest_asyncio.fixture
async def start_forum(synapse: EmbeddedHomeserver, tmp_path: Path) -> AsyncIterator[StartForum]:
    """Start whole services (bots, provisioning, web on a free port) on the test Synapse."""
    services: list[Service] = []

    async def factory(
        settings: Settings, *, features: list[Feature] | None = None, home: Path | None = None
    ) -> Service:
        await register_bots(synapse, settings)
        svc_home = home or tmp_path / f"home-{len(services)}"
        svc_home.mkdir(parents=True, exist_ok=True)
        service = Service(
            settings, config_dir=CONFIG_DIR, home=svc_home, features=features or [], web_port=0
        )
        services.append(service)
        await service.start()
        return service

    yield factory
    for service in reversed(services):
        await service.stop()
