"""The Matrix gateway: the only code of the project that talks to the homeserver.

One :class:`Gateway` per bot account. It logs in (stored token, given token or
password: :mod:`.session`), owns a sync loop with a filter (timeline limit 100, gaps
filled from ``/messages``) that dispatches the project's own event types
(:mod:`forum.events`) to the handlers registered for them, isolates failing handlers
(a handler that raised is called again with backoff, ``handler_max_attempts`` times at
most, its event left unprocessed until then), persists ``next_batch`` only after the
handlers ran and skips events already processed (:mod:`.sync`). Every request is
checked in one place (:mod:`.transport`), which maps errors to :mod:`forum.errors` and
retries 429 (honouring ``retry_after_ms``) and 5xx / connection failures a bounded
number of times.

matrix-nio provides the login and the HTTP transport (its ``AsyncClient``); requests are
built here so that every result is checked the same way, including the endpoints nio does
not cover (joins and knocks with ``via``, members by membership, reports, hierarchy). The
endpoint wrappers are grouped by what they touch: :mod:`.rooms`, :mod:`.state`,
:mod:`.membership`, :mod:`.account` and :mod:`.admin`; every power-level edit of the account
goes through its one :class:`~.powers.PowerLevelEditor` (:attr:`Gateway.powers`).
"""

from __future__ import annotations

import forum.gateway._nio  # noqa: F401  (first: matrix-nio without unused drivers)

# isort: split

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from nio.crypto.attachments import encrypt_attachment
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.errors import MatrixError
from forum.gateway.account import AccountEndpoints
from forum.gateway.admin import AdminEndpoints
from forum.gateway.crypto import Crypto, DeviceRemoved, store_dir_of
from forum.gateway.membership import MembershipEndpoints
from forum.gateway.powers import PowerLevelEditor
from forum.gateway.rooms import RoomEndpoints
from forum.gateway.session import Session
from forum.gateway.state import StateEndpoints
from forum.gateway.sync import SyncLoop
from forum.gateway.transport import (
    CLIENT_V1,
    CLIENT_V3,
    GatewayStats,
    RequestObserver,
    Transport,
    action_kind,
)

log = logging.getLogger(__name__)

__all__ = ["CLIENT_V1", "CLIENT_V3", "Gateway", "GatewayStats", "RequestObserver", "action_kind"]

E = TypeVar("E")


class Gateway(RoomEndpoints, MembershipEndpoints, StateEndpoints, AccountEndpoints, AdminEndpoints):
    """A logged-in Matrix account with an owned sync loop and checked requests."""

    def __init__(
        self,
        *,
        homeserver_url: str,
        user_id: str,
        sessionmaker: async_sessionmaker[AsyncSession],
        password: str | None = None,
        access_token: str | None = None,
        device_name: str = "forum",
        request_timeout: float = 30.0,
        max_retries: int = 8,
        sync_timeout_ms: int = 30_000,
        timeline_limit: int = 100,
        handler_max_attempts: int = 8,
        handler_retry_initial: float = 2.0,
        crypto_store: Path | None = None,
        crypto_pickle_key: str = "",
        key_wait: float = 5.0,
        lanes: int = 4,
    ) -> None:
        """``crypto_store``: the directory under which this account's end-to-end
        encryption store is kept (:mod:`.crypto`); None: the account reads and writes
        clear rooms only."""
        self.homeserver_url = homeserver_url.rstrip("/")
        self.stats = GatewayStats()
        super().__init__(
            Transport(
                self.homeserver_url,
                user_id,
                stats=self.stats,
                request_timeout=request_timeout,
                max_retries=max_retries,
                store_path=store_dir_of(crypto_store, user_id) if crypto_store else None,
                pickle_key=crypto_pickle_key,
            )
        )
        self.crypto = Crypto(self._transport) if crypto_store else None
        self._session = Session(
            self._transport,
            sessionmaker,
            password=password,
            access_token=access_token,
            device_name=device_name,
        )
        self._sync = SyncLoop(
            self._transport,
            sessionmaker,
            stats=self.stats,
            relogin=self._relogin,
            sync_timeout_ms=sync_timeout_ms,
            timeline_limit=timeline_limit,
            handler_max_attempts=handler_max_attempts,
            handler_retry_initial=handler_retry_initial,
            crypto=self.crypto,
            key_wait=key_wait,
            lanes=lanes,
        )
        self.device_id: str | None = None
        self.powers = PowerLevelEditor(self)
        """The one writer of this account's ``m.room.power_levels`` edits (both bots)."""

    # --- identity -------------------------------------------------------------------
    @property
    def access_token(self) -> str | None:
        return self._transport.access_token

    async def login(self) -> None:
        """Log in: a given token, then a stored token, then the password. With
        encryption, the device is this process's own (see :meth:`Session.login`) and its
        keys are loaded (or made) and published (:meth:`publish_keys`)."""
        crypto = self.crypto
        known = await crypto.prepare() if crypto else None
        self.device_id = await self._session.login(
            known, keeps_keys=crypto.keeps if crypto else None
        )
        if crypto is None:
            return
        if not self.device_id:
            raise MatrixError(f"{self.user_id}: the homeserver did not say our device id")
        await self.publish_keys()

    async def drain_to_device(self) -> int:
        """Receive the to-device messages waiting for this device (see
        :meth:`Crypto.drain_to_device`); 0 without encryption."""
        return await self.crypto.drain_to_device() if self.crypto else 0

    async def publish_keys(self) -> None:
        """Publish the logged-in device's keys (nothing without encryption); a device
        whose keys are lost here is replaced by a new one."""
        crypto = self.crypto
        if crypto is None:
            return
        assert self.device_id is not None, "publish_keys() after login()"
        try:
            await crypto.start(self.device_id)
        except DeviceRemoved as exc:
            await self._new_device(crypto, exc, removed=True)
        except MatrixError as exc:
            if not crypto.fresh:
                raise
            await self._new_device(crypto, exc)

    async def _new_device(
        self, crypto: Crypto, refused: MatrixError, *, removed: bool = False
    ) -> None:
        """Log in as a new device, when the device's store was lost (deleted, or an old
        backup restored) while its keys stay published (the homeserver refuses new keys
        for it), or when the device was ``removed`` (see :class:`DeviceRemoved`: the
        device the log-in made again without keys is logged out)."""
        old = self.device_id
        if not self._session.password:
            raise MatrixError(
                f"{self.user_id}: device {old} cannot be used for encryption ({refused}); "
                "give the bot a password, or a new access token (a new device), in the "
                "configuration"
            ) from refused
        if removed:
            log.warning("%s; logging in as a new device", refused)
            with contextlib.suppress(MatrixError):  # it would stay listed, keyless
                await self._transport.request("POST", "/logout", body={})
        else:
            log.warning(
                "%s: the encryption store of device %s is lost (the homeserver refused "
                "new keys: %s); logging in as a new device",
                self.user_id,
                old,
                refused,
            )
        crypto.forget_device()
        await self._session.forget()
        self.device_id = await self._session.login(None)
        if not self.device_id or self.device_id == old:
            raise MatrixError(f"{self.user_id}: no new device to replace {old}") from refused
        await crypto.start(self.device_id)

    @property
    def encrypted(self) -> bool:
        """Whether this account takes part in encrypted rooms."""
        return self.crypto is not None

    async def send_event(
        self, room_id: str, event_type: str, content: dict[str, Any], *, txn_id: str | None = None
    ) -> str:
        """Send one event; encrypted when the room is (and this account has keys). The
        same ``txn_id`` sent again gets the same event back (see the base class)."""
        crypto = self.crypto
        if crypto is None or not await crypto.is_encrypted(room_id):
            return await super().send_event(room_id, event_type, content, txn_id=txn_id)
        return await crypto.send(room_id, event_type, content, txn_id or self._transport.txn_id())

    async def close(self) -> None:
        self._sync.stop()
        await self._transport.close()

    # --- handlers and the sync loop ---------------------------------------------------
    def on(
        self,
        kind: type[E],
        handler: Callable[[E], Awaitable[None]],
        *,
        include_own: bool = False,
        skip_rooms: Iterable[str] = (),
    ) -> None:
        """Call ``handler`` for every event of ``kind`` (a class of :mod:`forum.events`).

        Events sent by this account are skipped unless ``include_own``, and events in
        ``skip_rooms`` are.
        """
        self._sync.handling.on(kind, handler, include_own=include_own, skip_rooms=skip_rooms)

    @property
    def next_batch(self) -> str | None:
        return self._sync.next_batch

    @next_batch.setter
    def next_batch(self, token: str | None) -> None:
        self._sync.next_batch = token

    def sync_filter(self) -> dict[str, Any]:
        return self._sync.filter()

    async def load_token(self) -> str | None:
        return await self._sync.load_token()

    async def sync_once(self, timeout_ms: int | None = None) -> int:
        """One ``/sync``: dispatch new events, then persist the token. Returns events handled."""
        return await self._sync.sync_once(timeout_ms)

    async def run(self) -> None:
        """Sync until :meth:`stop`. Survives homeserver outages (with backoff)."""
        await self._sync.run()

    def stop(self) -> None:
        self._sync.stop()

    async def wait_synced(self, timeout: float = 30) -> None:
        await self._sync.wait_synced(timeout)

    def on_synced(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each ``/sync`` batch handled and its token stored."""
        self._sync.synced_callbacks.append(callback)

    def observe_requests(self, observer: RequestObserver | None) -> None:
        """Call ``observer(kind, seconds, outcome)`` after every request (metrics)."""
        self._transport.observer = observer

    async def create_room(self, payload: dict[str, Any]) -> str:
        room_id = await super().create_room(payload)
        if self.crypto is not None:
            state = payload.get("initial_state") or []
            self.crypto.created(
                room_id,
                encrypted=any(e.get("type") == "m.room.encryption" for e in state),
            )
        return room_id

    async def send_file(
        self, room_id: str, data: bytes, filename: str, mimetype: str, *, body: str | None = None
    ) -> str:
        """Upload ``data`` and send it as an ``m.file``: in an encrypted room the file is
        encrypted too (only the room's members can open it), as an encrypted attachment."""
        content: dict[str, Any] = {
            "msgtype": "m.file",
            "body": body or filename,
            "filename": filename,
            "info": {"mimetype": mimetype, "size": len(data)},
        }
        if self.crypto is not None and await self.crypto.is_encrypted(room_id):
            cipher, keys = encrypt_attachment(data)
            mxc = await self.upload(cipher, "application/octet-stream", filename)
            content["file"] = {"url": mxc, "mimetype": mimetype, **keys}
        else:
            content["url"] = await self.upload(data, mimetype, filename)
        return await self.send_event(room_id, "m.room.message", content)

    async def _relogin(self) -> None:
        """The homeserver refused our token while syncing: forget it, log in again."""
        await self._session.forget()
        await self.login()
