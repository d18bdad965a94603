"""What the membership bot does through the outbox (invites, kicks, notices): the items it
queues in the caller's transaction, and their executors (idempotent: an item replayed
after a crash does nothing twice)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from forum.errors import Forbidden
from forum.matrix import stable_txn_id
from forum.storage import Executor, Outbox

from . import messages
from .models import PersonRow

if TYPE_CHECKING:
    from .shared import Shared

INVITE = "membership.invite"
KICK = "membership.kick"
NOTIFY = "membership.notify"


async def add_invites(
    outbox: Outbox, user_id: str, rooms: list[str], tag: str, stamp: str | None = None
) -> None:
    """Invite ``user_id`` to ``rooms`` (``tag`` and ``stamp`` make the items' keys unique)."""
    for room in rooms:
        key = f"{INVITE}:{tag}:{room}" if stamp is None else f"{INVITE}:{tag}:{room}:{stamp}"
        await outbox.add(INVITE, {"user_id": user_id, "room_id": room}, key)


async def add_kicks(
    outbox: Outbox, user_id: str, rooms: list[str], reason: str, stamp: str
) -> None:
    """Remove ``user_id`` from ``rooms`` (where they are still joined, invited or knocking)."""
    for room in rooms:
        await outbox.add(
            KICK,
            {"user_id": user_id, "room_id": room, "reason": reason},
            f"{KICK}:{user_id}:{room}:{stamp}",
        )


def txn_of(key: str) -> str:
    """The transaction id of the message of the outbox item ``key``: sent again after a
    crash (delivery is at least once), the homeserver returns the same event."""
    return stable_txn_id("outbox", key)


async def add_notice(
    outbox: Outbox, room_id: str | None, body: str, key: str, *, after: str | None = None
) -> None:
    """A notice in ``room_id``; ``after``: a user id whose queued items (invites) it
    follows (the outbox runs one lane in order)."""
    key = f"{NOTIFY}:{key}"
    payload: dict[str, Any] = {"room_id": room_id, "body": body, "txn": txn_of(key)}
    if after is not None:
        payload["lane"] = after
    await outbox.add(NOTIFY, payload, key)


async def add_question(
    outbox: Outbox, room_id: str, body: str, key: str, *, of: str, reply_to: str | None = None
) -> None:
    """A message asking something of ``of`` (an ``m.text`` naming them, so that it
    notifies them), in reply to ``reply_to`` when given; sent once per ``key``."""
    key = f"{NOTIFY}:{key}"
    payload = {"room_id": room_id, "body": body, "ask": of, "reply_to": reply_to}
    await outbox.add(NOTIFY, payload | {"txn": txn_of(key)}, key)


async def queue_admission(shared: Shared, session: AsyncSession, row: PersonRow, lang: str) -> None:
    """Invites to every forum room, then a welcome in the DM (in ``session``'s transaction)."""
    outbox = Outbox(session)
    tag = f"{row.user_id}:v{row.charter_version}:{row.entries}"
    await add_invites(outbox, row.user_id, shared.forum_rooms, tag)
    text = shared.t(lang, messages.WELCOME, forum=shared.forum_name_in(lang), prefix=shared.prefix)
    await add_notice(outbox, row.dm_room_id, text, f"welcome:{tag}", after=row.user_id)


class Executors:
    """Carry out the bot's outbox items."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    def by_kind(self) -> dict[str, Executor]:
        return {INVITE: self.invite, KICK: self.kick, NOTIFY: self.notify}

    async def invite(self, payload: dict[str, Any]) -> None:
        room, user = payload["room_id"], payload["user_id"]
        gateway = self.shared.membership_gateway
        try:
            await gateway.invite(room, user)
        except Forbidden:
            state = await gateway.get_state_event(room, "m.room.member", user)
            if state and state.get("membership") in {"invite", "join"}:
                return  # done already (a replay after a crash)
            raise

    async def kick(self, payload: dict[str, Any]) -> None:
        room, user = payload["room_id"], payload["user_id"]
        gateway = self.shared.moderation_gateway
        state = await gateway.get_state_event(room, "m.room.member", user)
        if not state or state.get("membership") not in {"join", "invite", "knock"}:
            return
        await gateway.kick(room, user, payload.get("reason") or None)

    async def notify(self, payload: dict[str, Any]) -> None:
        """A notice, or a question when the item names whom it asks (``ask``)."""
        room, body, asked = payload["room_id"], payload["body"], payload.get("ask")
        txn = payload.get("txn")  # items queued before it was added have none
        txn_id = txn if isinstance(txn, str) else None
        if isinstance(asked, str):
            reply_to = payload.get("reply_to")
            reply = reply_to if isinstance(reply_to, str) else None
            await self.shared.ask(room, body, of=[asked], reply_to=reply, txn_id=txn_id)
            return
        await self.shared.say(room, body, txn_id=txn_id)
