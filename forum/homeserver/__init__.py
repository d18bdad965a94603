"""The embedded homeserver: a real Synapse started on loopback by the project itself.

Used by the demo (``forum`` commands with ``homeserver.mode = "embedded"``) and by the
test suite. Everything lives in one directory: the generated ``homeserver.yaml`` (signing
key and secrets, generated once and kept), ``forum-overrides.yaml`` (rewritten on every
start from the constructor arguments), the SQLite database, the media store and
``homeserver.log`` (Synapse's log and its console output; never our stdout).

Nothing happens at import time; the Synapse process is started by :meth:`start` only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from forum.homeserver.accounts import RegistrationError, SharedSecretRegistration
from forum.homeserver.config import HomeserverStartError, SynapseConfig
from forum.homeserver.process import SynapseProcess, free_port, port_is_free

__all__ = [
    "EmbeddedHomeserver",
    "HomeserverStartError",
    "RegistrationError",
    "free_port",
    "port_is_free",
]


class EmbeddedHomeserver:
    """A Synapse process on loopback, configured and owned by the project.

    ``for_tests`` loosens every rate limit and disables the ``/sync`` response cache.
    ``federation_port`` adds a TLS federation listener on 127.0.0.1 (self-signed
    certificate; peers are trusted without verification, loopback is allowed).
    ``extra_config`` is deep-merged last into the overrides (e.g. strict rate limits).
    """

    def __init__(
        self,
        directory: Path,
        *,
        server_name: str,
        host: str = "127.0.0.1",
        port: int,
        for_tests: bool = False,
        federation_port: int | None = None,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self._config = SynapseConfig(
            Path(directory).resolve(),
            server_name,
            port,
            host=host,
            for_tests=for_tests,
            federation_port=federation_port,
            extra_config=dict(extra_config or {}),
        )
        self._synapse = SynapseProcess(self._config)
        self._accounts = SharedSecretRegistration(self._config)

    # --- facts -------------------------------------------------------------------
    @property
    def directory(self) -> Path:
        return self._config.directory

    @property
    def server_name(self) -> str:
        return self._config.server_name

    @property
    def host(self) -> str:
        return self._config.host

    @property
    def port(self) -> int:
        return self._config.port

    @property
    def for_tests(self) -> bool:
        return self._config.for_tests

    @property
    def federation_port(self) -> int | None:
        return self._config.federation_port

    @property
    def extra_config(self) -> dict[str, Any]:
        return self._config.extra_config

    @property
    def url(self) -> str:
        return self._config.url

    @property
    def config_path(self) -> Path:
        return self._config.config_path

    @property
    def overrides_path(self) -> Path:
        return self._config.overrides_path

    @property
    def log_path(self) -> Path:
        return self._config.log_path

    @property
    def pid_path(self) -> Path:
        return self._synapse.pid_path

    @property
    def running(self) -> bool:
        return self._synapse.running

    @property
    def pid(self) -> int | None:
        return self._synapse.pid

    @property
    def registration_shared_secret(self) -> str:
        return self._config.registration_shared_secret

    def user_id(self, localpart: str) -> str:
        return self._accounts.user_id(localpart)

    # --- configuration -----------------------------------------------------------
    def prepare(self) -> None:
        """Write the Synapse configuration (generate once, overrides every time).

        Blocking (runs ``--generate-config`` the first time); :meth:`start` calls it
        in a thread.
        """
        self._config.prepare()

    def overrides(self) -> dict[str, Any]:
        """The settings written to ``forum-overrides.yaml`` (reads only the kept
        shared secret)."""
        return self._config.overrides()

    # --- life cycle ----------------------------------------------------------------
    def running_elsewhere(self) -> bool:
        """A Synapse started by another process (``forum run``) runs on this directory."""
        return self._synapse.running_elsewhere()

    async def start(
        self,
        timeout: float = 60,  # noqa: ASYNC109 - a deadline for the whole start-up
        *,
        stop_stale: bool = False,
    ) -> None:
        """Start Synapse and wait until ``GET /health`` answers 200.

        Raises :class:`HomeserverStartError` if the port is taken, a Synapse from a
        previous run still runs on this directory (unless ``stop_stale``), the process
        exits, or it is not ready within ``timeout`` seconds.
        """
        await self._synapse.start(timeout, stop_stale=stop_stale)

    async def stop(self, timeout: float = 15) -> None:  # noqa: ASYNC109 - grace period
        """SIGTERM the process group, SIGKILL after ``timeout`` seconds. Idempotent."""
        await self._synapse.stop(timeout)

    async def __aenter__(self) -> EmbeddedHomeserver:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- accounts ------------------------------------------------------------------
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
        return await self._accounts.register(
            localpart, password, admin=admin, display_name=display_name
        )

    async def ensure_accounts(
        self, accounts: Iterable[tuple[str, str, bool, str | None]]
    ) -> list[str]:
        """Register every ``(localpart, password, admin, display_name)``; return the ids."""
        return await self._accounts.ensure_accounts(accounts)
