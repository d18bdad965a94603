"""The embedded homeserver: a real Synapse started on loopback by the project itself.

Used by the demo (``forum`` commands with ``homeserver.mode = "embedded"``) and by the
test suite. Everything lives in one directory: the generated ``homeserver.yaml`` (signing
key and secrets, generated once and kept), ``forum-overrides.yaml`` (rewritten on every
start from the constructor arguments), the SQLite database, the media store and
``homeserver.log`` (Synapse's log and its console output; never our stdout).

Nothing happens at import time; the Synapse process is started by :meth:`start` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from forum.homeserver.config import HomeserverStartError, SynapseConfig

__all__ = [
    "EmbeddedHomeserver",
    "HomeserverStartError",
    "RegistrationError",
    "free_port",
    "port_is_free",
]

log = logging.getLogger(__name__)

PID_FILE = "forum-synapse.pid"


class RegistrationError(RuntimeError):
    """The shared-secret registration API refused a user."""


# --- small helpers ---------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    """True if nothing listens on ``host:port`` (a bind succeeds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie or a recycled pid is not our Synapse.
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            text = cmdline.read_bytes()
        except OSError:
            return False
        return b"synapse.app.homeserver" in text
    return True


# --- the homeserver --------------------------------------------------------------------


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
        self._process: asyncio.subprocess.Process | None = None
        self._log_handle: Any = None

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
        return self.directory / PID_FILE

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def registration_shared_secret(self) -> str:
        return self._config.registration_shared_secret

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

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
        if not self.pid_path.exists():
            return False
        try:
            pid = int(self.pid_path.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return False
        return pid > 0 and pid != self.pid and _process_alive(pid)

    def _check_stale(self, stop_stale: bool) -> None:
        if not self.pid_path.exists():
            return
        try:
            pid = int(self.pid_path.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            pid = 0
        if pid > 0 and _process_alive(pid):
            if not stop_stale:
                raise HomeserverStartError(
                    f"a Synapse from a previous run (pid {pid}) is still running on "
                    f"{self.directory}; stop it first (kill {pid})"
                )
            log.warning("Stopping the Synapse left from a previous run (pid %d)", pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        else:
            log.info("Removing the stale pid file %s", self.pid_path)
            self.pid_path.unlink(missing_ok=True)

    def _tail_log(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

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
        if self.running:
            return
        await asyncio.to_thread(self._check_stale, stop_stale)
        if stop_stale:
            await self._wait_stale_gone(grace=15)
        for host, port in self._config.listen_addresses():
            if not port_is_free(host, port):
                raise HomeserverStartError(
                    f"cannot start the homeserver: port {port} on {host} is already "
                    "in use by another program"
                )
        await asyncio.to_thread(self.prepare)
        self._log_handle = await asyncio.to_thread(open, self.log_path, "ab")
        cmd = [
            sys.executable,
            "-m",
            "synapse.app.homeserver",
            "-c",
            str(self.config_path),
            "-c",
            str(self.overrides_path),
        ]
        log.info("Starting Synapse %s on %s", self.server_name, self.url)
        self._process = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=self.directory,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=self._log_handle,
            start_new_session=True,
        )
        self.pid_path.write_text(f"{self._process.pid}\n", encoding="utf-8")
        try:
            await self._wait_ready(timeout)
        except BaseException:
            await self.stop()
            raise
        log.info("Synapse %s ready (pid %d)", self.server_name, self._process.pid)

    async def _wait_stale_gone(self, grace: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.pid_path.exists():
            try:
                pid = int(self.pid_path.read_text(encoding="utf-8").strip())
            except (OSError, ValueError):
                break
            if not _process_alive(pid):
                break
            if loop.time() > deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            await asyncio.sleep(0.1)
        self.pid_path.unlink(missing_ok=True)

    async def _wait_ready(self, limit: float) -> None:
        assert self._process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        client_timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=client_timeout) as http:
            while True:
                if self._process.returncode is not None:
                    raise HomeserverStartError(
                        f"Synapse exited with code {self._process.returncode} while "
                        f"starting; last lines of {self.log_path}:\n{self._tail_log()}"
                    )
                try:
                    async with http.get(f"{self.url}/health") as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if loop.time() > deadline:
                    raise HomeserverStartError(
                        f"Synapse did not answer /health within {limit:.0f} s; last "
                        f"lines of {self.log_path}:\n{self._tail_log()}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._process.wait(), 0.1)

    async def stop(self, timeout: float = 15) -> None:  # noqa: ASYNC109 - grace period
        """SIGTERM the process group, SIGKILL after ``timeout`` seconds. Idempotent."""
        process, self._process = self._process, None
        try:
            if process is not None and process.returncode is None:
                log.info("Stopping Synapse %s (pid %d)", self.server_name, process.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), timeout)
                except TimeoutError:
                    log.warning("Synapse did not stop in %.0f s; killing it", timeout)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    await process.wait()
            if process is not None:
                self.pid_path.unlink(missing_ok=True)
        finally:
            if self._log_handle is not None:
                self._log_handle.close()
                self._log_handle = None

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
        secret = self.registration_shared_secret.encode("utf-8")
        endpoint = f"{self.url}/_synapse/admin/v1/register"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.get(endpoint) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise RegistrationError(f"cannot get a registration nonce: {body}")
                nonce = str(body["nonce"])
            mac = hmac.new(secret, digestmod=hashlib.sha1)
            for part in (nonce, localpart, password, "admin" if admin else "notadmin"):
                if part != nonce:
                    mac.update(b"\x00")
                mac.update(part.encode("utf-8"))
            payload: dict[str, Any] = {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
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
