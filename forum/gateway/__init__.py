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

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.gateway.account import AccountEndpoints
from forum.gateway.admin import AdminEndpoints
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
    ) -> None:
        self.homeserver_url = homeserver_url.rstrip("/")
        self.stats = GatewayStats()
        super().__init__(
            Transport(
                self.homeserver_url,
                user_id,
                stats=self.stats,
                request_timeout=request_timeout,
                max_retries=max_retries,
            )
        )
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
        )
        self.device_id: str | None = None
        self.powers = PowerLevelEditor(self)
        """The one writer of this account's ``m.room.power_levels`` edits (both bots)."""

    # --- identity -------------------------------------------------------------------
    @property
    def access_token(self) -> str | None:
        return self._transport.access_token

    async def login(self) -> None:
        """Log in: a given token, then a stored token, then the password."""
        self.device_id = await self._session.login()

    async def close(self) -> None:
        self._sync.stop()
        await self._transport.close()

    # --- handlers and the sync loop ---------------------------------------------------
    def on(
        self, kind: type[E], handler: Callable[[E], Awaitable[None]], *, include_own: bool = False
    ) -> None:
        """Call ``handler`` for every event of ``kind`` (a class of :mod:`forum.events`).

        Events sent by this account are skipped unless ``include_own``.
        """
        self._sync.on(kind, handler, include_own=include_own)

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

    async def _relogin(self) -> None:
        """The homeserver refused our token while syncing: forget it, log in again."""
        await self._session.forget()
        await self.login()
