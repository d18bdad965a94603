"""A test user that acts as a real person on a real homeserver.

``await TestUser.create(hs, "alice")`` registers a unique account (``alice-<random>``),
logs in with nio and starts its own ``/sync`` loop in a task. Every event the user
receives is kept in a buffer (raw dicts, with ``room_id`` and ``_section`` added), so
:meth:`TestUser.wait_for` finds events that arrived before it was called.

Requests other than login go through plain aiohttp with the user's access token, so a
test sees exactly what the server answers (``via`` / ``server_name`` parameters work,
errors raise :class:`MatrixRequestError` with the status and errcode). The nio client is
still available as ``user.client`` for tests that want nio's helpers (``room_create``,
``room_put_state``...). It uses nio's default ``AsyncClientConfig``: on a 429 it waits
and retries, as a patient real client would; the test homeserver has loose rate limits,
so this never slows tests down.

``encrypted=True`` makes an encrypting client, as Element X is: nio with its Olm machine
and a store of its own (a temporary directory), device keys uploaded, every device of the
rooms' members trusted. Its sync hands each response to nio, so the events it keeps are
the decrypted ones (marked ``"_encrypted": True``; an event it could not read stays
``m.room.encrypted``), and what it sends into an encrypted room is encrypted.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from nio import AsyncClient, AsyncClientConfig, LoginResponse, MegolmEvent, SyncResponse
from nio.exceptions import LocalProtocolError

from forum.homeserver import EmbeddedHomeserver

log = logging.getLogger(__name__)

Event = dict[str, Any]
Predicate = Callable[[Event], bool]

SYNC_FILTER = {
    "room": {
        "include_leave": True,
        "timeline": {"limit": 100},
        "state": {"lazy_load_members": False},
    },
    "presence": {"not_types": ["*"]},
}
SYNC_TIMEOUT_MS = 10_000


class MatrixRequestError(Exception):
    def __init__(self, method: str, path: str, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.errcode = body.get("errcode")
        super().__init__(f"{method} {path} -> {status}: {body}")


def _q(value: str) -> str:
    return quote(value, safe="")


class TestUser:
    """A person in a test (not a pytest test class)."""

    __test__ = False  # keep pytest from collecting it

    def __init__(
        self,
        hs: EmbeddedHomeserver,
        user_id: str,
        password: str,
        client: AsyncClient,
        http_timeout: float = 60,
        store_dir: str | None = None,
    ) -> None:
        self.hs = hs
        self.store_dir = store_dir
        """The encryption store's directory (an encrypting client), else None."""
        self.user_id = user_id
        self.password = password
        self.client = client
        self.access_token: str = client.access_token
        self.events: list[Event] = []
        self.next_batch: str | None = None
        self._http = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.access_token}"},
            timeout=aiohttp.ClientTimeout(total=http_timeout),
        )
        self._changed = asyncio.Condition()
        self._sync_error: BaseException | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self.sync_failures_allowed = 5
        """Failed ``/sync`` calls in a row before the loop gives up (the fault suite
        raises it: its homeserver restarts while people wait)."""

    # --- creation / teardown ---------------------------------------------------------
    @classmethod
    async def create(
        cls,
        hs: EmbeddedHomeserver,
        name: str,
        *,
        password: str | None = None,
        display_name: str | None = None,
        admin: bool = False,
        unique: bool = True,
        http_timeout: float = 60,
        sync: bool = True,
        encrypted: bool = False,
    ) -> TestUser:
        """Register ``name-<random>`` (or ``name`` if not ``unique``), log in, start syncing
        (unless ``sync`` is false: a client that only sends, as a benchmark's many senders,
        and does not make the homeserver answer a long poll for every event)."""
        localpart = f"{name}-{secrets.token_hex(4)}" if unique else name
        password = password or secrets.token_urlsafe(16)
        user_id = await hs.register(
            localpart, password, admin=admin, display_name=display_name or name.capitalize()
        )
        return await cls.login(
            hs, user_id, password, http_timeout=http_timeout, sync=sync, encrypted=encrypted
        )

    @classmethod
    async def login(
        cls,
        hs: EmbeddedHomeserver,
        user_id: str,
        password: str,
        *,
        http_timeout: float = 60,
        sync: bool = True,
        encrypted: bool = False,
    ) -> TestUser:
        """Log in an existing account and start its sync loop (if ``sync``); an
        encrypting client (a new device with its own keys) if ``encrypted``."""
        store_dir = tempfile.mkdtemp(prefix="forum-e2e-") if encrypted else None
        client = AsyncClient(
            hs.url,
            user_id,
            store_path=store_dir or "",
            config=AsyncClientConfig(store_sync_tokens=False, encryption_enabled=encrypted),
        )
        resp = await client.login(password, device_name="forum-tests")
        if not isinstance(resp, LoginResponse):
            await client.close()
            raise MatrixRequestError("POST", "/login", 0, {"error": str(resp)})
        if encrypted:
            await client.keys_upload()
        user = cls(hs, user_id, password, client, http_timeout, store_dir)
        if sync:
            user._sync_task = asyncio.create_task(user._sync_loop(), name=f"sync {user_id}")
        return user

    async def close(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
            self._sync_task = None
        await self._http.close()
        await self.client.close()
        if self.store_dir is not None:
            await asyncio.to_thread(shutil.rmtree, self.store_dir, True)

    async def __aenter__(self) -> TestUser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- raw requests ----------------------------------------------------------------
    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, str] | list[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        """A client-server request; ``path`` starts with ``/_matrix/...``."""
        async with self._http.request(method, self.hs.url + path, json=body, params=params) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise MatrixRequestError(method, path, resp.status, data or {})
            return data if isinstance(data, dict) else {"result": data}

    async def download(self, server: str, media_id: str) -> bytes:
        """The bytes of a media (authenticated media API)."""
        path = f"/_matrix/client/v1/media/download/{_q(server)}/{_q(media_id)}"
        async with self._http.get(self.hs.url + path) as resp:
            if resp.status >= 400:
                raise MatrixRequestError("GET", path, resp.status, {})
            return await resp.read()

    # --- actions ---------------------------------------------------------------------
    async def send(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        if self.store_dir is not None and await self._is_encrypted(room_id):
            return await self._send_encrypted(room_id, event_type, content)
        path = f"/_matrix/client/v3/rooms/{_q(room_id)}/send/{_q(event_type)}/{uuid.uuid4().hex}"
        return str((await self.request("PUT", path, content))["event_id"])

    async def _is_encrypted(self, room_id: str) -> bool:
        try:
            await self.get_state_event(room_id, "m.room.encryption")
        except MatrixRequestError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def _send_encrypted(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        """Encrypt for every device of the room's members (none verified: all trusted),
        reactions too, the relation left in clear: as Element X sends."""
        client = self.client
        async with asyncio.timeout(15):  # nio learns the room from our own sync
            while room_id not in client.rooms or not client.rooms[room_id].encrypted:
                await self.wait_for(lambda e: True, after=len(self.events))
        room = client.rooms[room_id]
        if not room.members_synced:
            await client.joined_members(room_id)
        client.olm.update_tracked_users(room)
        if client.should_query_keys:
            await client.keys_query()
        if client.olm.should_share_group_session(room_id):
            await client.share_group_session(room_id, ignore_unverified_devices=True)
        relation = content.get("m.relates_to")
        payload = {k: v for k, v in content.items() if k != "m.relates_to"}
        _, encrypted = client.encrypt(room_id, event_type, payload)
        if relation is not None:
            encrypted["m.relates_to"] = relation
        path = f"/_matrix/client/v3/rooms/{_q(room_id)}/send/m.room.encrypted/{uuid.uuid4().hex}"
        return str((await self.request("PUT", path, encrypted))["event_id"])

    async def send_withholding(self, room_id: str, body: str, user_id: str) -> str:
        """An encrypted text whose key is not shared with ``user_id``'s devices (as a
        client that withheld it): they receive an event they cannot decrypt."""
        olm = self.client.olm
        devices = list(olm.device_store.active_user_devices(user_id))
        assert devices, f"{self.user_id} knows no device of {user_id}"
        olm.outbound_group_sessions.pop(room_id, None)
        for device in devices:
            olm.blacklist_device(device)
        try:
            return await self.send_text(room_id, body)
        finally:
            for device in devices:
                olm.unblacklist_device(device)
            olm.outbound_group_sessions.pop(room_id, None)

    async def send_text(self, room_id: str, body: str, html: str | None = None) -> str:
        content: dict[str, Any] = {"msgtype": "m.text", "body": body}
        if html is not None:
            content |= {"format": "org.matrix.custom.html", "formatted_body": html}
        return await self.send(room_id, "m.room.message", content)

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        return await self.send(room_id, "m.reaction", content)

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        """Redact ``event_id`` (a client's "delete", or "remove reaction" on a reaction)."""
        path = f"/_matrix/client/v3/rooms/{_q(room_id)}/redact/{_q(event_id)}/{uuid.uuid4().hex}"
        body = {"reason": reason} if reason else {}
        return str((await self.request("PUT", path, body))["event_id"])

    async def create_room(self, **body: Any) -> str:
        """``POST /createRoom`` with ``body`` as given (e.g. ``preset="public_chat"``)."""
        return str((await self.request("POST", "/_matrix/client/v3/createRoom", body))["room_id"])

    async def join(self, room_or_alias: str, via: list[str] | None = None) -> str:
        params = [("server_name", s) for s in via or []]
        path = f"/_matrix/client/v3/join/{_q(room_or_alias)}"
        return str((await self.request("POST", path, {}, params=params))["room_id"])

    async def knock(
        self, room_or_alias: str, reason: str | None = None, via: list[str] | None = None
    ) -> str:
        params = [("server_name", s) for s in via or []]
        body = {"reason": reason} if reason else {}
        path = f"/_matrix/client/v3/knock/{_q(room_or_alias)}"
        return str((await self.request("POST", path, body, params=params))["room_id"])

    async def leave(self, room_id: str, reason: str | None = None) -> None:
        body = {"reason": reason} if reason else {}
        await self.request("POST", f"/_matrix/client/v3/rooms/{_q(room_id)}/leave", body)

    async def invite(self, room_id: str, user_id: str) -> None:
        path = f"/_matrix/client/v3/rooms/{_q(room_id)}/invite"
        await self.request("POST", path, {"user_id": user_id})

    async def put_state(
        self, room_id: str, event_type: str, content: dict[str, Any], state_key: str = ""
    ) -> str:
        path = f"/_matrix/client/v3/rooms/{_q(room_id)}/state/{_q(event_type)}/{_q(state_key)}"
        return str((await self.request("PUT", path, content))["event_id"])

    async def get_state_event(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any]:
        """The content of a state event (raises MatrixRequestError 404 if absent)."""
        path = f"/_matrix/client/v3/rooms/{_q(room_id)}/state/{_q(event_type)}/{_q(state_key)}"
        return await self.request("GET", path)

    async def hierarchy(self, space_id: str) -> list[dict[str, Any]]:
        """Every room of a space's hierarchy (follows pagination)."""
        rooms: list[dict[str, Any]] = []
        params: dict[str, str] = {}
        path = f"/_matrix/client/v1/rooms/{_q(space_id)}/hierarchy"
        while True:
            page = await self.request("GET", path, params=params)
            rooms += page.get("rooms", [])
            if not page.get("next_batch"):
                return rooms
            params = {"from": page["next_batch"]}

    async def resolve_alias(self, alias: str) -> str:
        path = f"/_matrix/client/v3/directory/room/{_q(alias)}"
        return str((await self.request("GET", path))["room_id"])

    # --- what the user sees ------------------------------------------------------------
    def mark(self) -> int:
        """The buffer position now; pass it as ``after`` to wait only for newer events."""
        return len(self.events)

    async def wait_for(self, predicate: Predicate, timeout: float = 15, *, after: int = 0) -> Event:
        """The first received event (from buffer position ``after``) matching ``predicate``.

        A predicate that raises KeyError, TypeError, AttributeError or IndexError on an
        event counts as "no match", so ``lambda e: e["state_key"] == x`` is fine.
        Events are raw dicts with ``room_id`` (None for global events) and
        ``_section`` (``join.timeline``,
        ``join.state``, ``invite``, ``knock``, ``leave.timeline``, ``join.ephemeral``,
        ``join.account_data``, ``account_data``, ``to_device``...) added. Raises
        ``TimeoutError`` naming what was seen if nothing matches in ``timeout`` seconds.
        """
        if self._sync_task is None:
            raise RuntimeError(f"{self.user_id} does not sync: it cannot wait for events")
        checked = after

        def find() -> Event | None:
            nonlocal checked
            while checked < len(self.events):
                event = self.events[checked]
                checked += 1
                try:
                    matched = predicate(event)
                except (KeyError, TypeError, AttributeError, IndexError):
                    matched = False  # a predicate written for another kind of event
                if matched:
                    return event
            return None

        try:
            async with asyncio.timeout(timeout), self._changed:
                while True:
                    if self._sync_error is not None:
                        raise RuntimeError(f"sync of {self.user_id} failed") from self._sync_error
                    found = find()
                    if found is not None:
                        return found
                    await self._changed.wait()
        except TimeoutError:
            # the room events, each cut short (a push-rules document would fill it all)
            room_events = [e for e in self.events if e.get("room_id") is not None]
            keys = ("_section", "room_id", "type", "sender", "state_key", "content")
            recent = [
                json.dumps({k: e.get(k) for k in keys}, ensure_ascii=False)[:400]
                for e in room_events[-12:]
            ]
            raise TimeoutError(
                f"{self.user_id}: no matching event within {timeout} s; last room events seen:\n"
                + "\n".join(recent)
            ) from None

    async def wait_for_invite(self, room_id: str | None = None, timeout: float = 15) -> str:
        """Wait for an invite (to ``room_id`` if given); return the room id."""

        def is_invite(e: Event) -> bool:
            return (
                e["_section"] == "invite"
                and e.get("type") == "m.room.member"
                and e.get("state_key") == self.user_id
                and e.get("content", {}).get("membership") == "invite"
                and (room_id is None or e["room_id"] == room_id)
            )

        return str((await self.wait_for(is_invite, timeout))["room_id"])

    async def wait_for_text(
        self, room_id: str, body: str, timeout: float = 15, *, after: int = 0
    ) -> Event:
        """Wait for an ``m.room.message`` in ``room_id`` whose body contains ``body``."""
        return await self.wait_for(
            lambda e: (
                e.get("room_id") == room_id
                and e.get("type") == "m.room.message"
                and body in str(e.get("content", {}).get("body", ""))
            ),
            timeout,
            after=after,
        )

    # --- the sync loop -------------------------------------------------------------------
    async def _sync_loop(self) -> None:
        failures = 0
        filter_json = json.dumps(SYNC_FILTER)
        while True:
            params = {"filter": filter_json, "timeout": str(SYNC_TIMEOUT_MS)}
            if self.next_batch is not None:
                params["since"] = self.next_batch
            try:
                data = await self.request("GET", "/_matrix/client/v3/sync", params=params)
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, TimeoutError, MatrixRequestError) as exc:
                failures += 1
                log.warning("sync of %s failed (%d): %s", self.user_id, failures, exc)
                if failures >= self.sync_failures_allowed:
                    async with self._changed:
                        self._sync_error = exc
                        self._changed.notify_all()
                    return
                await asyncio.sleep(min(0.2 * failures, 2.0))
                continue
            failures = 0
            decrypted = await self._decrypt(data) if self.store_dir is not None else {}
            new = list(self._events_of(data, decrypted))
            async with self._changed:
                self.events.extend(new)
                self.next_batch = data["next_batch"]
                self._changed.notify_all()

    async def _decrypt(self, data: dict[str, Any]) -> dict[str, Event]:
        """nio handles the response (room keys, devices, one-time keys); returns the
        clear form of the encrypted timeline events it could read, by event id."""
        client = self.client
        resp = SyncResponse.from_dict(copy.deepcopy(data))  # nio edits what it reads
        if not isinstance(resp, SyncResponse):
            return {}
        await client.receive_response(resp)
        clear: dict[str, Event] = {}
        for info in resp.rooms.join.values():
            for ev in info.timeline.events:
                if getattr(ev, "decrypted", False) and not isinstance(ev, MegolmEvent):
                    clear[ev.event_id] = {**ev.source, "_encrypted": True}
        with contextlib.suppress(LocalProtocolError):
            if client.outgoing_to_device_messages:
                await client.send_to_device_messages()
            if client.should_upload_keys:
                await client.keys_upload()
            if client.should_query_keys:
                await client.keys_query()
            if client.should_claim_keys:
                await client.keys_claim(client.get_users_for_key_claiming())
        return clear

    @staticmethod
    def _events_of(data: dict[str, Any], decrypted: dict[str, Event] | None = None) -> list[Event]:
        out: list[Event] = []
        clear = decrypted or {}

        def add(events: list[dict[str, Any]], section: str, room_id: str | None) -> None:
            for e in events:
                event = dict(clear.get(e.get("event_id", ""), e))
                event.setdefault("room_id", room_id)
                event["_section"] = section
                out.append(event)

        rooms = data.get("rooms", {})
        for room_id, room in rooms.get("join", {}).items():
            add(room.get("state", {}).get("events", []), "join.state", room_id)
            add(room.get("timeline", {}).get("events", []), "join.timeline", room_id)
            add(room.get("ephemeral", {}).get("events", []), "join.ephemeral", room_id)
            add(room.get("account_data", {}).get("events", []), "join.account_data", room_id)
        for room_id, room in rooms.get("invite", {}).items():
            add(room.get("invite_state", {}).get("events", []), "invite", room_id)
        for room_id, room in rooms.get("knock", {}).items():
            add(room.get("knock_state", {}).get("events", []), "knock", room_id)
        for room_id, room in rooms.get("leave", {}).items():
            add(room.get("state", {}).get("events", []), "leave.state", room_id)
            add(room.get("timeline", {}).get("events", []), "leave.timeline", room_id)
        add(data.get("account_data", {}).get("events", []), "account_data", None)
        add(data.get("to_device", {}).get("events", []), "to_device", None)
        return out
