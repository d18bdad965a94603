"""What end-to-end encryption costs a bot, in process (no homeserver). Prints JSON.

    .venv/bin/python benchmarks/encryption.py [--messages 2000] [--events 100]

- ``megolm``: a member's client encrypts messages for the bot (nio's Olm machine, on
  vodozemac); the bot decrypts them: microseconds per message each way.
- ``sync_feed``: the price every ``/sync`` batch now pays: the gateway hands nio what it
  needs of the response (a copy; only the state of clear rooms, everything of encrypted
  ones), measured on batches of ``--events`` messages in one clear room (a topic room)
  and in one encrypted room, per batch and per event.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from nio import MegolmEvent  # noqa: E402
from nio.crypto import Olm  # noqa: E402
from nio.store import SqliteMemoryStore  # noqa: E402

from forum.gateway.crypto import Crypto  # noqa: E402
from forum.gateway.transport import GatewayStats, Transport  # noqa: E402

ROOM = "!dm:bench.test"


def megolm(messages: int) -> dict[str, Any]:
    member = Olm("@member:bench.test", "MEMBER", SqliteMemoryStore("@member:bench.test", "MEMBER"))
    bot = Olm("@bot:bench.test", "BOT", SqliteMemoryStore("@bot:bench.test", "BOT"))
    member.create_outbound_group_session(ROOM)
    outbound = member.outbound_group_sessions[ROOM]
    outbound.shared = True
    outbound.max_messages = messages + 1  # one session for the whole run (a rotation
    # shares a new key, which this in-process run does not do)
    keys = member.account.identity_keys
    bot.create_group_session(
        keys["curve25519"], keys["ed25519"], ROOM, outbound.id, outbound.session_key
    )
    content = {"msgtype": "m.text", "body": "Bonjour, j'accepte la charte " * 4}
    events = []
    started = time.perf_counter()
    for i in range(messages):
        payload = member.group_encrypt(ROOM, {"type": "m.room.message", "content": content})
        events.append(
            {
                "type": "m.room.encrypted",
                "event_id": f"$e{i}",
                "sender": "@member:bench.test",
                "origin_server_ts": 1764470000000 + i,
                "room_id": ROOM,
                "content": payload,
            }
        )
    encrypt_s = time.perf_counter() - started
    started = time.perf_counter()
    for raw in events:
        event = MegolmEvent.from_dict(raw)
        event.room_id = ROOM
        clear = bot.decrypt_megolm_event(event)
        assert clear.source["content"]["body"] == content["body"]
    decrypt_s = time.perf_counter() - started
    return {
        "messages": messages,
        "encrypt_us_per_message": round(encrypt_s / messages * 1e6, 1),
        "decrypt_us_per_message": round(decrypt_s / messages * 1e6, 1),
    }


def sync_batch(events: int, batch: int) -> dict[str, Any]:
    timeline = [
        {
            "type": "m.room.message",
            "event_id": f"$b{batch}-{i}",
            "sender": "@member:bench.test",
            "origin_server_ts": 1764470000000 + i,
            "content": {"msgtype": "m.text", "body": f"message {i} " * 8},
        }
        for i in range(events)
    ]
    return {
        "next_batch": f"s{batch}",
        "rooms": {
            "join": {
                ROOM: {
                    "timeline": {"events": timeline, "limited": False},
                    "state": {"events": []},
                }
            }
        },
        "device_one_time_keys_count": {"signed_curve25519": 50},
    }


async def sync_feed(events: int, rounds: int, *, encrypted_room: bool) -> dict[str, Any]:
    """The gateway's own path (:meth:`forum.gateway.crypto.Crypto.receive`) on batches of
    clear messages, in a clear room (a topic room) or in a room marked encrypted."""
    with tempfile.TemporaryDirectory() as store:
        transport = Transport(
            "http://127.0.0.1:1",
            "@bot:bench.test",
            stats=GatewayStats(),
            request_timeout=5,
            max_retries=0,
            store_path=Path(store),
        )
        transport.client.restore_login("@bot:bench.test", "BOT", "token")
        if encrypted_room:
            transport.client.encrypted_rooms.add(ROOM)
        crypto = Crypto(transport)
        times = []
        for n in range(rounds):
            data = sync_batch(events, n)
            started = time.perf_counter()
            await crypto.receive(data)
            times.append(time.perf_counter() - started)
        await transport.close()
    median = statistics.median(times)
    return {
        "room": "encrypted" if encrypted_room else "clear (a topic room)",
        "events_per_batch": events,
        "batches": rounds,
        "median_ms_per_batch": round(median * 1000, 2),
        "p95_ms_per_batch": round(sorted(times)[int(len(times) * 0.95) - 1] * 1000, 2),
        "us_per_event": round(median / events * 1e6, 1),
    }


async def main(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "megolm": await asyncio.to_thread(megolm, a.messages),
        "sync_feed": [
            await sync_feed(a.events, 50, encrypted_room=False),
            await sync_feed(a.events, 50, encrypted_room=True),
        ],
    }


if __name__ == "__main__":
    import logging

    logging.disable(logging.INFO)  # nio logs every room event at INFO
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--events", type=int, default=100)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
