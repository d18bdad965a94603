"""Listings moderators need: join requests waiting, open cases, bans, mutes, and all that is
known about one person (consents, strike, mute, ban, history)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from forum.consent import ConsentRecords

from ..commands import Invocation, _, registry
from ..repositories import Audit, Cases, Mutes, Strikes
from .targets import USER, resolve_user

if TYPE_CHECKING:
    from .context import CommandContext

LIMIT = 30  # lines per listing


async def _answer(ctx: CommandContext, inv: Invocation, title: str, lines: list[str]) -> None:
    shown = lines[:LIMIT]
    if len(lines) > LIMIT:
        shown.append(ctx.t("… and {n} more.").format(n=len(lines) - LIMIT))
    body = "\n".join([title, *shown])
    html_body = html.escape(title) + "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in shown)
    await ctx.management.reply(inv, body, html_body + "</ul>")


@registry.command(
    "pending",
    aliases=("attente", "en-attente"),
    help=_("List the join requests waiting for a moderator's decision."),
    examples=(_("{prefix}pending"),),
)
async def cmd_pending(ctx: CommandContext, inv: Invocation) -> None:
    t = ctx.t
    requests = await ctx.register.approvals_pending() if ctx.register else []
    if not requests:
        await ctx.management.reply(inv, t("No join request waits for a decision."))
        return
    lines = [f"{r.user_id} — {r.since:%Y-%m-%d %H:%M} UTC" for r in requests]
    lines.append(
        t("Decide with {approve} USER or {deny} USER REASON.").format(
            approve=ctx.prefix + "approve", deny=ctx.prefix + "deny"
        )
    )
    await _answer(ctx, inv, t("Join requests waiting ({n}):").format(n=len(requests)), lines)


@registry.command(
    "cases",
    aliases=("dossiers",),
    help=_("List the open reports."),
    examples=(_("{prefix}cases"),),
)
async def cmd_cases(ctx: CommandContext, inv: Invocation) -> None:
    t = ctx.t
    async with ctx.sessionmaker() as s:
        cases = await Cases(s).open_cases(limit=LIMIT + 1)
        total = await Cases(s).open_count()
    if not cases:
        await ctx.management.reply(inv, t("No open report."))
        return
    lines = [
        t("#{n} {when}: {reporter} reports {reported} in {room}: {reason}").format(
            n=c.id,
            when=f"{c.created_at:%Y-%m-%d %H:%M}",
            reporter=c.reporter,
            reported=c.reported_user or "?",
            room=ctx.management.room_label(c.room_id) if c.room_id else "-",
            reason=c.reason or "-",
        )
        for c in cases
    ]
    await _answer(ctx, inv, t("Open reports ({n}):").format(n=total), lines)


@registry.command(
    "bans",
    aliases=("bannis",),
    help=_("List the people banned from the forum rooms and the forum's ban rules."),
    examples=(_("{prefix}bans"),),
)
async def cmd_bans(ctx: CommandContext, inv: Invocation) -> None:
    t = ctx.t
    banned = sorted(await ctx.actions.banned())
    rules = sorted(
        (r for r in ctx.policy_lists.own_rules.values() if r.entity not in banned),
        key=lambda r: (r.kind, r.entity),
    )
    if not banned and not rules:
        await ctx.management.reply(inv, t("Nobody is banned."))
        return
    lines = list(banned)
    lines += [
        t("rule ({kind}): {entity} — {reason}").format(
            kind=r.kind, entity=r.entity, reason=r.reason or "-"
        )
        for r in rules
    ]
    await _answer(ctx, inv, t("Banned ({n}):").format(n=len(banned)), lines)


@registry.command(
    "mutes",
    aliases=("sourdines",),
    help=_("List the people who may not post now, and until when."),
    examples=(_("{prefix}mutes"),),
)
async def cmd_mutes(ctx: CommandContext, inv: Invocation) -> None:
    t = ctx.t
    async with ctx.sessionmaker() as s:
        mutes = await Mutes(s).all()
    if not mutes:
        await ctx.management.reply(inv, t("Nobody is muted."))
        return
    lines = [
        t("{user} until {until}, by {actor}: {reason}").format(
            user=m.user_id,
            until=f"{m.until:%Y-%m-%d %H:%M} UTC" if m.until else t("a moderator unmutes"),
            actor=m.actor,
            reason=m.reason or "-",
        )
        for m in mutes
    ]
    await _answer(ctx, inv, t("Muted ({n}):").format(n=len(mutes)), lines)


@registry.command(
    "member",
    aliases=("membre",),
    args=(USER,),
    help=_("All that is known about a person: consents, strike step, mute, ban, history."),
    examples=(_("{prefix}member @someone:example.org"),),
)
async def cmd_member(ctx: CommandContext, inv: Invocation, user: str) -> None:
    target = await resolve_user(ctx, inv, user)
    if target is None:
        return
    t = ctx.t
    async with ctx.sessionmaker() as s:
        consent = await ConsentRecords(s).status(target)
        strike = await Strikes(s).get(target)
        mute = await Mutes(s).get(target)
        entries = [e for e in await Audit(s).entries(target) if e.target == target][-10:]
    none = t("none")
    charter = (
        t("version {v} since {when}").format(
            v=consent.charter_version, when=f"{consent.charter_at:%Y-%m-%d}"
        )
        if consent.charter_version is not None and consent.charter_at
        else none
    )
    publication = (
        t("yes, since {when}").format(when=f"{consent.publication_at:%Y-%m-%d}")
        if consent.publication and consent.publication_at
        else none
    )
    steps = ctx.cfg.steps
    lines = [
        t("Charter accepted: {charter}.").format(charter=charter),
        t("Publication consent: {publication}.").format(publication=publication),
        t("Strikes: step {n} of {total} (last {when}).").format(
            n=strike.step + 1, total=len(steps), when=f"{strike.last_at:%Y-%m-%d %H:%M}"
        )
        if strike is not None
        else t("Strikes: none."),
    ]
    if mute is not None:
        until = f"{mute.until:%Y-%m-%d %H:%M} UTC" if mute.until else t("a moderator unmutes")
        lines.append(t("Muted until {until}.").format(until=until))
    if target in await ctx.actions.banned():
        lines.append(t("Banned from the forum rooms."))
    if entries:
        lines.append(t("History:"))
        for e in entries:
            dry = " " + t("[dry run]") if e.dry_run else ""
            lines.append(
                f"{e.created_at:%Y-%m-%d %H:%M} {ctx.cases.action_label(e.action)}{dry} — "
                f"{e.actor}" + (f": {e.reason}" if e.reason else "")
            )
    await _answer(ctx, inv, target, lines)
