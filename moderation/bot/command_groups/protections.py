"""Commands about the protections: the dry run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..commands import Arg, Invocation, _, registry
from ..repositories import State

if TYPE_CHECKING:
    from .context import CommandContext


@registry.command(
    "dry-run",
    aliases=("simulation",),
    args=(Arg("mode", "choice", choices=("on", "off")),),
    help=_("Protections only report (on) or act (off)."),
)
async def cmd_dry_run(ctx: CommandContext, inv: Invocation, mode: str) -> None:
    ctx.consequences.turn(mode == "on")
    async with ctx.sessionmaker() as s, s.begin():
        await State(s).set("dry_run", {"on": ctx.dry_run})
    await ctx.actions.audit(actor=inv.sender, action=f"dry-run:{mode}", target="*",
                            event_id=inv.event_id)  # fmt: skip
    body = (
        ctx.t("Dry run is on: protections only report.")
        if ctx.dry_run
        else ctx.t("Dry run is off: protections act.")
    )
    await ctx.management.reply(inv, body)
