"""Membership bot benchmark on the embedded homeserver (Synapse started here, in a
temporary directory, with the test rate limits).

Prints JSON, in one run:
- the bare round trip (a message from one client received by another's /sync), the
  baseline;
- knock to charter received (the person joins the DM the bot opens, as a client would),
  and the last consent answer to the Space invite received: median, p95, ratio to the
  baseline median;
- N people knocking at once (default 200): each must get exactly one DM and one charter,
  none lost; total seconds.

    .venv/bin/python benchmarks/membership.py [--samples 15] [--crowd 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from forum.app import Service  # noqa: E402
from forum.homeserver import EmbeddedHomeserver, free_port  # noqa: E402
from moderation.membership import feature  # noqa: E402
from tests.harness import (  # noqa: E402
    CHARTER_FR,
    CONFIG_DIR,
    PUBLICATION_Q,
    Forum,
    forum_data,
    register_bots,
    settings_from,
)
from tests.matrix_user import TestUser  # noqa: E402


def forum_of(hs: EmbeddedHomeserver, service: Service) -> Forum:
    """The test harness's view of a service the benchmark started itself."""
    assert service.ctx is not None
    return Forum(hs, service.settings, service.ctx.rooms, service=service)


def summary(samples: list[float], baseline: float | None = None) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    out = {
        "n": len(samples),
        "median_ms": round(statistics.median(samples) * 1000, 1),
        "p95_ms": round(p95 * 1000, 1),
    }
    if baseline:
        out["ratio_to_baseline_median"] = round(statistics.median(samples) / baseline, 1)
    return out


async def baseline(hs: EmbeddedHomeserver, samples: int) -> list[float]:
    a = await TestUser.create(hs, "alice")
    b = await TestUser.create(hs, "bob")
    try:
        room = await a.create_room(preset="public_chat")
        await b.join(room)
        out = []
        for i in range(samples):
            mark = b.mark()
            t0 = time.perf_counter()
            await a.send_text(room, f"ping {i}")
            await b.wait_for_text(room, f"ping {i}", after=mark)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        await a.close()
        await b.close()


async def one_person(hs: EmbeddedHomeserver, service: Service) -> tuple[float, float]:
    user = await TestUser.create(hs, "person")
    try:
        space = service.ctx.rooms["space"]
        t0 = time.perf_counter()
        await user.knock(space, "Bonjour, je voudrais participer", via=[hs.server_name])
        room = await forum_of(hs, service).wait_dm(user, timeout=60)
        await forum_of(hs, service).wait_bot_text(user, room, CHARTER_FR, timeout=60)
        knock_to_charter = time.perf_counter() - t0
        mark = user.mark()
        await user.send_text(room, "j'accepte")
        await forum_of(hs, service).wait_bot_text(
            user, room, *PUBLICATION_Q, after=mark, timeout=60
        )
        t1 = time.perf_counter()
        await user.send_text(room, "oui")
        await user.wait_for_invite(space, timeout=60)
        return knock_to_charter, time.perf_counter() - t1
    finally:
        await user.close()


async def crowd(hs: EmbeddedHomeserver, service: Service, n: int) -> dict[str, object]:
    limit = asyncio.Semaphore(8)  # registration and login are not what is measured

    async def create(i: int) -> TestUser:
        async with limit:
            # 200 knocks on one room queue up in the homeserver: give them time.
            return await TestUser.create(hs, f"crowd{i}", http_timeout=600)

    users = await asyncio.gather(*(create(i) for i in range(n)))
    space = service.ctx.rooms["space"]
    lost: list[str] = []

    async def go(user: TestUser) -> None:
        await user.knock(space, "Bonjour", via=[hs.server_name])
        room = await forum_of(hs, service).wait_dm(user, timeout=600)
        await forum_of(hs, service).wait_bot_text(user, room, CHARTER_FR, timeout=600)

    try:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(go(u) for u in users), return_exceptions=True)
        total = time.perf_counter() - t0
        for user, res in zip(users, results, strict=True):
            if isinstance(res, BaseException):
                lost.append(f"{user.user_id}: {res!r}"[:200])
        dms = [len(forum_of(hs, service).dm_invites(u)) for u in users]
        charters = [
            sum(
                1
                for e in u.events
                if e.get("type") == "m.room.message"
                and CHARTER_FR in str(e.get("content", {}).get("body", ""))
            )
            for u in users
        ]
        return {
            "people": n,
            "total_s": round(total, 2),
            "per_person_ms": round(total / n * 1000, 1),
            "lost": len(lost),
            "lost_examples": lost[:3],
            "exactly_one_dm": sum(1 for d in dms if d == 1),
            "exactly_one_charter": sum(1 for c in charters if c == 1),
        }
    finally:
        await asyncio.gather(*(u.close() for u in users))


async def main(samples: int, crowd_size: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        hs = EmbeddedHomeserver(
            Path(tmp) / "synapse", server_name="bench.test", port=free_port(), for_tests=True
        )
        await hs.start()
        service: Service | None = None
        try:
            settings = settings_from(forum_data(hs))
            await register_bots(hs, settings)
            service = Service(
                settings,
                config_dir=CONFIG_DIR,
                home=Path(tmp) / "home",
                features=[feature()],
                web_port=0,
            )
            (Path(tmp) / "home").mkdir()
            await service.start()
            base = await baseline(hs, samples)
            base_median = statistics.median(base)
            k2c, a2i = [], []
            for _ in range(samples):
                a, b = await one_person(hs, service)
                k2c.append(a)
                a2i.append(b)
            result: dict[str, object] = {
                "baseline_round_trip": summary(base),
                "knock_to_charter": summary(k2c, base_median),
                "consent_to_invite": summary(a2i, base_median),
            }
            if crowd_size:
                result["simultaneous_knocks"] = await crowd(hs, service, crowd_size)
            return result
        finally:
            if service is not None:
                await service.stop()
            await hs.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--crowd", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.samples, args.crowd)), indent=2))
