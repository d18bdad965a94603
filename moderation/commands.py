"""A small declarative command framework shared by both bots: a decorator (or
:meth:`Registry.declare`) carries the name, the French and English aliases, the typed
arguments, the help text, the details, the examples and the required power; parsing,
usage lines and the help are generated from it. Pure: no I/O.

The moderation bot's registry is :data:`moderation.bot.commands.registry`; the membership
bot's DM commands and its ``!approve`` / ``!deny`` are declared in
:mod:`moderation.membership.declared`. Both bots parse arguments here (:func:`parse_args`
on the management room's tokens, :func:`parse_line` on a DM's line) and answer bad ones
with :meth:`UsageError.told`."""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from .durations import parse_duration

ArgKind = Literal["user", "word", "duration", "count_or_since", "choice", "int", "text", "flag"]
Gettext = Callable[[str], str]


def _(msg: str) -> str:
    """Marks a message for extraction; translated when shown."""
    return msg


def _same(msg: str) -> str:
    return msg


#: The placeholders of the usage lines, translated when shown (an argument's name in
#: capitals when it has none here).
PLACEHOLDERS = {
    "user": _("USER"),
    "reason": _("REASON"),
    "duration": _("DURATION"),
    "limit": _("LIMIT"),
    "number": _("NUMBER"),
    "action": _("ACTION"),
    "mode": _("MODE"),
    "server": _("SERVER"),
    "command": _("COMMAND"),
}


def placeholder(name: str, gettext: Gettext = _same) -> str:
    """An argument's name as usage lines show it (translated by ``gettext``)."""
    return gettext(PLACEHOLDERS.get(name, name.upper()))


@dataclass(frozen=True)
class Arg:
    """One argument. ``text`` takes the rest of the line; optional ones may be absent; a
    ``flag`` (``--name``, or one of ``choices``) may stand anywhere and is true when given."""

    name: str
    kind: ArgKind = "word"
    optional: bool = False
    choices: tuple[str, ...] = ()
    help: str = ""
    """What a flag does (marked with ``_``, translated when shown)."""
    label: str = ""
    """How usage lines show the argument instead of its placeholder (marked with ``_``,
    translated when shown), as ``yes|no``."""
    convert: Callable[[str], Any] | None = None
    """The value of the argument's word (or text), ``None`` when it is not valid: a
    conversion of its own (as the membership bot's yes or no, in any language)."""

    @property
    def spellings(self) -> tuple[str, ...]:
        """How a flag may be written."""
        return (f"--{self.name}", *self.choices)

    def placeholder(self, gettext: Gettext = _same) -> str:
        """The argument's name as usage lines show it."""
        return gettext(self.label) if self.label else placeholder(self.name, gettext)

    def usage(self, gettext: Gettext = _same) -> str:
        if self.kind == "flag":
            return f"[--{self.name}]"
        label = "|".join(self.choices) if self.choices else self.placeholder(gettext)
        return f"[{label}]" if self.optional else label


@dataclass(frozen=True)
class Command:
    name: str
    aliases: tuple[str, ...]
    args: tuple[Arg, ...]
    help: str
    power: int | None  # None: the configured moderator level
    handler: Callable[..., Awaitable[None]] | None
    """``None``: another bot answers it (declared here for the help)."""
    examples: tuple[str, ...] = ()
    """Marked with ``_``; ``{prefix}`` stands for the command prefix."""
    answered_by: str = "membership"
    """Who answers a command declared with :meth:`Registry.elsewhere`: ``membership``
    (the membership bot) or ``digest`` (the digest's preview, ``bridge.preview``)."""
    details: str = ""
    """What ``help COMMAND`` says after the summary (marked with ``_``; ``{prefix}``
    stands for the command prefix)."""

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def flags(self) -> tuple[Arg, ...]:
        return tuple(a for a in self.args if a.kind == "flag")

    def usage(self, prefix: str, gettext: Gettext = _same, *, name: str = "") -> str:
        """The usage line (flags are told by the detailed help), the command written as
        ``name`` (one of its names; its name by default)."""
        positional = (a.usage(gettext) for a in self.args if a.kind != "flag")
        return " ".join([prefix + (name or self.name), *positional])


@dataclass(frozen=True)
class Invocation:
    """A command as given: who, in which event."""

    sender: str
    event_id: str
    command: Command


class UsageError(Exception):
    """Bad arguments: ``template.format(**params)`` says what is wrong (translate the template;
    :meth:`explain` does both)."""

    def __init__(self, command: Command, template: str, **params: str) -> None:
        self.command = command
        self.template = template
        self.params = params
        self.problem = template.format(**params)
        super().__init__(self.problem)

    def explain(self, gettext: Gettext) -> str:
        """What is wrong, translated, the argument named as the usage line shows it."""
        params = dict(self.params)
        if "arg" in params:
            arg = next((a for a in self.command.args if a.name == params["arg"]), None)
            params["arg"] = arg.placeholder(gettext) if arg else placeholder(params["arg"], gettext)
        return gettext(self.template).format(**params)

    def told(self, prefix: str, gettext: Gettext, *, name: str = "") -> str:
        """The answer to bad arguments: the usage line (the command written as ``name``),
        then what is wrong."""
        return gettext(USAGE).format(
            usage=self.command.usage(prefix, gettext, name=name), problem=self.explain(gettext)
        )


USAGE = _("Usage: {usage} ({problem})")


@dataclass
class Registry:
    commands: list[Command] = field(default_factory=list)

    def command(
        self,
        name: str,
        *,
        aliases: Sequence[str] = (),
        args: Sequence[Arg] = (),
        help: str = "",
        power: int | None = None,
        examples: Sequence[str] = (),
    ) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
        def decorate(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
            self.commands.append(
                Command(name, tuple(aliases), tuple(args), help, power, fn, tuple(examples))
            )
            return fn

        return decorate

    def elsewhere(
        self,
        name: str,
        *,
        aliases: Sequence[str] = (),
        args: Sequence[Arg] = (),
        help: str = "",
        examples: Sequence[str] = (),
        answered_by: str = "membership",
    ) -> None:
        """Declare a command of the management room that another component answers
        (``answered_by``): listed by the help, never reported as unknown, never run here."""
        self.commands.append(
            Command(
                name, tuple(aliases), tuple(args), help, None, None, tuple(examples), answered_by
            )
        )

    def declare(
        self,
        name: str,
        *,
        aliases: Sequence[str] = (),
        args: Sequence[Arg] = (),
        help: str = "",
        details: str = "",
        examples: Sequence[str] = (),
        answered_by: str = "membership",
    ) -> Command:
        """Declare a command answered by ``answered_by`` (which binds a handler to its
        name) and return it."""
        cmd = Command(
            name,
            tuple(aliases),
            tuple(args),
            help,
            None,
            None,
            tuple(examples),
            answered_by,
            details,
        )
        self.commands.append(cmd)
        return cmd

    def add(self, command: Command) -> None:
        """List a command declared on another registry (it is answered there)."""
        self.commands.append(command)

    def find(self, word: str) -> Command | None:
        word = word.casefold()
        return next((c for c in self.commands if word in c.names), None)

    def closest(self, word: str) -> Command | None:
        """The command whose name or alias is nearest to ``word`` (a typo), if any."""
        names = {n: c for c in self.commands for n in c.names}
        match = difflib.get_close_matches(word.casefold(), list(names), n=1, cutoff=0.6)
        return names[match[0]] if match else None

    @staticmethod
    def head(body: str, prefix: str) -> str | None:
        """The word after ``prefix`` that ``body`` starts with (``None``: not a command)."""
        text = body.strip()
        if not text.startswith(prefix):
            return None
        head = text[len(prefix) :].split(maxsplit=1)
        return head[0] if head and head[0][:1].isalnum() else None

    def split(self, body: str, prefix: str) -> tuple[Command, list[str]] | None:
        """The command and its raw tokens, or ``None`` if ``body`` is no known command."""
        text = body.strip()
        if not text.startswith(prefix):
            return None
        head, _, rest = text[len(prefix) :].partition(" ")
        cmd = self.find(head.strip())
        if cmd is None:
            return None
        try:
            tokens = shlex.split(rest)
        except ValueError:
            tokens = rest.split()
        return cmd, tokens


def parse_args(command: Command, tokens: list[str]) -> dict[str, Any]:
    """Typed values by argument name, from the command's tokens (a ``text`` argument is
    its tokens joined by spaces); raises :class:`UsageError`."""
    return _parse(command, tokens, None)


def parse_line(command: Command, rest: str) -> dict[str, Any]:
    """Typed values by argument name, from the text after the command's name, split at
    white space with no quoting: a ``text`` argument is the rest of the line as written
    (apostrophes and quotes kept). Raises :class:`UsageError`."""
    found = list(re.finditer(r"\S+", rest))
    return _parse(command, [m.group() for m in found], [rest[m.start() :].rstrip() for m in found])


def _parse(command: Command, tokens: list[str], lines: list[str] | None) -> dict[str, Any]:
    """``lines``: for each token, the line from it on as written (``None``: a ``text``
    argument is the tokens joined)."""
    values: dict[str, Any] = {}
    for flag in command.flags:
        spellings = {w.casefold() for w in flag.spellings}
        kept = [tok for tok in tokens if tok.casefold() not in spellings]
        values[flag.name] = len(kept) < len(tokens)
        if len(kept) < len(tokens):
            lines = None  # a flag taken out of the line: its other words joined
        tokens = kept
    i = 0
    for arg in command.args:
        if arg.kind == "flag":
            continue
        if arg.kind == "text":
            if lines is not None:
                text = lines[i] if i < len(lines) else ""
            else:
                text = " ".join(tokens[i:]).strip()
            i = len(tokens)
            if not text and not arg.optional:
                raise UsageError(command, _("{arg} missing"), arg=arg.name)
            values[arg.name] = _convert_text(command, arg, text) if text else None
            continue
        token = tokens[i] if i < len(tokens) else None
        if token is None:
            if not arg.optional:
                raise UsageError(command, _("{arg} missing"), arg=arg.name)
            values[arg.name] = None
            continue
        value, ok = _convert(arg, token)
        if not ok:
            if arg.optional:
                values[arg.name] = None
                continue
            raise UsageError(command, _("{arg}: {token} is not valid"), arg=arg.name, token=token)
        values[arg.name] = value
        i += 1
    if i < len(tokens):
        raise UsageError(command, _("unexpected {token}"), token=tokens[i])
    return values


def _convert_text(command: Command, arg: Arg, text: str) -> Any:
    if arg.convert is None:
        return text
    value = arg.convert(text)
    if value is None:
        raise UsageError(command, _("{arg}: {token} is not valid"), arg=arg.name, token=text)
    return value


def _convert(arg: Arg, token: str) -> tuple[Any, bool]:
    if arg.convert is not None:
        value = arg.convert(token)
        return value, value is not None
    if arg.kind == "duration":
        d = parse_duration(token)
        return d, d is not None
    if arg.kind == "int":
        return (int(token), True) if token.isdigit() else (None, False)
    if arg.kind == "count_or_since":
        if token.isdigit() and 0 < int(token) <= 1000:
            return int(token), True
        d = parse_duration(token)
        return d, d is not None
    if arg.kind == "choice":
        low = token.casefold()
        return (low, True) if low in arg.choices else (None, False)
    if arg.kind == "user":
        return token, bool(token.strip())
    return token, True


def is_duration(value: object) -> bool:
    return isinstance(value, timedelta)
