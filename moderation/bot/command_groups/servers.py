"""Commands about whole homeservers: ban-server, unban-server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..commands import Arg, Invocation, _, registry
from ..text import glob_match

if TYPE_CHECKING:
    from ..bot import ModerationBot


@registry.command(
    "ban-server",
    aliases=("bannir-serveur",),
    args=(Arg("server", "word"), Arg("reason", "text")),
    help=_("Ban a whole homeserver (policy rule and server ACL)."),
)
async def cmd_ban_server(bot: ModerationBot, inv: Invocation, server: str, reason: str) -> None:
    if glob_match(server, bot.settings.server_name):
        await bot.management.reply(
            inv, bot.t("Refused: that would ban this forum's own homeserver.")
        )
        return
    await bot.actions.publish_rule("server", server, reason)
    rooms = await bot.actions.deny_server(server)
    await bot.actions.audit(actor=inv.sender, action="ban-server", target=server, rooms=rooms,
                            reason=reason, event_id=inv.event_id)  # fmt: skip
    await bot.management.echo(
        inv, bot.t("banned the server"), server, rooms, reason,
        undo=f"{bot.prefix}unban-server {server}",
    )  # fmt: skip


@registry.command(
    "unban-server",
    aliases=("debannir-serveur",),
    args=(Arg("server", "word"),),
    help=_("Lift a server ban (policy rule and server ACL)."),
)
async def cmd_unban_server(bot: ModerationBot, inv: Invocation, server: str) -> None:
    await bot.actions.withdraw_rule("server", server)
    rooms = await bot.actions.allow_server(server)
    await bot.actions.audit(actor=inv.sender, action="unban-server", target=server, rooms=rooms,
                            event_id=inv.event_id)  # fmt: skip
    await bot.management.echo(inv, bot.t("lifted the ban of the server"), server, rooms, None)
