"""Provisioning: the forum's Matrix layout, declared by settings and reconciled.

:func:`desired_layout` and :func:`plan` are pure: from the settings and the observed state
of the homeserver they compute a list of :class:`Change`. :func:`observe` reads the state
through the gateway; :func:`apply` carries a plan out. Running it twice makes zero changes
the second time. A room removed from the config is never deleted: it is detached from the
Space (its ``m.space.child`` emptied) and reported.

Rooms that are created in the same plan are referred to as ``<new:KEY>`` inside contents
and state keys; :func:`apply` substitutes their ids once they exist.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.errors import Conflict, Forbidden, MatrixError, NotFound
from forum.gateway import Gateway
from forum.settings import RoomSpec, Settings, TopicSpec
from forum.storage import RoomRegistry

log = logging.getLogger(__name__)

SPACE = "space"
SPECIAL_KINDS = ("space", "lobby", "announcements", "management", "policy")
CHILD_KINDS = ("lobby", "announcements", "topic")
#: Homeserver requests provisioning keeps in flight at once.
APPLY_CONCURRENCY = 8
#: rooms read at the same time while observing
OBSERVE_CONCURRENCY = 16
POLICY_TYPES = ("m.policy.rule.user", "m.policy.rule.server", "m.policy.rule.room")


@dataclass(frozen=True)
class DesiredRoom:
    key: str
    kind: str
    alias: str
    name: str
    topic: str
    join_rule: str
    history_visibility: str
    power_levels: dict[str, Any]
    invite: tuple[str, ...]
    order: int = 0

    @property
    def is_space(self) -> bool:
        return self.kind == "space"

    @property
    def in_space(self) -> bool:
        return self.kind in CHILD_KINDS


@dataclass(frozen=True)
class ObservedRoom:
    room_id: str
    state: Mapping[tuple[str, str], Mapping[str, Any]]
    """Content of each current state event by (type, state_key)."""

    def content(self, event_type: str, state_key: str = "") -> Mapping[str, Any] | None:
        return self.state.get((event_type, state_key))

    def membership(self, user_id: str) -> str | None:
        c = self.content("m.room.member", user_id)
        m = c.get("membership") if c else None
        return m if isinstance(m, str) else None


@dataclass(frozen=True)
class Observed:
    rooms: Mapping[str, ObservedRoom]
    """Rooms found for desired keys (by registry or alias)."""
    alias_targets: Mapping[str, str | None]
    """Where each desired alias points now (None: free)."""
    unmanaged_keys: Mapping[str, str] = field(default_factory=dict)
    """Registry entries (key -> room id) no longer in the config, not yet detached."""


@dataclass(frozen=True)
class Change:
    action: str  # create_room | set_state | set_alias | invite | detach
    room: str  # key, or a room id for detached rooms
    event_type: str | None = None
    state_key: str | None = None
    content: Any = None
    user_id: str | None = None
    reason: str = ""

    def describe(self) -> str:
        if self.action == "create_room":
            return f"create room {self.room} ({self.reason})"
        if self.action == "set_state":
            key = f" [{self.state_key}]" if self.state_key else ""
            return f"set {self.event_type}{key} in {self.room}: {self.reason}"
        if self.action == "set_alias":
            return f"point alias {self.content} to {self.room}"
        if self.action == "invite":
            return f"invite {self.user_id} to {self.room}"
        return f"detach {self.room} from the space ({self.reason})"

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}


@dataclass
class Plan:
    changes: list[Change]
    problems: list[str]

    @property
    def empty(self) -> bool:
        return not self.changes


def new_ref(key: str) -> str:
    return f"<new:{key}>"


# --- the desired layout (pure) -----------------------------------------------------------


def _power_levels(settings: Settings, kind: str, creator: str) -> dict[str, Any]:
    pl = settings.power_levels
    mod = pl.moderator
    users: dict[str, int] = {}
    if settings.room_version not in {"12"}:
        users[creator] = pl.moderation_bot
    elif creator != settings.moderation_bot_id:
        users[settings.moderation_bot_id] = pl.moderation_bot
    for m in settings.moderator_ids:
        users.setdefault(m, mod)
    users.setdefault(settings.membership_bot_id, pl.membership_bot)
    events = {
        "m.room.name": mod,
        "m.room.topic": mod,
        "m.room.avatar": mod,
        "m.room.canonical_alias": mod,
        "m.room.pinned_events": mod,
        "m.room.join_rules": pl.moderation_bot,
        "m.room.power_levels": pl.moderation_bot,
        "m.room.history_visibility": pl.moderation_bot,
        "m.room.encryption": pl.moderation_bot,
        "m.room.server_acl": pl.moderation_bot,
        "m.room.tombstone": pl.moderation_bot,
        "m.space.child": mod,
        "m.space.parent": mod,
    }
    events_default = pl.members
    if kind in {"space", "announcements", "policy"}:
        events_default = mod
        events["m.reaction"] = pl.members
    if kind == "policy":
        for t in POLICY_TYPES:
            events[t] = mod
    return {
        "users": dict(sorted(users.items())),
        "users_default": pl.members,
        "events": dict(sorted(events.items())),
        "events_default": events_default,
        "state_default": pl.state_default,
        "invite": pl.invite,
        "kick": pl.kick,
        "ban": pl.ban,
        "redact": pl.redact,
        "notifications": {"room": mod},
    }


def desired_layout(settings: Settings, creator: str) -> list[DesiredRoom]:
    """Every room the forum declares, the Space first. ``creator`` creates the rooms."""
    rooms: list[tuple[str, str, RoomSpec | TopicSpec]] = [
        (kind, kind, getattr(settings.rooms, kind)) for kind in SPECIAL_KINDS
    ] + [(f"topic:{t.slug}", "topic", t) for t in settings.topics]
    join_rules = {
        "space": "knock",
        "lobby": "public",
        "announcements": "knock_restricted",
        "management": "invite",
        "policy": "public",
        "topic": "knock_restricted",
    }
    history = {"policy": "world_readable"}
    staff = (settings.membership_bot_id, *settings.moderator_ids)
    out: list[DesiredRoom] = []
    for order, (key, kind, spec) in enumerate(rooms):
        alias = spec.effective_alias if isinstance(spec, TopicSpec) else spec.alias
        langs = settings.forum.languages
        topic = "\n\n".join(spec.topic[lang] for lang in langs if lang in spec.topic)
        out.append(
            DesiredRoom(
                key=key,
                kind=kind,
                alias=settings.alias_id(alias),
                name=settings.text(spec.name),
                topic=topic,
                join_rule=join_rules[kind],
                history_visibility=history.get(kind, "shared"),
                power_levels=_power_levels(settings, kind, creator),
                invite=tuple(u for u in staff if u != creator),
                order=order,
            )
        )
    return out


def _join_rules_content(room: DesiredRoom, space_ref: str) -> dict[str, Any]:
    if room.join_rule in {"restricted", "knock_restricted"}:
        return {
            "join_rule": room.join_rule,
            "allow": [{"type": "m.room_membership", "room_id": space_ref}],
        }
    return {"join_rule": room.join_rule}


def _declared_state(
    room: DesiredRoom, space_ref: str, server: str
) -> list[tuple[str, str, dict[str, Any]]]:
    """(type, state_key, content) the room must have (power levels excluded)."""
    state: list[tuple[str, str, dict[str, Any]]] = [
        ("m.room.name", "", {"name": room.name}),
        ("m.room.topic", "", {"topic": room.topic}),
        ("m.room.join_rules", "", _join_rules_content(room, space_ref)),
        ("m.room.history_visibility", "", {"history_visibility": room.history_visibility}),
        ("m.room.guest_access", "", {"guest_access": "forbidden"}),
        ("m.room.canonical_alias", "", {"alias": room.alias}),
    ]
    if room.in_space:
        state.append(("m.space.parent", space_ref, {"via": [server], "canonical": True}))
    return state


def _differs(current: Mapping[str, Any] | None, declared: Mapping[str, Any]) -> bool:
    """A declared subset of keys differs from the current content."""
    if current is None:
        return True
    return any(current.get(k) != v for k, v in declared.items())


def declared_power_levels(
    current: Mapping[str, Any] | None, declared: Mapping[str, Any]
) -> dict[str, Any]:
    """The declared power levels as they apply to a room's ``current`` ones (pure): the
    declared keys, and in ``users`` the declared entries plus the room's own entries
    below the declared default level (mutes), so that provisioning never lifts a mute.
    Other entries the room has (a moderator no longer declared) go."""
    want = dict(declared)
    users = dict(declared.get("users") or {})
    default = declared.get("users_default", 0)
    found = (current or {}).get("users")
    for user, level in (found if isinstance(found, dict) else {}).items():
        if user not in users and isinstance(level, int) and level < default:
            users[user] = level
    want["users"] = dict(sorted(users.items()))
    return want


def plan(settings: Settings, creator: str, observed: Observed) -> Plan:
    """The changes that bring the homeserver to the declared layout (pure)."""
    server = settings.server_name
    layout = desired_layout(settings, creator)
    changes: list[Change] = []
    problems: list[str] = []

    def ref(key: str) -> str:
        found = observed.rooms.get(key)
        return found.room_id if found else new_ref(key)

    space_ref = ref(SPACE)
    for room in layout:
        found = observed.rooms.get(room.key)
        declared = _declared_state(room, space_ref, server)
        if found is None:
            target = observed.alias_targets.get(room.alias)
            if target:
                problems.append(
                    f"alias {room.alias} points to {target}, which the bot "
                    f"cannot manage; {room.key} not created"
                )
                continue
            initial = [
                {"type": t, "state_key": k, "content": c}
                for t, k, c in declared
                if t not in {"m.room.name", "m.room.topic", "m.room.canonical_alias"}
            ]
            payload: dict[str, Any] = {
                "room_version": settings.room_version,
                "name": room.name,
                "topic": room.topic,
                "preset": "public_chat" if room.join_rule == "public" else "private_chat",
                "visibility": "private",
                "room_alias_name": room.alias[1:].split(":", 1)[0],
                "initial_state": initial,
                "power_level_content_override": room.power_levels,
                "invite": list(room.invite),
            }
            if room.is_space:
                payload["creation_content"] = {"type": "m.space"}
            changes.append(
                Change("create_room", room.key, content=payload, reason=f"{room.kind} {room.alias}")
            )
            if room.in_space:
                changes.append(_child_change(room, new_ref(room.key), server))
            continue
        for etype, skey, content in declared:
            if _differs(found.content(etype, skey), content):
                changes.append(
                    Change(
                        "set_state",
                        room.key,
                        etype,
                        skey,
                        content,
                        reason=_why(found.content(etype, skey), content),
                    )
                )
        current_pl = found.content("m.room.power_levels")
        if _differs(current_pl, declared_power_levels(current_pl, room.power_levels)):
            # the declared keys only: applied through the account's power-level editor to
            # the levels as they are when it runs (a mute meanwhile is kept)
            changes.append(
                Change(
                    "set_state",
                    room.key,
                    "m.room.power_levels",
                    "",
                    room.power_levels,
                    reason=_why(current_pl, room.power_levels),
                )
            )
        target = observed.alias_targets.get(room.alias)
        if target is None:
            changes.append(Change("set_alias", room.key, content=room.alias))
        elif target != found.room_id:
            problems.append(
                f"alias {room.alias} points to {target}, not to {room.key} "
                f"({found.room_id}); left as it is"
            )
        for user in room.invite:
            if found.membership(user) not in {"join", "invite", "ban"}:
                changes.append(Change("invite", room.key, user_id=user))
        space = observed.rooms.get(SPACE)
        if room.in_space and space is not None:
            child = space.content("m.space.child", found.room_id)
            wanted = _child_change(room, found.room_id, server).content
            if _differs(child, wanted):
                changes.append(_child_change(room, found.room_id, server))
    changes.extend(_detachments(observed, layout))
    return Plan(changes, problems)


def _child_change(room: DesiredRoom, room_ref: str, server: str) -> Change:
    return Change(
        "set_state",
        SPACE,
        "m.space.child",
        room_ref,
        {"via": [server], "order": f"{room.order:03d}", "suggested": True},
        reason=f"{room.key} is a child of the space",
    )


def _detachments(observed: Observed, layout: list[DesiredRoom]) -> list[Change]:
    space = observed.rooms.get(SPACE)
    if space is None:
        return []
    wanted = {
        observed.rooms[r.key].room_id for r in layout if r.in_space and r.key in observed.rooms
    }
    out = []
    for (etype, skey), content in sorted(space.state.items()):
        if etype == "m.space.child" and content.get("via") and skey not in wanted:
            name = next((k for k, v in observed.unmanaged_keys.items() if v == skey), skey)
            out.append(
                Change(
                    "detach",
                    skey,
                    "m.space.child",
                    skey,
                    {},
                    reason=f"{name} is no longer in the configuration",
                )
            )
    return out


def _why(current: Mapping[str, Any] | None, declared: Mapping[str, Any]) -> str:
    if current is None:
        return "missing"
    diff = [k for k, v in declared.items() if current.get(k) != v]
    return "differs in " + ", ".join(diff)


# --- observing and applying (I/O) --------------------------------------------------------


async def observe(
    settings: Settings, gateway: Gateway, sessionmaker: async_sessionmaker[AsyncSession]
) -> Observed:
    """Read what exists: registry first, then aliases; the state of each found room."""
    layout = desired_layout(settings, gateway.user_id)
    async with sessionmaker() as s:
        registry = {r.key: r for r in await RoomRegistry(s).all(include_detached=True)}
    rooms: dict[str, ObservedRoom] = {}
    aliases: dict[str, str | None] = {}
    limit = asyncio.Semaphore(OBSERVE_CONCURRENCY)

    async def look(room: DesiredRoom) -> None:
        async with limit:
            aliases[room.alias] = await gateway.resolve_alias(room.alias)
            record = registry.get(room.key)
            room_id = record.room_id if record else aliases[room.alias]
            if room_id is None:
                return
            try:
                state = await gateway.get_state(room_id)
            except (Forbidden, NotFound) as exc:
                log.warning(
                    "room %s (%s) cannot be read (%s); it will be recreated", room.key, room_id, exc
                )
                return
        rooms[room.key] = ObservedRoom(
            room_id,
            {
                (e["type"], e["state_key"]): e.get("content") or {}
                for e in state
                if isinstance(e.get("type"), str) and isinstance(e.get("state_key"), str)
            },
        )

    # the rooms side by side: a standby taking over a forum of a hundred rooms reads them
    # all before it acts (one after another, 18.5 s on a loaded machine)
    await asyncio.gather(*(look(room) for room in layout))
    rooms = {r.key: rooms[r.key] for r in layout if r.key in rooms}  # the layout's order
    aliases = {r.alias: aliases[r.alias] for r in layout}
    desired_keys = {r.key for r in layout}
    unmanaged = {
        k: r.room_id for k, r in registry.items() if k not in desired_keys and not r.detached
    }
    return Observed(rooms, aliases, unmanaged)


@dataclass
class ApplyResult:
    applied: list[Change]
    failed: list[tuple[Change, str]]
    room_ids: dict[str, str]
    detached: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "applied": [c.to_json() for c in self.applied],
            "failed": [{**c.to_json(), "error": e} for c, e in self.failed],
            "rooms": self.room_ids,
            "detached": self.detached,
        }


def _substitute(value: Any, ids: Mapping[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("<new:") and value.endswith(">"):
        return ids.get(value[5:-1], value)
    if isinstance(value, dict):
        return {_substitute(k, ids): _substitute(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, ids) for v in value]
    return value


async def apply(
    settings: Settings,
    the_plan: Plan,
    gateway: Gateway,
    sessionmaker: async_sessionmaker[AsyncSession],
    observed: Observed,
    *,
    joiners: Mapping[str, Gateway] | None = None,
) -> ApplyResult:
    """Carry out ``the_plan``; record rooms in the registry; let our own bots join.

    ``joiners`` maps user ids of other accounts we control (the membership bot) to their
    gateways, so they accept their invites at once.
    """
    ids = {k: r.room_id for k, r in observed.rooms.items()}
    layout = {r.key: r for r in desired_layout(settings, gateway.user_id)}
    applied: list[Change] = []
    failed: list[tuple[Change, str]] = []
    limit = asyncio.Semaphore(APPLY_CONCURRENCY)

    async def run(change: Change) -> None:
        async with limit:
            try:
                await _apply_one(change, gateway, ids)
            except MatrixError as exc:
                log.error("provisioning step failed: %s: %s", change.describe(), exc)
                failed.append((change, str(exc)))
                return
        applied.append(change)

    # The Space first (others refer to it), then the other rooms, then everything else;
    # within a phase, rooms are independent and handled concurrently.
    creates = [c for c in the_plan.changes if c.action == "create_room"]
    phases = [
        [c for c in creates if c.room == SPACE],
        [c for c in creates if c.room != SPACE],
        [c for c in the_plan.changes if c.action != "create_room"],
    ]
    for phase in phases:
        await asyncio.gather(*(run(c) for c in phase))
    order = {id(c): i for i, c in enumerate(the_plan.changes)}
    applied.sort(key=lambda c: order[id(c)])
    detached = [c.room for c in applied if c.action == "detach"]
    async with sessionmaker() as s, s.begin():
        reg = RoomRegistry(s)
        for key, room_id in ids.items():
            await reg.upsert(key, room_id, layout[key].kind, layout[key].alias)
        not_detached = {c.room for c, _ in failed if c.action == "detach"}
        for key, room_id in observed.unmanaged_keys.items():
            if room_id not in not_detached:
                await reg.mark_detached(key)

    async def join(other: Gateway, key: str, room_id: str) -> None:
        async with limit:
            try:
                await other.join(room_id, via=[settings.server_name])
            except MatrixError as exc:
                log.warning("%s could not join %s: %s", other.user_id, key, exc)

    joins = []
    for user_id, other in (joiners or {}).items():
        for key, room_id in ids.items():
            found = observed.rooms.get(key)
            if user_id in layout[key].invite and (
                found is None or found.membership(user_id) != "join"
            ):
                joins.append(join(other, key, room_id))
    await asyncio.gather(*joins)
    return ApplyResult(applied, failed, ids, detached)


async def _apply_one(change: Change, gateway: Gateway, ids: dict[str, str]) -> None:
    if change.action == "create_room":
        room_id = await gateway.create_room(_substitute(change.content, ids))
        ids[change.room] = room_id
        log.info("created %s: %s", change.room, room_id)
        return
    if change.action == "set_state" and change.event_type == "m.room.power_levels":
        declared = _substitute(change.content, ids)
        assert isinstance(declared, dict)

        def declare(content: dict[str, Any]) -> bool:
            want = declared_power_levels(content, declared)
            differs = {k: v for k, v in want.items() if content.get(k) != v}
            content.update(copy.deepcopy(differs))
            return bool(differs)

        await gateway.powers.edit(ids.get(change.room, change.room), declare)
        return
    if change.action in {"set_state", "detach"}:
        room_id = ids.get(change.room, change.room) if change.action == "set_state" else ids[SPACE]
        await gateway.put_state(
            room_id,
            str(change.event_type),
            _substitute(change.content, ids),
            state_key=_substitute(change.state_key or "", ids),
        )
        return
    if change.action == "set_alias":
        try:
            await gateway.put_alias(str(change.content), ids[change.room])
        except Conflict:
            log.warning("alias %s was taken meanwhile", change.content)
            raise
        return
    if change.action == "invite":
        await gateway.invite(ids[change.room], str(change.user_id))
        return
    raise ValueError(f"unknown change {change.action}")


async def survey(
    settings: Settings, gateway: Gateway, sessionmaker: async_sessionmaker[AsyncSession]
) -> tuple[Plan, Observed]:
    """Observe and plan: what :func:`apply` would carry out, and what it was planned from
    (a standby reads the rooms ahead and applies at its takeover)."""
    observed = await observe(settings, gateway, sessionmaker)
    return plan(settings, gateway.user_id, observed), observed


async def provision(
    settings: Settings,
    gateway: Gateway,
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    dry_run: bool = False,
    joiners: Mapping[str, Gateway] | None = None,
) -> tuple[Plan, ApplyResult | None]:
    """Observe, plan, and (unless ``dry_run``) apply."""
    the_plan, observed = await survey(settings, gateway, sessionmaker)
    if dry_run:
        return the_plan, None
    result = await apply(settings, the_plan, gateway, sessionmaker, observed, joiners=joiners)
    return the_plan, result
