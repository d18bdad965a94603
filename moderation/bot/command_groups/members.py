"""Commands about members: ban, unban, kick, mute, unmute, warn, redact."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

from ..commands import Arg, Invocation, _, registry
from ..text import format_duration, glob_match, is_glob
from .targets import REASON, USER, refuse_if_exempt, resolve_user, sanctionable

if TYPE_CHECKING:
    from .context import CommandContext


FORCE = Arg(
    "force",
    "flag",
    choices=("--forcer",),
    help=_("needed by a glob that matches more than a few members."),
)


@registry.command(
    "ban",
    aliases=("bannir",),
    args=(USER, FORCE, REASON),
    help=_("Ban a person (or a glob like @*:spam.example) from every forum room."),
    examples=(
        _("{prefix}ban @spammer:example.org repeated spam"),
        _("{prefix}ban @*:spam.example --force raid from that server"),
    ),
)
async def cmd_ban(
    ctx: CommandContext, inv: Invocation, user: str, force: bool, reason: str | None
) -> None:
    target = await resolve_user(ctx, inv, user, glob=True)
    if target is None or (not is_glob(target) and await refuse_if_exempt(ctx, inv, target)):
        return
    if is_glob(target) and not force and await _too_wide(ctx, inv, target):
        return
    banned = await ctx.sanctions.ban(
        target, reason, actor=inv.sender, source="command", event_id=inv.event_id
    )
    rooms = list(ctx.forum_rooms.forum_ids) if banned else []
    label = target if not is_glob(target) else f"{target} ({', '.join(banned) or '-'})"
    await ctx.management.echo(
        inv, ctx.t("banned"), label, rooms, reason, f"{ctx.prefix}unban {target}"
    )


async def _too_wide(ctx: CommandContext, inv: Invocation, pattern: str) -> bool:
    """Whether ``pattern`` matches more members than a glob may ban without ``--force``
    (then the moderator is told how many, and a few of them)."""
    members = await ctx.actions.members()
    matched = sorted(u for u in members if glob_match(pattern, u))
    matched = [u for u in matched if not await ctx.actions.is_exempt(u)]
    if len(matched) <= ctx.tuning.glob_force_above:
        return False
    shown = ", ".join(matched[:5]) + (", …" if len(matched) > 5 else "")
    await ctx.management.reply(
        inv,
        ctx.t(
            "{pattern} matches {n} members ({some}). Nothing was done: "
            "repeat with --force to ban them all."
        ).format(pattern=pattern, n=len(matched), some=shown),
    )
    return True


@registry.command(
    "unban",
    aliases=("debannir", "débannir"),
    args=(USER,),
    help=_("Lift a ban."),
    examples=(_("{prefix}unban @someone:example.org"),),
)
async def cmd_unban(ctx: CommandContext, inv: Invocation, user: str) -> None:
    target = await resolve_user(ctx, inv, user, glob=True)
    if target is None:
        return
    await ctx.actions.withdraw_rule("user", target)
    users = [target]
    if is_glob(target):  # lift the bans the glob caught
        users = sorted(u for u in await ctx.actions.banned() if glob_match(target, u))
    results = await asyncio.gather(*(ctx.actions.unban(u) for u in users))
    rooms = sorted({room for done in results for room in done})
    await ctx.actions.audit(
        actor=inv.sender, action="unban", target=target, rooms=rooms, event_id=inv.event_id
    )
    await ctx.management.echo(inv, ctx.t("unbanned"), target, rooms, None)


@registry.command(
    "kick",
    aliases=("expulser",),
    args=(USER, REASON),
    help=_("Remove a person from every room."),
    examples=(_("{prefix}kick @someone:example.org off-topic again"),),
)
async def cmd_kick(ctx: CommandContext, inv: Invocation, user: str, reason: str | None) -> None:
    target = await sanctionable(ctx, inv, user)
    if target is None:
        return
    rooms = await ctx.sanctions.kick(
        target, reason, actor=inv.sender, source="command", event_id=inv.event_id
    )
    await ctx.management.echo(inv, ctx.t("kicked"), target, rooms, reason)


@registry.command(
    "mute",
    aliases=("sourdine", "muet"),
    args=(USER, Arg("duration", "duration", optional=True), REASON),
    help=_("Stop a person from posting (for a duration like 10m, 2h, 1d)."),
    examples=(_("{prefix}mute @someone:example.org 2h calm down"),),
)
async def cmd_mute(
    ctx: CommandContext,
    inv: Invocation,
    user: str,
    duration: timedelta | None,
    reason: str | None,
) -> None:
    target = await sanctionable(ctx, inv, user)
    if target is None:
        return
    rooms = await ctx.sanctions.mute(
        target, duration, reason, actor=inv.sender, source="command", event_id=inv.event_id
    )
    what = ctx.t("muted")
    if duration:
        what += " " + ctx.t("for {d}").format(d=format_duration(duration))
    await ctx.management.echo(inv, what, target, rooms, reason, f"{ctx.prefix}unmute {target}")


@registry.command(
    "unmute", aliases=("fin-sourdine", "demuet"), args=(USER,), help=_("Let a person post again.")
)
async def cmd_unmute(ctx: CommandContext, inv: Invocation, user: str) -> None:
    target = await resolve_user(ctx, inv, user)
    if target is None:
        return
    _was, rooms, _complete = await ctx.actions.unmute(target)  # the timer finishes it
    await ctx.actions.audit(
        actor=inv.sender, action="unmute", target=target, rooms=rooms, event_id=inv.event_id
    )
    await ctx.management.echo(inv, ctx.t("unmuted"), target, rooms, None)


@registry.command(
    "warn",
    aliases=("avertir",),
    args=(USER, Arg("reason", "text")),
    help=_("Send a person a warning in a direct message."),
    examples=(_("{prefix}warn @someone:example.org please stay courteous"),),
)
async def cmd_warn(ctx: CommandContext, inv: Invocation, user: str, reason: str) -> None:
    target = await sanctionable(ctx, inv, user)
    if target is None:
        return
    await ctx.sanctions.warn(
        target, reason, actor=inv.sender, source="command", event_id=inv.event_id
    )
    await ctx.management.echo(inv, ctx.t("warned"), target, [], reason, in_rooms=False)


@registry.command(
    "redact",
    aliases=("effacer",),
    args=(USER, Arg("limit", "count_or_since", optional=True), REASON),
    help=_("Remove a person's recent messages (a count, or a duration like 2h)."),
    examples=(_("{prefix}redact @someone:example.org 20 spam"),
              _("{prefix}redact @someone:example.org 2h")),
)  # fmt: skip
async def cmd_redact(
    ctx: CommandContext,
    inv: Invocation,
    user: str,
    limit: int | timedelta | None,
    reason: str | None,
) -> None:
    target = await sanctionable(ctx, inv, user)
    if target is None:
        return
    count = limit if isinstance(limit, int) else None
    since = limit if isinstance(limit, timedelta) else None
    if count is None and since is None:
        count = 100
    events = await ctx.actions.recent_events(target, count, since)
    n = await ctx.actions.redact_many([(r, e) for r, e, _ in events], reason)
    rooms = sorted({r for r, _, _ in events})
    await ctx.actions.audit(
        actor=inv.sender, action=f"redact:{n}", target=target, rooms=rooms, reason=reason,
        event_id=inv.event_id,
    )  # fmt: skip
    await ctx.management.echo(
        inv, ctx.t("removed {n} message(s) of").format(n=n), target, rooms, reason
    )
