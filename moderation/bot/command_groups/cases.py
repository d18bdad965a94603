"""The command on reports: act on a case."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..cases import CASE_ACTIONS, CASE_ACTIONS_FR
from ..commands import Arg, Invocation, _, registry

if TYPE_CHECKING:
    from .context import CommandContext


@registry.command(
    "case",
    aliases=("dossier",),
    args=(
        Arg("number", "int"),
        Arg("action", "choice", choices=(*CASE_ACTIONS, *CASE_ACTIONS_FR)),
    ),
    help=_("Act on a report: dismiss, redact, warn, mute or ban."),
)
async def cmd_case(ctx: CommandContext, inv: Invocation, number: int, action: str) -> None:
    action = CASE_ACTIONS_FR.get(action, action)
    problem = await ctx.cases.act_on_case(number, action, inv.sender, inv.event_id)
    if problem:
        await ctx.management.reply(inv, problem)
