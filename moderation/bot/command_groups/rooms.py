"""Commands about the rooms: lock and unlock the topic rooms, restore the join rules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..commands import Invocation, _, registry

if TYPE_CHECKING:
    from .context import CommandContext


async def _done(
    ctx: CommandContext, inv: Invocation, action: str, rooms: list[str], said: str, **values: Any
) -> None:
    """Audit a room-wide action and tell the moderators, in the bot's language."""
    await ctx.actions.audit(
        actor=inv.sender, action=action, target="*", rooms=rooms, event_id=inv.event_id
    )
    await ctx.management.reply(inv, ctx.t(said).format(who=inv.sender, **values))


@registry.command("lock", aliases=("verrouiller",), help=_("Make every topic room read-only."))
async def cmd_lock(ctx: CommandContext, inv: Invocation) -> None:
    rooms = await ctx.locks.lock()
    said = _("{who} locked the topic rooms ({n}). To undo: {cmd}")
    await _done(ctx, inv, "lock", rooms, said, n=len(rooms), cmd=f"{ctx.prefix}unlock")


@registry.command(
    "unlock",
    aliases=("deverrouiller", "déverrouiller"),
    help=_("Let members post again (and lift a join lock)."),
)
async def cmd_unlock(ctx: CommandContext, inv: Invocation) -> None:
    rooms = await ctx.locks.unlock()
    joins = await ctx.locks.unlock_joins()
    said = _("{who} unlocked the topic rooms ({n}).")
    await _done(ctx, inv, "unlock", rooms, said, n=len(set(rooms) | set(joins)))


@registry.command(
    "unlock-joins",
    aliases=("ouvrir-entrees", "ouvrir-entrées"),
    help=_("Restore the join rules after a join wave."),
)
async def cmd_unlock_joins(ctx: CommandContext, inv: Invocation) -> None:
    rooms = await ctx.locks.unlock_joins()
    said = _("{who} restored the join rules ({n} room(s)).")
    await _done(ctx, inv, "unlock-joins", rooms, said, n=len(rooms))
