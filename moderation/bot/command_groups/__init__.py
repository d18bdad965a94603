"""The moderation bot's commands, one group per file by subject, all declared on the one
registry (:data:`moderation.bot.commands.registry`); the help lists them group by group,
in the order of the imports below."""

# isort: skip_file

from __future__ import annotations

from . import info, listings, members, rooms, protections, servers, cases, approvals, digest

__all__ = [
    "approvals",
    "cases",
    "digest",
    "info",
    "listings",
    "members",
    "protections",
    "rooms",
    "servers",
]
