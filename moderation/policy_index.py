"""Ban rules of policy lists, indexed so that a check does not walk every rule.

A list may hold tens of thousands of rules (users, servers, globs). An exact entity is a
dictionary key; a glob is filed under its literal end (what follows its last wildcard:
``*:spam.example`` under ``:spam.example``) or, when it ends with a wildcard, under its
literal start (``@bot_*`` under ``@bot_``), or, when it has neither, under the first
three characters of its longest literal piece (``*spam*`` under ``spa``). A check looks
up every suffix, prefix and three-character piece of the value (a few dozen dictionary
lookups) and matches only the globs filed there; the few globs with no literal piece of
three characters (``*``, ``*a?b*``) are matched one by one. Pure:
no I/O, usable by the bot and by the homeserver's spam check alike."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import translate
from typing import Literal

from forum.matrix import server_of

Kind = Literal["user", "server"]
_WILDCARDS = re.compile(r"[*?]")
GRAM = 3


@dataclass(frozen=True)
class Rule:
    """A ban rule: on a user or a server, its entity (a glob or not) and its reason."""

    kind: str
    entity: str
    reason: str


def is_glob(entity: str) -> bool:
    return "*" in entity or "?" in entity


class _Glob:
    """One glob and its compiled form (made at its first use: loading stays fast)."""

    __slots__ = ("entity", "keys", "_regex")

    def __init__(self, entity: str) -> None:
        self.entity = entity
        self.keys: dict[str, None] = {}  # the rule keys with this glob, in order
        self._regex: re.Pattern[str] | None = None

    def matches(self, value: str) -> bool:
        if self._regex is None:
            self._regex = re.compile(translate(self.entity))
        return self._regex.match(value) is not None


class _Table:
    """The entities of one kind: exact ones, globs by literal end, by literal start, and
    the rest."""

    def __init__(self) -> None:
        self.exact: dict[str, dict[str, None]] = {}
        self.globs: dict[str, _Glob] = {}
        self.by_tail: dict[str, dict[str, _Glob]] = {}
        self.by_head: dict[str, dict[str, _Glob]] = {}
        self.by_gram: dict[str, dict[str, _Glob]] = {}
        self.loose: dict[str, _Glob] = {}

    def _place(self, entity: str) -> tuple[dict[str, dict[str, _Glob]] | None, str]:
        """Where a glob is filed: (the table, its name there), or (None, "") for the
        globs matched one by one."""
        parts = _WILDCARDS.split(entity)
        if parts[-1]:
            return self.by_tail, parts[-1]
        if parts[0]:
            return self.by_head, parts[0]
        longest = max(parts, key=len)
        if len(longest) >= GRAM:
            return self.by_gram, longest[:GRAM]
        return None, ""

    def _bucket(self, entity: str) -> dict[str, _Glob]:
        table, name = self._place(entity)
        return self.loose if table is None else table.setdefault(name, {})

    def add(self, entity: str, key: str) -> None:
        if not is_glob(entity):
            self.exact.setdefault(entity, {})[key] = None
            return
        glob = self.globs.get(entity)
        if glob is None:
            glob = self.globs[entity] = _Glob(entity)
            self._bucket(entity)[entity] = glob
        glob.keys[key] = None

    def remove(self, entity: str, key: str) -> None:
        if not is_glob(entity):
            keys = self.exact.get(entity)
            if keys is not None:
                keys.pop(key, None)
                if not keys:
                    del self.exact[entity]
            return
        glob = self.globs.get(entity)
        if glob is None:
            return
        glob.keys.pop(key, None)
        if glob.keys:
            return
        del self.globs[entity]
        table, name = self._place(entity)
        if table is None:
            self.loose.pop(entity, None)
            return
        bucket = table.get(name, {})
        bucket.pop(entity, None)
        if not bucket:
            table.pop(name, None)

    def keys_matching(self, value: str) -> Iterator[str]:
        """The rule keys whose entity matches ``value``: exact ones first."""
        yield from self.exact.get(value, ())
        by_tail, by_head = self.by_tail, self.by_head
        if by_tail:
            for i in range(len(value) + 1):
                bucket = by_tail.get(value[i:])
                if bucket:
                    for glob in bucket.values():
                        if glob.matches(value):
                            yield from glob.keys
        if by_head:
            for i in range(1, len(value) + 1):
                bucket = by_head.get(value[:i])
                if bucket:
                    for glob in bucket.values():
                        if glob.matches(value):
                            yield from glob.keys
        by_gram = self.by_gram
        if by_gram:
            seen: set[str] = set()
            for i in range(len(value) - GRAM + 1):
                gram = value[i : i + GRAM]
                bucket = by_gram.get(gram)
                if bucket and gram not in seen:
                    seen.add(gram)
                    for glob in bucket.values():
                        if glob.matches(value):
                            yield from glob.keys
        for glob in self.loose.values():
            if glob.matches(value):
                yield from glob.keys


class PolicyIndex:
    """Ban rules by key (the forum's own and those of the lists it follows), and the
    first rule that matches a user or a server."""

    def __init__(self) -> None:
        self.rules: dict[str, Rule] = {}
        self._tables: dict[str, _Table] = {"user": _Table(), "server": _Table()}

    def __len__(self) -> int:
        return len(self.rules)

    def __contains__(self, key: object) -> bool:
        return key in self.rules

    def values(self) -> Iterator[Rule]:
        return iter(self.rules.values())

    def get(self, key: str) -> Rule | None:
        return self.rules.get(key)

    def set(self, key: str, rule: Rule) -> None:
        """Add or replace the rule ``key``."""
        self.remove(key)
        table = self._tables.get(rule.kind)
        if table is None:
            return
        self.rules[key] = rule
        table.add(rule.entity, key)

    def remove(self, key: str) -> Rule | None:
        rule = self.rules.pop(key, None)
        if rule is not None:
            self._tables[rule.kind].remove(rule.entity, key)
        return rule

    def user_rules(self, user_id: str) -> Iterator[tuple[str, Rule]]:
        """Every rule banning ``user_id``: on the user, then on their server."""
        for key in self._tables["user"].keys_matching(user_id):
            yield key, self.rules[key]
        server = server_of(user_id)
        if server:
            for key in self._tables["server"].keys_matching(server):
                yield key, self.rules[key]

    def user_rule(self, user_id: str) -> tuple[str, Rule] | None:
        """The first rule banning ``user_id``: on the user, else on their server."""
        for key in self._tables["user"].keys_matching(user_id):
            return key, self.rules[key]
        return self.server_rule(server_of(user_id))

    def server_rule(self, server: str) -> tuple[str, Rule] | None:
        """The first rule banning the server ``server``."""
        if not server:
            return None
        for key in self._tables["server"].keys_matching(server):
            return key, self.rules[key]
        return None
