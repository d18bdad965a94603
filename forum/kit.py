"""The operator's kit: what a ``forum …`` command needs, opened once and closed after.

Every command of every package opens it the same way::

    async with OperatorKit.open(args) as kit:
        ...kit.settings, kit.db, await kit.rooms(), await kit.gateway("moderation")

The embedded homeserver is started only when a command needs it and no ``forum run``
already runs it, and stopped again when the command ends. Gateways opened through the kit
are logged in and closed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forum.bots import BotRole, bot_credentials, bot_gateway, embedded_homeserver
from forum.credentials import secure_home
from forum.gateway import Gateway
from forum.homeserver import EmbeddedHomeserver
from forum.homeserver.postgres import ensure_database
from forum.settings import Settings, config_dir_of, database_url, forum_home, load_settings
from forum.storage import Database
from forum.storage.repositories import RoomRegistry


def load(args: argparse.Namespace) -> Settings:
    """The settings named by ``--config`` (or ``$FORUM_CONFIG``, or the default file)."""
    return load_settings(getattr(args, "config", None))


@dataclass
class OperatorKit:
    settings: Settings
    home: Path
    config_dir: Path
    db: Database
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    _homeserver: EmbeddedHomeserver | None = None
    _homeserver_checked: bool = False

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, args: argparse.Namespace, settings: Settings | None = None
    ) -> AsyncIterator[OperatorKit]:
        """Settings and the database (migrated); everything opened is closed at the end."""
        settings = settings or load(args)
        home = forum_home()
        url = database_url(settings, home)
        await asyncio.to_thread(secure_home, home, url)
        await ensure_scaled_database(settings, url)
        db = await Database.open(url)
        kit = cls(settings, home, config_dir_of(getattr(args, "config", None)), db)
        try:
            async with kit._stack:
                yield kit
        finally:
            await db.close()

    async def rooms(self) -> dict[str, str]:
        """The forum's room ids by key, as provisioning stored them."""
        async with self.db.sessionmaker() as s:
            return {r.key: r.room_id for r in await RoomRegistry(s).all()}

    async def homeserver(self) -> EmbeddedHomeserver | None:
        """The embedded homeserver, started for this command unless ``forum run`` already
        runs it (then it is left running). None with an external homeserver."""
        if not self._homeserver_checked:
            self._homeserver = await homeserver_for_command(self.settings, self.home, self._stack)
            self._homeserver_checked = True
        return self._homeserver

    async def gateway(self, role: BotRole, device_name: str | None = None) -> Gateway:
        """A bot's gateway, logged in (with the embedded homeserver up); closed at the end."""
        await self.homeserver()
        creds = bot_credentials(self.settings, self.home)[role]
        gateway = bot_gateway(self.settings, self.db, role, creds, device_name)
        self._stack.push_async_callback(gateway.close)
        await gateway.login()
        return gateway


async def homeserver_for_command(
    settings: Settings, home: Path, stack: contextlib.AsyncExitStack
) -> EmbeddedHomeserver | None:
    """Start the embedded homeserver for a command unless another process runs it; the
    ``stack`` stops it again. None when the homeserver is external."""
    if settings.homeserver.mode != "embedded":
        return None
    hs = embedded_homeserver(settings, home)
    if not hs.running_elsewhere():
        # prepares its configuration in a thread; the scaled profile's workers take longer
        await hs.start(timeout=180 if hs.config.workers else 60)
        stack.push_async_callback(hs.stop)
    return hs


async def ensure_scaled_database(settings: Settings, url: str) -> None:
    """On the scaled profile the forum's PostgreSQL database is created when missing (its
    first start from a fresh clone); elsewhere the operator creates it."""
    embedded = settings.homeserver.embedded
    if settings.homeserver.mode != "embedded" or embedded.profile != "scaled":
        return
    if url.startswith("postgresql+asyncpg://"):
        await ensure_database(url)


def command_group(subparsers: Any, name: str, help: str) -> Any:
    """Add ``forum NAME ...`` and return its subcommands' parser collection."""
    group = subparsers.add_parser(name, help=help)
    return group.add_subparsers(dest=f"{name}_command", required=True)
