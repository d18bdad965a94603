"""Login and session of one account: a given token, then the stored one, then the password.

A password login is stored (:class:`forum.storage.BotSessions`) so that a restart reuses
its token and device instead of logging in again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.errors import MatrixError, Unauthorized
from forum.gateway.transport import Transport
from forum.storage import BotSessions

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Session:
    """Finds a working access token for the transport's account."""

    transport: Transport
    sessionmaker: async_sessionmaker[AsyncSession]
    _: KW_ONLY
    password: str | None = field(repr=False)
    access_token: str | None = field(repr=False)
    """The token given by the settings: tried first, until the homeserver refuses it."""
    device_name: str

    @property
    def user_id(self) -> str:
        return self.transport.user_id

    async def login(
        self,
        known_device: str | None = None,
        *,
        keeps_keys: Callable[[str], bool] | None = None,
    ) -> str | None:
        """Log in: a given token, then a stored token, then the password. Returns the
        device id (``None`` when a token's owner does not say it). A password login asks
        for the stored session's device, else ``known_device`` (the device whose
        encryption keys are kept), so that a new token keeps the same device.

        ``keeps_keys`` (end-to-end encryption) tells whether this process keeps a device's
        keys: a stored session of a device whose keys it does not keep is another
        process's (the active forum's, for a standby) or one whose keys are lost here, and
        the password logs in as this process's own device instead."""
        transport = self.transport
        candidates: list[tuple[str, str | None]] = []
        if self.access_token:
            candidates.append((self.access_token, None))
        async with self.sessionmaker() as s:
            stored = await BotSessions(s).get(self.user_id)
        foreign = (
            keeps_keys is not None
            and self.password is not None
            and stored is not None
            and not (stored.device_id and keeps_keys(stored.device_id))
        )
        if stored and stored.homeserver == transport.homeserver_url and not foreign:
            candidates.append((stored.access_token, stored.device_id))
            known_device = stored.device_id or known_device
        for token, device_id in candidates:
            transport.access_token = token
            try:
                who = await transport.request("GET", "/account/whoami", retry_unavailable=True)
            except Unauthorized:
                log.info("stored access token of %s was refused; logging in again", self.user_id)
                continue
            if who.get("user_id") != self.user_id:
                raise MatrixError(
                    f"the access token belongs to {who.get('user_id')}, not {self.user_id}"
                )
            found: str | None = who.get("device_id") or device_id
            return found
        transport.access_token = None
        if not self.password:
            raise Unauthorized(f"no valid access token and no password for {self.user_id}")
        device_id, token = await transport.password_login(
            self.password, self.device_name, known_device
        )
        async with self.sessionmaker() as s, s.begin():
            await BotSessions(s).save(self.user_id, transport.homeserver_url, device_id, token)
        log.info("logged in as %s (device %s)", self.user_id, device_id)
        return device_id

    async def forget(self) -> None:
        """The homeserver refused our token: drop it (stored and given) before logging in."""
        async with self.sessionmaker() as s, s.begin():
            await BotSessions(s).delete(self.user_id)
        self.access_token = None
