"""The pure part of the moderation benchmark: a followed policy list of 10,000 ban rules
(users, servers and globs of both) loaded into the bot's index, the memory it adds, and
the time of a check (is this person banned?), beside the walk through every rule the bot
did before; and the time of the protections' decision on one message. No homeserver:
imported by :mod:`benchmarks.moderation` and runnable alone (prints JSON).

    .venv/bin/python benchmarks/policy_list.py [--rules 10000]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from forum.matrix import server_of  # noqa: E402
from forum.settings import ModerationSection  # noqa: E402
from moderation.bot.policy import POLICY_TYPES, list_rule  # noqa: E402
from moderation.bot.protections import Facts, Sent, default_protections, evaluate  # noqa: E402
from moderation.policy_index import PolicyIndex, Rule  # noqa: E402

LIST_ROOM = "!bench-list:bench.test"


def rule_events(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """``n`` state events of a policy list as the homeserver gives them: 60 % users,
    20 % servers, 10 % user globs, 10 % server globs."""
    events = []
    for i in range(n):
        pick = rng.random()
        if pick < 0.6:
            etype, entity = "m.policy.rule.user", f"@spammer{i}:host{i % 500}.example"
        elif pick < 0.8:
            etype, entity = "m.policy.rule.server", f"bad{i}.example"
        elif pick < 0.9:
            shape = rng.choice(["@bot{i}_*:*", "*:spam{i}.example", "@promo{i}*:host{j}.example"])
            etype, entity = "m.policy.rule.user", shape.format(i=i, j=i % 500)
        else:
            shape = rng.choice(["*.evil{i}.example", "spam{i}.*", "*bad{i}*"])
            etype, entity = "m.policy.rule.server", shape.format(i=i)
        events.append(
            {
                "type": etype,
                "state_key": f"rule-{i}",
                "content": {"entity": entity, "recommendation": "m.ban", "reason": "spam"},
            }
        )
    return events


def keyed_rules(events: list[dict[str, Any]], room: str = LIST_ROOM) -> list[tuple[str, Rule]]:
    """Each event of a followed list to its rule, under the key the bot files it by."""
    out = []
    for ev in events:
        etype = ev["type"]
        rule = list_rule(POLICY_TYPES[etype], ev["content"])
        if rule is not None:
            out.append((f"{room}|{etype}|{ev['state_key']}", rule))
    return out


def load(events: list[dict[str, Any]]) -> PolicyIndex:
    """What the bot does on reading a followed list: each event to a rule, in the index."""
    index = PolicyIndex()
    for key, rule in keyed_rules(events):
        index.set(key, rule)
    return index


def walk(rules: list[Rule], user: str) -> bool:
    """The check as the bot made it before the index: every rule, one after another."""
    for rule in rules:
        if rule.kind == "user" and fnmatchcase(user, rule.entity):
            return True
        if rule.kind == "server" and fnmatchcase(server_of(user), rule.entity):
            return True
    return False


def timed(fn: Any, samples: list[Any]) -> list[float]:
    out = []
    for s in samples:
        t0 = time.perf_counter()
        fn(s)
        out.append(time.perf_counter() - t0)
    return out


def ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 4),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 4),
        "max_ms": round(ordered[-1] * 1000, 4),
    }


def policy_list(n: int = 10_000, checks: int = 20_000) -> dict[str, Any]:
    rng = random.Random(4284)
    events = rule_events(n, rng)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = load(events)
    added_mb = (tracemalloc.get_traced_memory()[0] - before) / 2**20
    tracemalloc.stop()  # memory measured apart: tracing slows the load down
    del kept
    gc.collect()
    t0 = time.perf_counter()
    index = load(events)
    load_s = time.perf_counter() - t0
    # People to check: most innocent (on servers the rules do not name), some banned
    # by name, by server, by a glob.
    people = []
    for k in range(checks):
        pick = k % 10
        if pick < 6:
            people.append(f"@member{k}:host{k % 500}.example")
        elif pick == 6:
            people.append(f"@spammer{rng.randrange(n)}:host{rng.randrange(500)}.example")
        elif pick == 7:
            people.append(f"@x:bad{rng.randrange(n)}.example")
        elif pick == 8:
            people.append(f"@bot{rng.randrange(n)}_1:anywhere.example")
        else:
            people.append(f"@y:a.evil{rng.randrange(n)}.example")
    found = sum(index.user_rule(p) is not None for p in people)
    check = timed(index.user_rule, people)
    rules = list(index.values())
    sample = people[:: max(1, checks // 300)]
    linear = timed(lambda p: walk(rules, p), sample)
    agree = all((index.user_rule(p) is not None) == walk(rules, p) for p in sample)
    median_check_ms = statistics.median(check) * 1000
    return {
        "rules": len(index),
        "load_s": round(load_s, 3),
        "added_mb": round(added_mb, 1),
        "check": ms(check),
        "checks": checks,
        "checks_banned": found,
        "before_walk_every_rule": ms(linear),
        "index_agrees_with_walk": agree,
        "targets": {
            "load_under_1_s": load_s < 1.0,
            "added_under_30_mb": added_mb < 30,
            "check_median_under_0_2_ms": median_check_ms < 0.2,
        },
    }


def protections(messages: int = 20_000) -> dict[str, Any]:
    """The protections' pure decision on ordinary messages (the part of a spam check
    that is not I/O)."""
    settings = ModerationSection(words=[f"mot{i}" for i in range(200)], flood_messages=10)
    rules = default_protections()
    now = datetime.now(UTC)
    bodies = [
        {"msgtype": "m.text", "body": f"Bonjour à toutes, message numéro {i} https://x.example"}
        for i in range(messages)
    ]
    facts = Facts(
        settings, now, joined_at=now - timedelta(days=30),
        recent=tuple(Sent(float(i), "!r:x", f"$e{i}") for i in range(3)),
    )  # fmt: skip
    times = timed(lambda c: evaluate(rules, c, "@a:x", facts), bodies)
    return {"messages": messages, "words": len(settings.words), **ms(times)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rules", type=int, default=10_000)
    ns = parser.parse_args()
    print(
        json.dumps(
            {"policy_list": policy_list(ns.rules), "protections_decision": protections()},
            indent=2,
        )
    )
