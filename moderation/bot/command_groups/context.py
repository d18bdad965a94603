"""What the commands of the management room receive: the parts of the moderation bot
they use, and nothing else (no command module sees the bot). The bot builds one
:class:`CommandContext` when it builds its parts; the command runtime hands it to
every handler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from forum.context import Registrations, Rooms
    from forum.settings import ModerationSection

    from ..actions import Actions
    from ..cases import CaseDesk
    from ..consequences import DryRunSwitch
    from ..locks import RoomLocks
    from ..management import ManagementRoom
    from ..policy import PolicyLists
    from ..sanctions import Sanctions
    from ..tuning import Tuning


@dataclass(frozen=True, kw_only=True, eq=False)
class CommandContext:
    """The parts a command may use: the bot's language and prefix, the management room
    (answers and echoes), the space-wide actions, sanctions, room locks, cases, policy
    lists, the dry-run switch, the protections' settings in force, the database and the
    registrations of the membership bot."""

    t: Callable[[str], str]
    """The bot's language (the forum's primary one)."""
    prefix: str
    server_name: str
    """This forum's homeserver (never banned by ``!ban-server``)."""
    sessionmaker: async_sessionmaker[AsyncSession]
    forum_rooms: Rooms
    management: ManagementRoom
    actions: Actions
    sanctions: Sanctions
    locks: RoomLocks
    cases: CaseDesk
    policy_lists: PolicyLists
    consequences: DryRunSwitch
    tuning: Tuning
    register: Registrations | None
    """Join requests waiting (``!pending``); ``None``: not known."""

    @property
    def cfg(self) -> ModerationSection:
        """The ``[moderation]`` settings in force."""
        return self.tuning.current

    @property
    def dry_run(self) -> bool:
        """Whether protections and policy rules only report."""
        return self.consequences.on
