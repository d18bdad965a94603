"""The moderation bot's registry: each command group declares its commands on it. The
framework (:class:`Command`, :class:`Registry`, parsing) is :mod:`moderation.commands`,
shared with the membership bot."""

from __future__ import annotations

from ..commands import (
    PLACEHOLDERS,
    Arg,
    ArgKind,
    Command,
    Gettext,
    Invocation,
    Registry,
    UsageError,
    _,
    is_duration,
    parse_args,
    placeholder,
)

__all__ = [
    "PLACEHOLDERS",
    "Arg",
    "ArgKind",
    "Command",
    "Gettext",
    "Invocation",
    "Registry",
    "UsageError",
    "_",
    "is_duration",
    "parse_args",
    "placeholder",
    "registry",
]

registry = Registry()
"""The moderation bot's commands: each command group declares its commands on it."""
