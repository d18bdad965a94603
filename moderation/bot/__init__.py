"""The moderation bot: commands, space-wide actions, policy lists, protections, reports
and the audit log. Entry points: :func:`setup` (a service component) and
:func:`add_commands` (the ``forum moderation`` subcommands)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forum.app import ServiceContext

__all__ = ["add_commands", "setup"]


async def setup(ctx: ServiceContext) -> None:
    """Register the moderation bot's handlers and background tasks on ``ctx``."""
    from .bot import ModerationBot

    bot = ModerationBot(ctx)
    await bot.start()
    setattr(ctx, "moderation_bot", bot)  # noqa: B010 - for tests and benchmarks


def add_commands(subparsers: Any) -> None:
    from .cli import add_commands as add

    add(subparsers)
