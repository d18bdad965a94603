"""Who a command is about: a user id from what the moderator typed, and the refusal to
act on moderators and bots."""

from __future__ import annotations

from typing import TYPE_CHECKING

from forum.matrix import is_user_id
from forum.names import skeleton, strip_controls

from ..commands import Arg, Invocation
from ..text import is_glob

if TYPE_CHECKING:
    from .context import CommandContext

USER = Arg("user", "user")
REASON = Arg("reason", "text", optional=True)


async def resolve_user(
    ctx: CommandContext, inv: Invocation, token: str, *, glob: bool = False
) -> str | None:
    """A user id for ``token`` (id, glob, or unambiguous display name), or ``None``
    after telling the moderator why."""
    t = ctx.t
    token = strip_controls(token).strip()
    if token.startswith("@") and is_glob(token):
        if glob:
            return token
        await ctx.management.reply(inv, t("Globs are only accepted by !ban."))
        return None
    if is_user_id(token):
        return token
    members = await ctx.actions.members()
    wanted = skeleton(token.removeprefix("@"))
    # Look-alikes (confusable letters, bidi and zero-width controls) compare equal, so
    # a name shaped like a moderator's is always reported as ambiguous, never chosen.
    exact = [u for u, n in members.items() if n and skeleton(n) == wanted]
    if not exact:
        exact = [u for u in members if skeleton(u[1:].split(":")[0]) == wanted]
    if len(exact) == 1:
        return exact[0]
    if not exact:
        await ctx.management.reply(
            inv, t("Nobody in the forum is named {name}.").format(name=token)
        )
        return None
    listing = ", ".join(sorted(exact))
    await ctx.management.reply(
        inv,
        t("{name} is ambiguous: {ids}. Give the full user id.").format(name=token, ids=listing),
    )
    return None


async def refuse_if_exempt(ctx: CommandContext, inv: Invocation, user: str) -> bool:
    if await ctx.actions.is_exempt(user):
        await ctx.management.reply(
            inv,
            ctx.t("Refused: {user} is a moderator or a bot.").format(user=user),
        )
        return True
    return False


async def sanctionable(ctx: CommandContext, inv: Invocation, token: str) -> str | None:
    """The user id for ``token`` when the moderators may act on them (:func:`resolve_user`,
    then :func:`refuse_if_exempt`), or ``None`` after telling the moderator why."""
    target = await resolve_user(ctx, inv, token)
    if target is None or await refuse_if_exempt(ctx, inv, target):
        return None
    return target
