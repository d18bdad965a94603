"""The service's side of :mod:`benchmarks.scale`: requests answered inside the forum's own
process (loaded there by :func:`benchmarks.moderation.serve`), so that the time and the
memory they measure are the service's own.

- ``publication``: the given people consent to publication (the digest keeps their words);
- ``policy``: a followed policy list of ``rules`` rules (those of
  :mod:`benchmarks.policy_list`, plus ``extra`` rule events naming members) filed in the
  moderation bot's index, then applied to ``members`` by the bot's own code
  (:meth:`PolicyLists.enforce_many`); the bans on members are carried out, those named
  ahead of a join are counted (see :func:`policy`);
- ``digest``: this week's digest built and rendered from the store, as
  :mod:`benchmarks.digest` does.
"""

from __future__ import annotations

import gc
import importlib.util
import random
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _sibling(name: str) -> Any:
    as_name = f"bench_{name}"
    if as_name in sys.modules:
        return sys.modules[as_name]
    spec = importlib.util.spec_from_file_location(as_name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[as_name] = module
    spec.loader.exec_module(module)
    return module


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def publication(service: Any, users: list[str]) -> None:
    from forum.consent import ConsentRecords

    async with service.ctx.db.sessionmaker() as s, s.begin():
        for user in users:
            await ConsentRecords(s).add(user, "publication", True, method="benchmark")


class _Recorder:
    """The consequences of a policy rule, recorded instead of carried out."""

    def __init__(self) -> None:
        self.bans: dict[str, tuple[str, str, list[str]]] = {}

    async def policy_bans(self, key: str, entity: str, reason: str, users: list[str]) -> None:
        self.bans[key] = (entity, reason, users)


class _Switch:
    def __init__(self, current: _Recorder) -> None:
        self.current = current


class _MembersFrom:
    """The bot's actions, but with ``members`` (the forum's admitted people: on this
    machine they are not joined to the rooms) as the rooms' members."""

    def __init__(self, actions: Any, members: list[str]) -> None:
        self._actions = actions
        self._members = dict.fromkeys(members)

    async def members(self) -> dict[str, str | None]:
        return dict(self._members)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._actions, name)


async def policy(service: Any, arg: dict[str, Any]) -> dict[str, Any]:
    """``arg``: ``rules`` (the list's size), ``extra`` (rule events among them that name
    members), ``members`` (user ids). The list is filed in the moderation bot's index of
    followed lists (and kept: its memory stays, as in production); the bot's
    :meth:`enforce_many` decides whom each rule bans, with the bans recorded; then the bans
    of members are carried out by the bot's enforcement (bans in every forum room, the
    audit, the management room told). The users named by a rule who are not members are
    banned ahead by the bot in every room too: counted here, with the time they would
    take at the rate the members' bans were carried out."""
    policy_list = _sibling("policy_list")
    bot = service.feature("moderation")
    lists = bot.policy_lists
    extra: list[dict[str, Any]] = arg["extra"]
    events = policy_list.rule_events(arg["rules"] - len(extra), random.Random(4284)) + extra
    members: list[str] = arg["members"]
    gc.collect()
    before = rss_mb()
    t0 = time.perf_counter()
    rules = policy_list.keyed_rules(events, "!bench-list:" + service.ctx.settings.server_name)
    for key, rule in rules:
        lists.rules.set(key, rule)
    index_s = time.perf_counter() - t0
    gc.collect()
    added = rss_mb() - before
    recorder = _Recorder()
    real_consequences, real_actions = lists.consequences, lists.actions
    lists.consequences, lists.actions = _Switch(recorder), _MembersFrom(real_actions, members)
    try:
        t0 = time.perf_counter()
        await lists.enforce_many(rules)
        decide_s = time.perf_counter() - t0
    finally:
        lists.consequences, lists.actions = real_consequences, real_actions
    member_set = set(members)
    on_members = {
        key: (entity, reason, [u for u in users if u in member_set])
        for key, (entity, reason, users) in recorder.bans.items()
    }
    banned_members = sorted({u for _, _, users in on_members.values() for u in users})
    ahead = {u for _, _, users in recorder.bans.values() for u in users} - member_set
    t0 = time.perf_counter()
    for key, (entity, reason, users) in on_members.items():
        if users:  # one after another, as enforce_many does
            await real_consequences.current.policy_bans(key, entity, reason, users)
    ban_s = time.perf_counter() - t0
    rooms = len(service.ctx.rooms.forum_ids)
    per_user = ban_s / len(banned_members) if banned_members else None
    kinds: dict[str, int] = {}
    for _, rule in rules:
        name = f"{rule.kind}_{'glob' if any(c in rule.entity for c in '*?') else 'exact'}"
        kinds[name] = kinds.get(name, 0) + 1
    return {
        "rules": len(rules),
        "rule_kinds": kinds,
        "members": len(members),
        "index_s": round(index_s, 3),
        "rss_added_mb": round(added, 1),
        "decide_s": round(decide_s, 3),
        "rules_with_targets": len(recorder.bans),
        "members_banned": len(banned_members),
        "members_banned_sample": banned_members[:5],
        "member_bans_carried_out_s": round(ban_s, 2),
        "member_ban_s_per_person_all_rooms": round(per_user, 3) if per_user else None,
        "forum_rooms": rooms,
        "non_members_named": len(ahead),
        "non_member_bans_not_carried_out": len(ahead) * rooms,
        "non_member_bans_estimate_s": round(per_user * len(ahead), 0) if per_user else None,
        "rss_mb_after": round(rss_mb(), 1),
    }


async def digest(service: Any, _arg: Any) -> dict[str, Any]:
    """This week's digest from the store (the messages the benchmark sent), built and
    rendered; the time, the service's memory before and after."""
    from sqlalchemy import func, select

    from bridge.models import DigestMessage
    from bridge.weeks import week_bounds, week_of

    ctx = service.ctx
    tz = ctx.settings.digest.timezone
    week = week_of(datetime.now(UTC), tz)
    start, end = week_bounds(week, tz)
    async with ctx.db.sessionmaker() as s:
        stored = await s.scalar(
            select(func.count()).where(DigestMessage.ts >= start, DigestMessage.ts < end)
        )
    gc.collect()
    before = rss_mb()
    t0 = time.perf_counter()
    built = await _sibling("digest").build_and_render(
        ctx.settings, ctx.db.sessionmaker, dict(ctx.rooms), week
    )
    took = time.perf_counter() - t0
    return {
        "week": week,
        "messages_stored_in_week": stored,
        "seconds": round(took, 3),
        "rss_mb_before": round(before, 1),
        "rss_mb_after": round(rss_mb(), 1),
        **built,
    }


async def room_concurrency(service: Any, n: int | None) -> int:
    """Set (or with None read) how many rooms the moderation bot acts in at once."""
    actions = service.feature("moderation").actions
    if n is not None:
        actions.room_concurrency = int(n)
    return int(actions.room_concurrency)


_handled: list[float] = []


async def lag_watch(service: Any, _: Any) -> None:
    """From now on, note each forum message's lag as the moderation bot finishes it: the
    time since the homeserver created the event (its ``origin_server_ts``: local senders,
    one clock), so without the senders' queue in front of the homeserver."""
    guard = service.feature("moderation").guard
    if getattr(guard, "_bench_watched", False):
        return
    protect = guard.protect

    async def watched(ev: Any) -> Any:
        try:
            return await protect(ev)
        finally:
            stamp = ev.raw.get("origin_server_ts")
            if isinstance(stamp, int):
                _handled.append(time.time() - stamp / 1000)

    guard.protect = watched
    guard._bench_watched = True


async def lags(service: Any, _: Any) -> list[float]:
    """The lags noted since the last call (see :func:`lag_watch`)."""
    out = list(_handled)
    _handled.clear()
    return out


COMMANDS: dict[str, Callable[[Any, Any], Awaitable[Any]]] = {
    "lag_watch": lag_watch,
    "lags": lags,
    "room_concurrency": room_concurrency,
    "publication": publication,
    "policy": policy,
    "digest": digest,
}
