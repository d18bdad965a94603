"""The forum as the homeserver's spam checker: a listener on loopback that answers the
callbacks of the Synapse module ``synapse-http-antispam`` (:mod:`.server`) with the
moderation bot's rules (:mod:`.judge`), so that spam in the forum's rooms is refused
before anyone receives it. Started by the moderation bot's feature when
``[antispam] enabled``; the bot's own protections stay the second line (they also see
what other homeservers deliver, and what passes when the forum does not answer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forum.bots import antispam_secret

from .judge import Judge, Verdict
from .server import AntispamListener, Checker, create_antispam_app

if TYPE_CHECKING:
    from forum.context import ServiceContext
    from moderation.bot.bot import ModerationBot

__all__ = [
    "AntispamListener",
    "Checker",
    "Judge",
    "Verdict",
    "create_antispam_app",
    "start_antispam",
]


async def start_antispam(ctx: ServiceContext, bot: ModerationBot) -> AntispamListener | None:
    """Start the spam checker of ``bot`` on the configured loopback port (stopped with
    the service); None when it is disabled."""
    cfg = ctx.settings.antispam
    if not cfg.enabled:
        return None
    judge = Judge(bot=bot, language_of=ctx.register.language_of)
    checker = Checker(
        judge.decide,
        antispam_secret(ctx.settings, ctx.home),
        cfg.deadline_seconds,
        ctx.metrics,
    )
    listener = AntispamListener(checker, cfg.host, cfg.port)
    await listener.start()
    ctx.register.on_stop(listener.stop)
    return listener
