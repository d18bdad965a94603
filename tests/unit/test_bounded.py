"""Per-person state in memory stays bounded (issue #11, point 7)."""

from __future__ import annotations

import asyncio

from forum.events import Message, parse_room_event
from moderation.bot.protections import FloodWindows
from tests.harness import BASE_CONFIG, settings_from

#: people seen in a long-lived forum (many more than any bound should keep)
CROWD = 12_000
BOUND = 10_000


def message(sender: str, n: int) -> Message:
    ev = parse_room_event(
        "!room:x",
        {
            "type": "m.room.message",
            "event_id": f"$e{n}",
            "sender": sender,
            "origin_server_ts": 1_700_000_000_000 + n,
            "content": {"msgtype": "m.text", "body": "bonjour"},
        },
    )
    assert isinstance(ev, Message)
    return ev


def test_flood_protection_forgets_people_past_its_bound() -> None:
    """Each person who posted once stayed in the flood window map forever."""
    seconds = settings_from(BASE_CONFIG).moderation.flood_seconds
    flood = FloodWindows()
    for n in range(CROWD):
        flood.observe(message(f"@p{n}:x", n), seconds)
    assert len(flood.recent) <= BOUND
    # the latest ones are kept: a flood in progress is still seen
    assert f"@p{CROWD - 1}:x" in flood.recent


def test_lru_dict_forgets_the_least_recently_used() -> None:
    from forum.bounded import LRUDict

    names: LRUDict[str, str] = LRUDict(maxsize=3)
    for key in "abc":
        names[key] = key.upper()
    assert names["a"] == "A"  # a is used: b is now the oldest
    names["d"] = "D"
    assert sorted(names) == ["a", "c", "d"]
    assert names.get("b") is None
    assert len(names) == 3


async def test_lock_table_never_forgets_a_lock_in_use() -> None:
    from forum.bounded import LockTable

    locks = LockTable(maxsize=2)
    held = locks("@held:x")
    await held.acquire()
    waiting = asyncio.create_task(locks("@held:x").acquire())
    await asyncio.sleep(0)
    for n in range(10):
        async with locks(f"@p{n}:x"):
            pass
    assert len(locks) <= 3  # the held lock plus the bound
    assert locks("@held:x") is held  # the same lock: never two holders for one person
    held.release()
    await waiting
    held.release()
    # idle again: it may now be forgotten like the others
    for n in range(10, 20):
        locks(f"@p{n}:x")
    assert len(locks) <= 2
