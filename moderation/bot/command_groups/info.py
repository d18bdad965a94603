"""Information commands: the help, a person's history, the status of the protections."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from ..commands import Arg, Invocation, _, registry
from ..repositories import Audit, Cases, Mutes
from .targets import USER, resolve_user

if TYPE_CHECKING:
    from .context import CommandContext


@registry.command(
    "help",
    aliases=("aide",),
    args=(Arg("command", "word", optional=True),),
    power=0,
    help=_("Show this help, or the details of one command."),
    examples=(_("{prefix}help"), _("{prefix}help ban")),
)
async def cmd_help(ctx: CommandContext, inv: Invocation, command: str | None) -> None:
    t, prefix = ctx.t, ctx.prefix
    if command is not None:
        await _help_of(ctx, inv, command)
        return
    lines = [t("Commands (management room only):")]
    rows = []
    for c in registry.commands:
        names = " / ".join(prefix + n for n in c.names)
        usage = " ".join(a.usage(t) for a in c.args if a.kind != "flag")
        lines.append(f"{names} {usage} — {t(c.help)}".replace("  ", " "))
        rows.append(
            f"<li><code>{html.escape(names)} {html.escape(usage)}</code> — "
            f"{html.escape(t(c.help))}</li>"
        )
    last = t("Details and examples: {cmd}.").format(cmd=f"{prefix}help {t('COMMAND')}")
    lines.append(last)
    await ctx.management.reply(
        inv,
        "\n".join(lines),
        f"{html.escape(lines[0])}<ul>{''.join(rows)}</ul>{html.escape(last)}",
    )


async def _help_of(ctx: CommandContext, inv: Invocation, word: str) -> None:
    """The details of one command: usage, what it does, its other names, options and
    examples."""
    t, prefix = ctx.t, ctx.prefix
    name = word.removeprefix(prefix)
    c = registry.find(name)
    if c is None:
        text = t("Unknown command: {cmd}.").format(cmd=prefix + name)
        closest = registry.closest(name)
        if closest is not None:
            text += " " + t("Did you mean {cmd}?").format(cmd=prefix + closest.name)
        await ctx.management.reply(inv, text)
        return
    lines = [c.usage(prefix, t), t(c.help)]
    if c.aliases:
        others = ", ".join(prefix + a for a in c.aliases)
        lines.append(t("Also: {names}.").format(names=others))
    for flag in c.flags:
        spelled = " / ".join(flag.spellings)
        lines.append(t("Option {flag}: {help}").format(flag=spelled, help=t(flag.help)))
    if c.handler is None and c.answered_by == "digest":
        lines.append(t("Answered by the digest (the weekly preview)."))
    elif c.handler is None:
        lines.append(t("Answered by the membership bot."))
    if c.examples:
        lines.append(t("Examples:"))
        lines.extend("  " + t(e).format(prefix=prefix) for e in c.examples)
    await ctx.management.reply(inv, "\n".join(lines), "<br/>".join(html.escape(x) for x in lines))


@registry.command(
    "history", aliases=("historique",), args=(USER,), help=_("Past actions about a person.")
)
async def cmd_history(ctx: CommandContext, inv: Invocation, user: str) -> None:
    target = await resolve_user(ctx, inv, user)
    if target is None:
        return
    async with ctx.sessionmaker() as s:
        entries = [e for e in await Audit(s).entries(target) if e.target == target][-30:]
    if not entries:
        await ctx.management.reply(
            inv, ctx.t("No recorded action about {user}.").format(user=target)
        )
        return
    lines = [ctx.t("History of {user}:").format(user=target)]
    for e in entries:
        dry = " " + ctx.t("[dry run]") if e.dry_run else ""
        lines.append(
            f"{e.created_at:%Y-%m-%d %H:%M} {ctx.cases.action_label(e.action)}{dry} — {e.actor} "
            f"({e.source})" + (f": {e.reason}" if e.reason else "")
        )
    await ctx.management.reply(inv, "\n".join(lines), "<br/>".join(html.escape(x) for x in lines))


@registry.command(
    "status",
    aliases=("etat",),
    help=_("Show the protections' settings and what is in force now."),
)
async def cmd_status(ctx: CommandContext, inv: Invocation) -> None:
    t, cfg = ctx.t, ctx.cfg
    async with ctx.sessionmaker() as s:
        mutes = await Mutes(s).all()
        open_cases = await Cases(s).open_count()
    locked, joins_locked = await ctx.locks.locked(), await ctx.locks.joins_locked()
    yes, no = t("yes"), t("no")
    lines = [
        t("Dry run: {state}.").format(state=yes if ctx.dry_run else no),
        t("Flood: {n} messages in {s} s.").format(n=cfg.flood_messages, s=int(cfg.flood_seconds)),
        t("Mention spam: more than {n} mentions.").format(n=cfg.mention_limit),
        t("Links and media held back from members who joined less than {h} h ago.").format(
            h=f"{cfg.new_member_hours:g}"
        ),
        t("Banned words: {n}.").format(n=len(cfg.words)),
        t("Join wave: {n} joins in {s} s.").format(
            n=cfg.join_wave_joins, s=int(cfg.join_wave_seconds)
        ),
        t("Steps: {steps} (back to the first after {h} quiet hours).").format(
            steps=" → ".join(cfg.steps), h=f"{cfg.step_reset_hours:g}"
        ),
        t("Topic rooms read-only: {state}; joins knock-only: {joins}.").format(
            state=yes if locked else no, joins=yes if joins_locked else no
        ),
        t("Muted now: {n}. Open reports: {cases}.").format(n=len(mutes), cases=open_cases),
        t("Policy lists followed: {n} of {total} ({rules} rules); our own rules: {own}.").format(
            n=len(ctx.policy_lists.list_rooms),
            total=len(cfg.policy_lists),
            rules=len(ctx.policy_lists.rules),
            own=len(ctx.policy_lists.own_rules),
        ),
    ]
    html_body = "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"
    await ctx.management.reply(inv, "\n".join(lines), html_body)
