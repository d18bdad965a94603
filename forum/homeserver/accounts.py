"""Accounts on the embedded Synapse, registered through the shared-secret admin API
(``/_synapse/admin/v1/register``), with the secret kept beside the configuration."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable
from typing import Any

import aiohttp

from forum.homeserver.config import SynapseConfig

log = logging.getLogger(__name__)


class RegistrationError(RuntimeError):
    """The shared-secret registration API refused a user."""


def registration_mac(secret: str, nonce: str, localpart: str, password: str, *, admin: bool) -> str:
    """The HMAC-SHA1 that proves knowledge of the shared secret for one registration."""
    mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha1)
    for part in (nonce, localpart, password, "admin" if admin else "notadmin"):
        if part != nonce:
            mac.update(b"\x00")
        mac.update(part.encode("utf-8"))
    return mac.hexdigest()


class SharedSecretRegistration:
    """Registers users on the Synapse of one :class:`SynapseConfig` (which must run)."""

    def __init__(self, config: SynapseConfig) -> None:
        self._config = config

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self._config.server_name}"

    async def register(
        self,
        localpart: str,
        password: str,
        *,
        admin: bool = False,
        display_name: str | None = None,
    ) -> str:
        """Register a user through the shared-secret admin API; return the user id.

        A user that already exists is not an error (its password is not changed).
        """
        secret = self._config.registration_shared_secret
        endpoint = f"{self._config.url}/_synapse/admin/v1/register"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.get(endpoint) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise RegistrationError(f"cannot get a registration nonce: {body}")
                nonce = str(body["nonce"])
            payload: dict[str, Any] = {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": registration_mac(secret, nonce, localpart, password, admin=admin),
            }
            if display_name is not None:
                payload["displayname"] = display_name
            async with http.post(endpoint, json=payload) as resp:
                body = await resp.json(content_type=None)
                if resp.status == 200:
                    user_id = str(body["user_id"])
                    log.info("Registered %s", user_id)
                    return user_id
                if body.get("errcode") == "M_USER_IN_USE":
                    return self.user_id(localpart)
                raise RegistrationError(
                    f"registering {localpart!r} failed ({resp.status}): "
                    f"{body.get('errcode')} {body.get('error')}"
                )

    async def ensure_accounts(
        self, accounts: Iterable[tuple[str, str, bool, str | None]]
    ) -> list[str]:
        """Register every ``(localpart, password, admin, display_name)``; return the ids."""
        return [
            await self.register(localpart, password, admin=admin, display_name=display_name)
            for localpart, password, admin, display_name in accounts
        ]
