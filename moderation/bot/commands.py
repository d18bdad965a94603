"""A small declarative command framework: a decorator carries the name, the French and
English aliases, the typed arguments, the help text and the required power; parsing,
usage lines and the help are generated from it. Pure: no I/O."""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from .text import parse_duration

ArgKind = Literal["user", "word", "duration", "count_or_since", "choice", "int", "text"]


@dataclass(frozen=True)
class Arg:
    """One argument. ``text`` takes the rest of the line; optional ones may be absent."""

    name: str
    kind: ArgKind = "word"
    optional: bool = False
    choices: tuple[str, ...] = ()

    def usage(self) -> str:
        label = "|".join(self.choices) if self.choices else self.name.upper()
        return f"[{label}]" if self.optional else label


@dataclass(frozen=True)
class Command:
    name: str
    aliases: tuple[str, ...]
    args: tuple[Arg, ...]
    help: str
    power: int | None  # None: the configured moderator level
    handler: Callable[..., Awaitable[None]]

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def usage(self, prefix: str) -> str:
        return " ".join([prefix + self.name, *(a.usage() for a in self.args)])


@dataclass(frozen=True)
class Invocation:
    """A command as given: who, in which event."""

    sender: str
    event_id: str
    command: Command


def _(msg: str) -> str:
    """Marks a message for extraction; translated when shown."""
    return msg


class UsageError(Exception):
    """Bad arguments: ``template.format(**params)`` says what is wrong (translate the template)."""

    def __init__(self, command: Command, template: str, **params: str) -> None:
        self.command = command
        self.template = template
        self.params = params
        self.problem = template.format(**params)
        super().__init__(self.problem)


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
    ) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
        def decorate(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
            self.commands.append(Command(name, tuple(aliases), tuple(args), help, power, fn))
            return fn

        return decorate

    def find(self, word: str) -> Command | None:
        word = word.casefold()
        return next((c for c in self.commands if word in c.names), None)

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


registry = Registry()
"""The moderation bot's commands: each command group declares its commands on it."""


def parse_args(command: Command, tokens: list[str]) -> dict[str, Any]:
    """Typed values by argument name; raises :class:`UsageError`."""
    values: dict[str, Any] = {}
    i = 0
    for arg in command.args:
        if arg.kind == "text":
            text = " ".join(tokens[i:]).strip()
            i = len(tokens)
            if not text and not arg.optional:
                raise UsageError(command, _("{arg} missing"), arg=arg.name)
            values[arg.name] = text or None
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


def _convert(arg: Arg, token: str) -> tuple[Any, bool]:
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
