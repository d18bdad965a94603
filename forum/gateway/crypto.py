"""End-to-end encryption of one account: matrix-nio's Olm machine, its store kept on disk.

The gateway's own sync loop hands every ``/sync`` response to nio (:meth:`Crypto.receive`)
so that nio sees the to-device messages (room keys), the device list changes, the
one-time key counts and the rooms' state; nio decrypts the timeline's
``m.room.encrypted`` events and the loop dispatches the decrypted events to the same
handlers as clear ones. After each batch, :meth:`Crypto.maintain` uploads the device keys
and tops up the one-time keys, queries the keys of new or changed devices, claims
one-time keys and sends nio's queued to-device messages.

Trust policy (as Draupnir and maubot's bots do): the bot trusts every device of the
rooms' members without verification (trust on first use). Its messages in an encrypted
room are encrypted for all of them; it reads what any of them sends it.

The olm account, sessions and megolm keys are kept in a SQLite store under
``FORUM_HOME/crypto/<account>/`` (directory 0700, files 0600), named after the device id:
the same device (and the same keys) is used again after a restart, and a new password
login asks for that device id again (:meth:`Crypto.known_device_id`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nio import (
    LocalProtocolError,
    MegolmEvent,
    SyncResponse,
)
from nio.crypto import ENCRYPTION_ENABLED, OutgoingKeyRequest
from nio.event_builders import RoomKeyRequestMessage
from nio.exceptions import EncryptionError, GroupEncryptionError, MembersSyncError
from nio.rooms import MatrixRoom

from forum.credentials import PRIVATE_FILE, private_dir
from forum.errors import Forbidden, MatrixError, NotFound
from forum.gateway.transport import Transport, path

log = logging.getLogger(__name__)


class DeviceRemoved(MatrixError):
    """The device was removed from the homeserver, its keys with it (see
    :meth:`Crypto.start`)."""


ENCRYPTED = "m.room.encrypted"
#: a sync that reads no room: what waits for the device itself (:meth:`Crypto.drain_to_device`)
DRAIN_FILTER = json.dumps(
    {
        "room": {"rooms": []},
        "presence": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
    },
    separators=(",", ":"),
)
#: the to-device messages Synapse gives in one sync at most
DRAIN_BATCH = 100


def store_dir_of(root: Path, user_id: str) -> Path:
    """Where an account's crypto store lives under ``root`` (one directory per account)."""
    return root / re.sub(r"[^A-Za-z0-9._=-]", "_", user_id.lstrip("@"))


@dataclass(eq=False)
class Crypto:
    """The Olm machine of one account (nio's), fed by the gateway's sync loop."""

    transport: Transport
    _decrypted: dict[str, dict[str, Any]] = field(init=False, default_factory=dict)
    _members_loaded: set[str] = field(init=False, default_factory=set)
    _clear_rooms: set[str] = field(init=False, default_factory=set)
    _requested: set[str] = field(init=False, default_factory=set)
    _lock: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)
    fresh: bool = field(init=False, default=False)
    """The device's olm account was made by this start (its keys never published)."""
    _drained_to: str | None = field(init=False, default=None)
    """Where :meth:`drain_to_device` got to (a sync position of this device's own)."""

    @property
    def store_dir(self) -> Path:
        assert self.transport.store_path is not None
        return self.transport.store_path

    @property
    def client(self) -> Any:
        return self.transport.client

    @property
    def device_id(self) -> str | None:
        device: str | None = self.client.device_id
        return device

    def _store_file(self, device_id: str) -> Path:
        """nio's store of one device's keys: ``<user id>_<device id>.db``."""
        return self.store_dir / f"{self.transport.user_id}_{device_id}.db"

    def known_device_id(self) -> str | None:
        """The device whose keys the store holds (one store file per device), if one."""
        if not self.store_dir.is_dir():
            return None
        prefix, suffix = self._store_file("").name.rsplit("_.", 1)
        prefix, suffix = prefix + "_", "." + suffix
        devices = [
            p.name[len(prefix) : -len(suffix)]
            for p in self.store_dir.iterdir()
            if p.name.startswith(prefix) and p.name.endswith(suffix)
        ]
        return devices[0] if len(devices) == 1 else None

    def keeps(self, device_id: str) -> bool:
        """Whether this process keeps the keys of ``device_id`` (its store is here)."""
        return self._store_file(device_id).is_file()

    async def prepare(self) -> str | None:
        """Make the store's directory (0700); return the device its keys belong to."""
        await asyncio.to_thread(private_dir, self.store_dir)
        return await asyncio.to_thread(self.known_device_id)

    async def open(self, device_id: str) -> None:
        """Open (or create) the device's store (:meth:`start` then publishes its keys)."""
        if not ENCRYPTION_ENABLED:
            raise RuntimeError("matrix-nio was installed without its e2e extra (vodozemac)")
        client = self.client
        await self.prepare()
        if client.store is None or client.device_id != device_id:
            client.store = None
            client.restore_login(self.transport.user_id, device_id, client.access_token)
        await asyncio.to_thread(self._tighten)
        self.fresh = not client.olm.account.shared

    async def start(self, device_id: str) -> None:
        """Open (or create) the device's store and publish its keys; raise
        :class:`DeviceRemoved` if the homeserver lost them (see :meth:`_keys_gone`)."""
        await self.open(device_id)
        client = self.client
        if not self.fresh and await self._keys_gone(device_id):
            raise DeviceRemoved(
                f"{self.transport.user_id}: the homeserver has no keys for device "
                f"{device_id}: the device was removed (signed out), then made again "
                "without them by the log-in"
            )
        await self.maintain()
        log.info(
            "%s: end-to-end encryption on, device %s (keys %s, store %s)",
            self.transport.user_id,
            device_id,
            client.olm.account.identity_keys["ed25519"],
            self.store_dir,
        )

    async def _keys_gone(self, device_id: str) -> bool:
        """Whether the homeserver lost the keys of this device, published before. A
        device removed (signed out by the operator or from a client) loses its keys with
        it; the password log-in that follows makes the device again under the same id,
        with no keys. Publishing the same keys again is not enough: members' clients
        remember the device as removed (nio's does) and never share room keys with it
        again, so the bot needs a new device."""
        user_id = self.transport.user_id
        found = await self.transport.request(
            "POST", "/keys/query", body={"device_keys": {user_id: [device_id]}}
        )
        devices = (found.get("device_keys") or {}).get(user_id) or {}
        return not (isinstance(devices, dict) and device_id in devices)

    def forget_device(self) -> None:
        """Drop the device (its store stays on disk): the next :meth:`start` opens the
        store of the device it is given."""
        client = self.client
        client.store = client.olm = client.device_id = None
        self._members_loaded.clear()
        self._requested.clear()

    def _tighten(self) -> None:
        for p in self.store_dir.iterdir():
            if p.is_file() and p.stat().st_mode & 0o077:
                os.chmod(p, PRIVATE_FILE)

    # --- the sync's side ---------------------------------------------------------------
    async def receive(self, data: dict[str, Any]) -> None:
        """Let nio handle one ``/sync`` response: to-device messages (room keys), device
        lists, one-time key counts, rooms' state; remember what it decrypted."""
        resp = SyncResponse.from_dict(self._for_nio(data))
        if not isinstance(resp, SyncResponse):
            log.warning("%s: nio could not read a /sync response: %s", self.user_id, resp)
            return
        await self.client.receive_response(resp)
        self._decrypted.clear()
        for room_id, info in resp.rooms.join.items():
            for ev in info.timeline.events:
                if getattr(ev, "decrypted", False) and not isinstance(ev, MegolmEvent):
                    self._decrypted[ev.event_id] = self._clear_event(room_id, ev.source)

    @property
    def user_id(self) -> str:
        return self.transport.user_id

    def _for_nio(self, data: dict[str, Any]) -> dict[str, Any]:
        """A copy (nio edits what it reads) of what nio needs of a ``/sync`` response:
        everything but the clear messages of rooms that are not encrypted (their state
        events stay: one may turn a room encrypted). Reading a topic room's messages is
        the bulk of a batch and nio has nothing to do with them."""
        found = data.get("rooms")
        rooms: dict[str, Any] = found if isinstance(found, dict) else {}
        encrypted = self.client.encrypted_rooms
        join: dict[str, Any] = {}
        for room_id, room in (rooms.get("join") or {}).items():
            timeline = room.get("timeline") if isinstance(room.get("timeline"), dict) else {}
            if room_id not in encrypted and timeline.get("events"):
                kept = [
                    e
                    for e in timeline["events"]
                    if isinstance(e, dict) and ("state_key" in e or e.get("type") == ENCRYPTED)
                ]
                room = {**room, "timeline": {**timeline, "events": kept}}
            join[room_id] = room
        out = {**data, "rooms": {**rooms, "join": join}} if rooms else dict(data)
        return copy.deepcopy(out)

    def decrypt(self, room_id: str, raw: dict[str, Any]) -> dict[str, Any] | None:
        """The clear form of an ``m.room.encrypted`` event (same id, sender, time), or
        None when this device has not got its key."""
        event_id = raw.get("event_id")
        if isinstance(event_id, str) and event_id in self._decrypted:
            return self._decrypted[event_id]
        event = MegolmEvent.from_dict(raw)
        if not isinstance(event, MegolmEvent):
            return None
        event.room_id = room_id
        try:
            clear = self.client.decrypt_event(event)
        except EncryptionError:
            return None
        source = getattr(clear, "source", None)
        if not isinstance(source, dict):
            return None
        return self._clear_event(room_id, source)

    @staticmethod
    def _clear_event(room_id: str, source: dict[str, Any]) -> dict[str, Any]:
        clear = dict(source)
        clear.setdefault("room_id", room_id)
        clear["forum.encrypted"] = True
        return clear

    async def request_key(self, room_id: str, raw: dict[str, Any]) -> bool:
        """Ask the sender's device, once per megolm session, for the key of an event we
        cannot read (``m.room_key_request``; nio may have queued the same request, then
        that one goes). Returns True if this call sent a request."""
        event = MegolmEvent.from_dict(raw)
        if not isinstance(event, MegolmEvent) or event.session_id in self._requested:
            return False
        queued = [
            m
            for m in self.client.outgoing_to_device_messages
            if isinstance(m, RoomKeyRequestMessage) and m.session_id == event.session_id
        ]
        if queued:  # nio asks already (a recent olm session): sent by maintain()
            return False
        event.room_id = room_id
        message = event.as_key_request(
            event.sender, self.client.device_id, event.session_id, event.device_id
        )
        await self.transport.request(
            "PUT",
            path("sendToDevice", message.type, self.transport.txn_id()),
            body=message.as_dict(),
        )
        self._requested.add(event.session_id)
        self.client.olm.outgoing_key_requests[message.request_id] = OutgoingKeyRequest.from_message(
            message
        )
        return True

    def _dedupe_key_requests(self) -> None:
        """nio queues a key request at each failed decryption of a recent session's
        event: one request per session goes, the others are dropped."""
        kept = []
        for m in self.client.outgoing_to_device_messages:
            if isinstance(m, RoomKeyRequestMessage):
                if m.session_id in self._requested:
                    continue
                self._requested.add(m.session_id)
            kept.append(m)
        self.client.outgoing_to_device_messages[:] = kept

    async def maintain(self) -> None:
        """Keys kept up: device keys and one-time keys uploaded (topped up when the
        server's count falls), devices of members queried, one-time keys claimed for
        new devices, nio's queued to-device messages sent."""
        try:
            await self._maintain()
        except LocalProtocolError as exc:
            raise MatrixError(f"keeping the keys of {self.user_id} up: {exc}") from exc

    async def _maintain(self) -> None:
        client = self.client
        async with self._lock:
            self._dedupe_key_requests()
            nio = self.transport.nio
            if client.outgoing_to_device_messages:
                await nio("sendToDevice", client.send_to_device_messages)
            if client.should_upload_keys:
                await nio("keys/upload", client.keys_upload)
            if client.should_query_keys:
                await nio("keys/query", client.keys_query)
            if client.should_claim_keys:
                users = client.get_users_for_key_claiming()
                await nio("keys/claim", lambda: client.keys_claim(users))

    async def drain_to_device(self) -> int:
        """Receive what waits for this device alone (room keys, new Olm sessions, the
        one-time key count) through a sync of its own that reads no room, until nothing
        is left (at most 100 messages come a sync); returns how many came.

        A standby's device is published while the other process acts: members' clients
        share their room keys with it too. Its first sync when it takes over starts from
        the forum's stored token, the other device's position, and Synapse deletes the
        to-device messages up to that position unread: drained before, none is lost."""
        total = 0
        while True:
            query: dict[str, str | int] = {
                "filter": DRAIN_FILTER,
                "timeout": 0,
                "set_presence": "offline",
            }
            if self._drained_to:
                query["since"] = self._drained_to
            data = await self.transport.request("GET", "/sync", query=query)
            await self.receive(data)
            await self.maintain()
            token = data.get("next_batch")
            if isinstance(token, str):
                self._drained_to = token
            found = (data.get("to_device") or {}).get("events")
            count = len(found) if isinstance(found, list) else 0
            total += count
            if count < DRAIN_BATCH or not isinstance(token, str):
                return total

    # --- the sending side --------------------------------------------------------------
    def created(self, room_id: str, *, encrypted: bool) -> None:
        """This account created ``room_id``: whether it is encrypted is known (no need
        to ask the homeserver before the first message)."""
        if encrypted:
            self.client.encrypted_rooms.add(room_id)
        else:
            self._clear_rooms.add(room_id)

    async def is_encrypted(self, room_id: str) -> bool:
        client = self.client
        if room_id in client.encrypted_rooms:
            return True
        room = client.rooms.get(room_id)
        if room is not None and room.encrypted:
            return True
        if room_id in self._clear_rooms:
            return False
        try:
            await self.transport.request(
                "GET", path("rooms", room_id, "state", "m.room.encryption", "")
            )
        except NotFound:
            # a room that turns encrypted later shows its m.room.encryption in the sync:
            # nio then lists it in encrypted_rooms, looked at first
            self._clear_rooms.add(room_id)
            return False
        except Forbidden:  # not in the room: the send itself will say why
            return False
        client.encrypted_rooms.add(room_id)
        if client.store is not None:
            client.store.save_encrypted_rooms([room_id])
        return True

    async def send(self, room_id: str, event_type: str, content: dict[str, Any], txn: str) -> str:
        """Send one event (reactions too, as Element X does) into an encrypted room,
        encrypted for every device of its members (unverified ones included: the bot's
        trust policy). Its relation (reply, reaction, edit) stays in clear, as the spec
        asks, so that the server can aggregate it."""
        client = self.client
        async with self._lock:
            await self._ensure_room(room_id)
            if client.should_query_keys:
                await self.transport.nio("keys/query", client.keys_query)
            if client.olm.should_share_group_session(room_id):
                await self.transport.nio(
                    f"sharing the room key of {room_id}",
                    lambda: client.share_group_session(room_id, ignore_unverified_devices=True),
                )
            relation = content.get("m.relates_to")
            payload = {k: v for k, v in content.items() if k != "m.relates_to"}
            try:
                _, encrypted = client.encrypt(room_id, event_type, payload)
            except (
                LocalProtocolError,
                EncryptionError,
                GroupEncryptionError,
                MembersSyncError,
            ) as exc:
                raise MatrixError(f"encrypting into {room_id}: {exc}") from exc
        if relation is not None:
            encrypted["m.relates_to"] = relation
        data = await self.transport.request(
            "PUT", path("rooms", room_id, "send", ENCRYPTED, txn), body=encrypted
        )
        return str(data["event_id"])

    async def _ensure_room(self, room_id: str) -> None:
        """nio knows the room (it may not yet: joined since the last sync, or a restart)
        and its whole membership, which nio's sync keeps current from then on."""
        client = self.client
        room = client.rooms.get(room_id)
        if room is None:
            room = client.rooms[room_id] = MatrixRoom(room_id, self.user_id, encrypted=True)
        room.encrypted = True
        if room_id in self._members_loaded:
            return
        data = await self.transport.request("GET", path("rooms", room_id, "members"))
        for ev in data.get("chunk") or []:
            if not isinstance(ev, dict):
                continue
            user = ev.get("state_key")
            membership = (ev.get("content") or {}).get("membership")
            if not isinstance(user, str):
                continue
            if membership in {"join", "invite"}:
                room.add_member(user, None, None, invited=membership == "invite")
            elif user in room.users:
                room.remove_member(user)
        room.members_synced = True
        self._members_loaded.add(room_id)
        missing = set(room.users) - client.olm.tracked_users
        if missing:
            client.olm.users_for_key_query.update(missing)
            await self.transport.nio("keys/query", client.keys_query)
