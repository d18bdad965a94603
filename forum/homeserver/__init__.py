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
from forum.homeserver.config import AntispamHook, HomeserverStartError, SynapseConfig
from forum.homeserver.process import SynapseProcess, free_port, port_is_free
from forum.homeserver.workers import WorkerLayout

__all__ = [
    "AntispamHook",
    "EmbeddedHomeserver",
    "HomeserverStartError",
    "RegistrationError",
    "WorkerLayout",
    "free_port",
    "port_is_free",
]


class EmbeddedHomeserver:
    """A Synapse process on loopback, configured and owned by the project.

    ``for_tests`` loosens every rate limit, disables the ``/sync`` response cache and
    hashes passwords at bcrypt's lowest cost.
    ``federation_port`` adds a TLS federation listener on 127.0.0.1 (self-signed
    certificate; peers are trusted without verification, loopback is allowed).
    ``extra_config`` is deep-merged last into the overrides (e.g. strict rate limits).
    ``antispam``: Synapse loads synapse-http-antispam and asks the forum's spam checker
    there (see :mod:`moderation.antispam`).
    ``workers`` runs Synapse's worker mode on PostgreSQL and Redis (the scaled profile):
    :meth:`start` starts the main process and every worker, :meth:`stop` stops them all.
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
        antispam: AntispamHook | None = None,
        workers: WorkerLayout | None = None,
    ) -> None:
        self.config = SynapseConfig(
            Path(directory).resolve(),
            server_name,
            port,
            host=host,
            for_tests=for_tests,
            federation_port=federation_port,
            extra_config=dict(extra_config or {}),
            antispam=antispam,
            workers=workers,
        )
        """Where everything lives and what Synapse is told (paths, ports, overrides)."""
        self.process = SynapseProcess(self.config)
        self.accounts = SharedSecretRegistration(self.config)

    @property
    def server_name(self) -> str:
        return self.config.server_name

    @property
    def url(self) -> str:
        return self.config.url

    def user_id(self, localpart: str) -> str:
        return self.accounts.user_id(localpart)

    def prepare(self) -> None:
        """Write the Synapse configuration (blocking: :meth:`start` runs it in a thread)."""
        self.config.prepare()

    # --- life cycle ----------------------------------------------------------------
    def running_elsewhere(self) -> bool:
        """A Synapse started by another process (``forum run``) runs on this directory."""
        return self.process.running_elsewhere()

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
        await self.process.start(timeout, stop_stale=stop_stale)

    async def stop(self, timeout: float = 15) -> None:  # noqa: ASYNC109 - grace period
        """SIGTERM the process group, SIGKILL after ``timeout`` seconds. Idempotent."""
        await self.process.stop(timeout)

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
    async def register(self, localpart: str, password: str, **options: Any) -> str:
        """Register a user (``admin``, ``display_name``); see
        :meth:`SharedSecretRegistration.register`."""
        return await self.accounts.register(localpart, password, **options)

    async def ensure_accounts(
        self, accounts: Iterable[tuple[str, str, bool, str | None]]
    ) -> list[str]:
        """Register every ``(localpart, password, admin, display_name)``; return the ids."""
        return await self.accounts.ensure_accounts(accounts)
