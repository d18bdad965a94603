"""Commands about the rooms: lock and unlock the topic rooms, restore the join rules."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..commands import Invocation, _, registry

if TYPE_CHECKING:
    from ..bot import ModerationBot


@registry.command("lock", aliases=("verrouiller",), help=_("Make every topic room read-only."))
async def cmd_lock(bot: ModerationBot, inv: Invocation) -> None:
    rooms = await bot.locks.lock()
    await bot.actions.audit(actor=inv.sender, action="lock", target="*", rooms=rooms,
                            event_id=inv.event_id)  # fmt: skip
    body = bot.t("%(who)s locked the topic rooms (%(n)d). To undo: %(cmd)s") % {
        "who": inv.sender,
        "n": len(rooms),
        "cmd": f"{bot.prefix}unlock",
    }
    await bot.management.reply(inv, body)


@registry.command(
    "unlock",
    aliases=("deverrouiller", "déverrouiller"),
    help=_("Let members post again (and lift a join lock)."),
)
async def cmd_unlock(bot: ModerationBot, inv: Invocation) -> None:
    rooms = await bot.locks.unlock()
    joins = await bot.locks.unlock_joins()
    await bot.actions.audit(actor=inv.sender, action="unlock", target="*", rooms=rooms,
                            event_id=inv.event_id)  # fmt: skip
    body = bot.t("%(who)s unlocked the topic rooms (%(n)d).") % {
        "who": inv.sender,
        "n": len(set(rooms) | set(joins)),
    }
    await bot.management.reply(inv, body)


@registry.command(
    "unlock-joins",
    aliases=("ouvrir-entrees", "ouvrir-entrées"),
    help=_("Restore the join rules after a join wave."),
)
async def cmd_unlock_joins(bot: ModerationBot, inv: Invocation) -> None:
    rooms = await bot.locks.unlock_joins()
    await bot.actions.audit(actor=inv.sender, action="unlock-joins", target="*", rooms=rooms,
                            event_id=inv.event_id)  # fmt: skip
    body = bot.t("%(who)s restored the join rules (%(n)d room(s)).") % {
        "who": inv.sender,
        "n": len(rooms),
    }
    await bot.management.reply(inv, body)
