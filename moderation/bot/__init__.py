"""The moderation bot: commands, space-wide actions, policy lists, protections, reports
and the audit log. Entry point: :data:`FEATURE` (the bot's setup and its
``forum moderation ...`` commands)."""

from __future__ import annotations

from forum.context import Feature, ServiceContext
from forum.unreadable import UnreadableAnswer

from . import command_groups  # noqa: F401 - declares the commands on the registry
from .bot import ModerationBot
from .cli import add_commands

__all__ = ["FEATURE", "ModerationBot", "setup"]


async def setup(ctx: ServiceContext) -> ModerationBot:
    """Register the moderation bot's handlers and background tasks on ``ctx``."""
    bot = ModerationBot(
        settings=ctx.settings,
        gateway=ctx.moderation_gateway,
        sessionmaker=ctx.db.sessionmaker,
        forum_rooms=ctx.rooms,
        tasks=ctx.tasks,
        signals=ctx.signals,
        clock=ctx.clock,
        register=ctx.register,
    )
    await bot.start()
    UnreadableAnswer(
        ctx.moderation_gateway,
        ctx.i18n,
        language_of=ctx.register.language_of,
        answers=bot.answers_unreadable,
    ).register()
    # imported here: the spam checker is built on the bot's parts (an import cycle else)
    from moderation.antispam import start_antispam

    bot.antispam = await start_antispam(ctx, bot)
    return bot


FEATURE = Feature("moderation", setup, add_commands)
