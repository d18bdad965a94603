"""Commands about the protections: the dry run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..commands import Arg, Invocation, _, registry
from ..repositories import State

if TYPE_CHECKING:
    from ..bot import ModerationBot


@registry.command(
    "dry-run",
    aliases=("simulation",),
    args=(Arg("mode", "choice", choices=("on", "off")),),
    help=_("Protections only report (on) or act (off)."),
)
async def cmd_dry_run(bot: ModerationBot, inv: Invocation, mode: str) -> None:
    bot.consequences.turn(mode == "on")
    async with bot.sessionmaker() as s, s.begin():
        await State(s).set("dry_run", {"on": bot.dry_run})
    await bot.actions.audit(actor=inv.sender, action=f"dry-run:{mode}", target="*",
                            event_id=inv.event_id)  # fmt: skip
    body = (
        bot.t("Dry run is on: protections only report.")
        if bot.dry_run
        else bot.t("Dry run is off: protections act.")
    )
    await bot.management.reply(inv, body)
