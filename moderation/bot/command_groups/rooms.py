"""Commands about the rooms: lock and unlock the topic rooms, restore the join rules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..commands import Invocation, _, registry

if TYPE_CHECKING:
    from ..bot import ModerationBot


async def _done(
    bot: ModerationBot, inv: Invocation, action: str, rooms: list[str], said: str, **values: Any
) -> None:
    """Audit a room-wide action and tell the moderators, in the bot's language."""
    await bot.actions.audit(
        actor=inv.sender, action=action, target="*", rooms=rooms, event_id=inv.event_id
    )
    await bot.management.reply(inv, bot.t(said).format(who=inv.sender, **values))


@registry.command("lock", aliases=("verrouiller",), help=_("Make every topic room read-only."))
async def cmd_lock(bot: ModerationBot, inv: Invocation) -> None:
    rooms = await bot.locks.lock()
    said = _("{who} locked the topic rooms ({n}). To undo: {cmd}")
    await _done(bot, inv, "lock", rooms, said, n=len(rooms), cmd=f"{bot.prefix}unlock")


@registry.command(
    "unlock",
    aliases=("deverrouiller", "déverrouiller"),
    help=_("Let members post again (and lift a join lock)."),
)
async def cmd_unlock(bot: ModerationBot, inv: Invocation) -> None:
    rooms = await bot.locks.unlock()
    joins = await bot.locks.unlock_joins()
    said = _("{who} unlocked the topic rooms ({n}).")
    await _done(bot, inv, "unlock", rooms, said, n=len(set(rooms) | set(joins)))


@registry.command(
    "unlock-joins",
    aliases=("ouvrir-entrees", "ouvrir-entrées"),
    help=_("Restore the join rules after a join wave."),
)
async def cmd_unlock_joins(bot: ModerationBot, inv: Invocation) -> None:
    rooms = await bot.locks.unlock_joins()
    said = _("{who} restored the join rules ({n} room(s)).")
    await _done(bot, inv, "unlock-joins", rooms, said, n=len(rooms))
