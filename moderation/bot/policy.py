"""Policy lists: the forum's own ban rules (published in its policy room) and the lists it
subscribes to. A subscribed rule bans the people it matches; a removed one lifts the bans
it made, also when it went away while the bot was down. Anyone who joins is checked
against every rule."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.errors import MatrixError
from forum.events import StateChange
from forum.matrix import server_of
from forum.retry import retry_call, retrying

from ..policy_index import PolicyIndex, Rule, is_glob
from .actions import Actions
from .consequences import DryRunSwitch
from .management import ManagementRoom
from .repositories import PolicyBans

if TYPE_CHECKING:
    from forum.gateway import Gateway

log = logging.getLogger(__name__)

POLICY_BAN = frozenset({"m.ban", "org.matrix.mjolnir.ban"})
POLICY_TYPES = {
    "m.policy.rule.user": "user",
    "m.room.rule.user": "user",
    "org.matrix.mjolnir.rule.user": "user",
    "m.policy.rule.server": "server",
    "m.room.rule.server": "server",
    "org.matrix.mjolnir.rule.server": "server",
}


class _NotYet(Exception):
    """A policy list could not be read yet."""


def own_rule(kind: str, content: dict[str, Any]) -> Rule | None:
    """The ban rule of a state event of the forum's own policy room, if it is one."""
    if content.get("recommendation") in POLICY_BAN and content.get("entity"):
        return Rule(kind, str(content["entity"]), str(content.get("reason") or ""))
    return None


def list_rule(kind: str, content: dict[str, Any]) -> Rule | None:
    """The ban rule of a state event of a followed list, if it is one."""
    entity = content.get("entity")
    if content.get("recommendation") in POLICY_BAN and isinstance(entity, str) and entity:
        return Rule(kind, entity, str(content.get("reason") or ""))
    return None


@dataclass(kw_only=True, eq=False)
class PolicyLists:
    gateway: Gateway
    actions: Actions
    sessionmaker: async_sessionmaker[AsyncSession]
    management: ManagementRoom
    consequences: DryRunSwitch
    policy_room: str
    subscriptions: list[str]
    t: Callable[[str], str]
    """The bot's gettext."""
    own_rules: PolicyIndex = field(init=False, default_factory=PolicyIndex)
    """The forum's own: state key -> rule."""
    rules: PolicyIndex = field(init=False, default_factory=PolicyIndex)
    """Subscribed: "room|type|state_key" -> rule."""
    list_rooms: set[str] = field(init=False, default_factory=set)

    @property
    def actor(self) -> str:
        return self.gateway.user_id

    def is_list_room(self, room_id: str) -> bool:
        return room_id == self.policy_room or room_id in self.list_rooms

    # --- our own rules ----------------------------------------------------------------
    async def load_own_rules(self) -> None:
        for ev in await self.gateway.get_state(self.policy_room):
            kind = POLICY_TYPES.get(str(ev.get("type")))
            rule = own_rule(kind, ev.get("content") or {}) if kind else None
            if rule is not None:
                self.own_rules.set(str(ev.get("state_key")), rule)

    async def on_state(self, ev: StateChange) -> None:
        kind = POLICY_TYPES.get(ev.type)
        if kind is None:
            return
        if ev.room_id == self.policy_room:
            rule = own_rule(kind, ev.content)
            if rule is not None:
                self.own_rules.set(ev.state_key, rule)
            else:
                self.own_rules.remove(ev.state_key)
        elif ev.room_id in self.list_rooms:
            await self.rule_changed(ev.room_id, ev.type, ev.state_key, ev.content)

    # --- joins ------------------------------------------------------------------------
    def matching_rule(self, user: str) -> tuple[str, Rule] | None:
        """The first rule banning ``user`` (the forum's own first), by the indexes: a
        check does not walk every rule."""
        return self.own_rules.user_rule(user) or self.rules.user_rule(user)

    def server_rule(self, server: str) -> tuple[str, Rule] | None:
        """The first rule banning the server ``server`` (the forum's own first)."""
        return self.own_rules.server_rule(server) or self.rules.server_rule(server)

    async def ban_on_join(self, user: str, room_id: str, event_id: str) -> bool:
        """Ban ``user``, who just joined ``room_id``, if a rule matches them; whether one did."""
        rule = self.matching_rule(user)
        if rule is None:
            return False
        key, found = rule
        if await self._banned_in(room_id, user):
            # a join handled late (after the rule's ban, in the same sync batch): banned
            # already; a join after a moderator's unban still finds "join" and is banned
            return True
        reason = found.reason or self.t("Policy list rule")
        rooms = await self.actions.ban(user, reason)
        if key in self.rules:
            async with self.sessionmaker() as s, s.begin():
                await PolicyBans(s).add(key, user)
        await self.actions.audit(
            actor=self.actor, action="ban", target=user, rooms=rooms, reason=reason,
            event_id=event_id, source="policy",
        )  # fmt: skip
        return True

    async def _banned_in(self, room_id: str, user: str) -> bool:
        try:
            return await self.actions.gateway.membership(room_id, user) == "ban"
        except MatrixError as exc:  # unknown: ban (again) rather than let them in
            log.info("cannot read the membership of %s in %s: %s", user, room_id, exc)
            return False

    # --- subscriptions ----------------------------------------------------------------
    async def subscribe_all(self) -> None:
        """Follow every configured list. One that cannot be read now (its server is down,
        say) is tried again with the project's retry policy, backing off up to 5 minutes,
        until it can."""
        policy = retrying(
            None, retryable=lambda exc: isinstance(exc, _NotYet), initial=2.0, cap=300.0
        )
        await asyncio.gather(
            *(
                retry_call(policy.copy(), partial(self._subscribe_or_raise, ref))
                for ref in self.subscriptions
            )
        )

    async def _subscribe_or_raise(self, ref: str) -> None:
        if not await self.subscribe(ref):
            raise _NotYet(ref)

    async def subscribe(self, ref: str) -> bool:
        room_ref, _, query = ref.partition("?")
        via = [v.removeprefix("via=") for v in query.split("&") if v.startswith("via=")]
        if not via and server_of(room_ref):
            via = [server_of(room_ref)]
        try:
            room_id = await self.gateway.join(room_ref, via=via)
            state = await self.gateway.get_state(room_id)
        except MatrixError as exc:
            log.warning("cannot subscribe to the policy list %s: %s", ref, exc)
            return False
        self.list_rooms.add(room_id)
        # Every rule in the index first (joins are checked against them at once), then
        # what they call for, with one read of the members for the whole list.
        new: list[tuple[str, Rule]] = []
        for ev in state:
            etype = str(ev.get("type"))
            if etype not in POLICY_TYPES:
                continue
            key = f"{room_id}|{etype}|{ev.get('state_key')}"
            rule = list_rule(POLICY_TYPES[etype], ev.get("content") or {})
            if rule is None:
                if self.rules.remove(key) is not None:
                    await self.lift(key)
            elif self.rules.get(key) != rule:
                self.rules.set(key, rule)
                new.append((key, rule))
        await self.enforce_many(new)
        await self.lift_missing_rules(room_id)
        log.info("subscribed to the policy list %s (%s)", ref, room_id)
        return True

    async def rule_changed(
        self, room_id: str, etype: str, state_key: str, content: dict[str, Any]
    ) -> None:
        key = f"{room_id}|{etype}|{state_key}"
        rule = list_rule(POLICY_TYPES[etype], content)
        if rule is not None:
            if self.rules.get(key) == rule:
                return
            self.rules.set(key, rule)
            await self.enforce(key, rule)
            return
        if self.rules.remove(key) is None:
            return
        await self.lift(key)

    async def lift(self, key: str) -> None:
        """Undo the bans of a removed rule. Each ban is forgotten only once its unban is
        done, so unbans cut short by a crash are found again at the next start."""
        async with self.sessionmaker() as s:
            users = await PolicyBans(s).users_of(key)
        for user in users:
            async with self.sessionmaker() as s:
                others = await PolicyBans(s).other_rules_of(user, key)
            if not others and not self.matching_rule(user):
                rooms = await self.actions.unban(user, "policy rule removed")
                await self.actions.audit(
                    actor=self.actor, action="unban", target=user, rooms=rooms,
                    reason="policy rule removed", source="policy",
                )  # fmt: skip
                body = self.t("Policy rule removed: {user} unbanned.").format(user=user)
                await self.management.tell(body)
            async with self.sessionmaker() as s, s.begin():
                await PolicyBans(s).remove(key, user)

    async def lift_missing_rules(self, room_id: str) -> None:
        """After (re)reading a list: bans recorded for rules it no longer has (removed
        while the bot was down, or lifted only in part before a crash) are undone."""
        async with self.sessionmaker() as s:
            keys = await PolicyBans(s).keys_in(room_id)
        for key in keys:
            if key not in self.rules:
                log.info("policy rule %s is gone: lifting its bans", key)
                await self.lift(key)

    async def enforce(self, key: str, rule: Rule) -> None:
        await self.enforce_many([(key, rule)])

    async def enforce_many(self, rules: list[tuple[str, Rule]]) -> None:
        """Ban whom each of ``rules`` names: a user named exactly, member or not (a ban
        ahead of a join is allowed); the members a glob or a server rule matches (the
        members read once for all the rules)."""
        targets: dict[str, list[str]] = {key: [] for key, _ in rules}
        wide = PolicyIndex()  # the globs and server rules, matched against each member
        for key, rule in rules:
            if rule.kind == "user" and not is_glob(rule.entity):
                targets[key].append(rule.entity)
            else:
                wide.set(key, rule)
        if len(wide):
            for member in await self.actions.members():
                for key, _rule in wide.user_rules(member):
                    targets[key].append(member)
        for key, rule in rules:
            users = [u for u in targets[key] if not await self.actions.is_exempt(u)]
            if not users:
                continue
            reason = rule.reason or self.t("Policy list rule")
            await self.consequences.current.policy_bans(key, rule.entity, reason, users)
