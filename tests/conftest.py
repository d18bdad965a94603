"""Shared fixtures, for every tier. Keep them in sections; add new ones under a section of
their own.

Tiers: ``tests/unit`` (no network, no database: milliseconds), ``tests/integration``
(the real Synapse and databases), ``tests/web`` (pages, feeds, the browser). Each test is
marked with its tier (``pytest -m unit``). Forums are started by :mod:`tests.harness`.

Fixtures that need a homeserver are session-scoped and live on the session event loop
(``loop_scope="session"``, the default set in pyproject.toml): one Synapse per run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import pytest_asyncio

from forum.homeserver import EmbeddedHomeserver, free_port
from tests.matrix_user import TestUser

pytest_plugins = ["tests.storage_fixtures", "tests.harness"]

TIERS = ("unit", "integration", "web")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier, the folder it lives in."""
    for item in items:
        tier = Path(str(item.path)).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


# =====================================================================================
# Homeserver: one real Synapse for the whole session
# =====================================================================================

TEST_SERVER_NAME = "forum.test"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def synapse(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedHomeserver]:
    """A started Synapse (loose rate limits, no sync cache) on a free loopback port.

    It loads synapse-http-antispam, calling a loopback port chosen now: a forum started
    with :func:`tests.harness.antispam_config` listens there (one at a time); when none
    does, every check fails open at once (connection refused)."""
    directory: Path = tmp_path_factory.mktemp("synapse")
    from tests.harness import loopback_hook  # a plugin: imported once pytest loaded it

    hs = EmbeddedHomeserver(
        directory,
        server_name=TEST_SERVER_NAME,
        port=free_port(),
        for_tests=True,
        antispam=loopback_hook(),
    )
    await hs.start()
    try:
        yield hs
    finally:
        await hs.stop()


class SynapsePair(NamedTuple):
    a: EmbeddedHomeserver
    b: EmbeddedHomeserver


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def synapse_pair(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynapsePair]:
    """Two federating Synapse servers, started only when a test asks for them.

    Server names are IP literals ``127.0.0.1:<federation port>`` (no DNS or
    well-known needed); each has a TLS federation listener with a self-signed
    certificate and its client API on another free port. ``a`` loads the spam-checker
    module as the session Synapse does (a forum started with ``antispam_config(a)``
    answers it; with none, every check fails open at once).
    """
    from tests.harness import federating  # a plugin: imported once pytest loaded it

    servers = [
        federating(tmp_path_factory.mktemp(f"synapse-fed-{label}"), antispam=label == "a")
        for label in ("a", "b")
    ]
    try:
        await asyncio.gather(*(hs.start() for hs in servers))
        yield SynapsePair(servers[0], servers[1])
    finally:
        for hs in servers:
            await hs.stop()


# =====================================================================================
# Test users: people acting on the homeserver
# =====================================================================================

MakeUser = Callable[..., Awaitable[TestUser]]
MakeUserOn = Callable[..., Awaitable[TestUser]]


@pytest_asyncio.fixture
async def make_user_on() -> AsyncIterator[MakeUserOn]:
    """``await make_user_on(hs, "alice", **kw)``: a registered, logged-in, syncing user
    on homeserver ``hs`` (see ``TestUser.create`` for ``kw``); closed after the test."""
    users: list[TestUser] = []

    async def factory(hs: EmbeddedHomeserver, name: str = "user", **kw: Any) -> TestUser:
        user = await TestUser.create(hs, name, **kw)
        users.append(user)
        return user

    try:
        yield factory
    finally:
        for user in users:
            await user.close()


@pytest_asyncio.fixture
async def make_user(synapse: EmbeddedHomeserver, make_user_on: MakeUserOn) -> MakeUser:
    """``await make_user("alice", **kw)``: a user on the session ``synapse``; a unique
    localpart ``alice-<random>``; closed after the test."""

    async def factory(name: str = "user", **kw: Any) -> TestUser:
        return await make_user_on(synapse, name, **kw)

    return factory
