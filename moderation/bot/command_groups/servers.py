"""Commands about whole homeservers: ban-server, unban-server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..commands import Arg, Invocation, _, registry
from ..text import glob_match

if TYPE_CHECKING:
    from .context import CommandContext


@registry.command(
    "ban-server",
    aliases=("bannir-serveur",),
    args=(Arg("server", "word"), Arg("reason", "text")),
    help=_("Ban a whole homeserver (policy rule and server ACL)."),
)
async def cmd_ban_server(ctx: CommandContext, inv: Invocation, server: str, reason: str) -> None:
    if glob_match(server, ctx.server_name):
        await ctx.management.reply(
            inv, ctx.t("Refused: that would ban this forum's own homeserver.")
        )
        return
    await ctx.actions.publish_rule("server", server, reason)
    rooms = await ctx.actions.deny_server(server)
    await ctx.actions.audit(actor=inv.sender, action="ban-server", target=server, rooms=rooms,
                            reason=reason, event_id=inv.event_id)  # fmt: skip
    await ctx.management.echo(
        inv, ctx.t("banned the server"), server, rooms, reason,
        undo=f"{ctx.prefix}unban-server {server}",
    )  # fmt: skip


@registry.command(
    "unban-server",
    aliases=("debannir-serveur",),
    args=(Arg("server", "word"),),
    help=_("Lift a server ban (policy rule and server ACL)."),
)
async def cmd_unban_server(ctx: CommandContext, inv: Invocation, server: str) -> None:
    await ctx.actions.withdraw_rule("server", server)
    rooms = await ctx.actions.allow_server(server)
    await ctx.actions.audit(actor=inv.sender, action="unban-server", target=server, rooms=rooms,
                            event_id=inv.event_id)  # fmt: skip
    await ctx.management.echo(inv, ctx.t("lifted the ban of the server"), server, rooms, None)
