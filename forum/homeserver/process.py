"""The embedded Synapse's life: start, wait until ready, stop.

Synapse runs in its own process group with its console output in ``homeserver.log``;
``forum-synapse.pid`` names it, so that another ``forum`` command sees a Synapse already
running on the directory and a new start finds one left from a crashed run. In worker
mode (the scaled profile) every worker joins the main process's group: one signal to the
group stops them all, and a stale group is stopped whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import aiohttp

from forum.credentials import PRIVATE_FILE, PRIVATE_UMASK, write_private
from forum.homeserver.config import HomeserverStartError, SynapseConfig
from forum.homeserver.postgres import DatabaseUnavailable, ensure_database
from forum.homeserver.workers import Worker

log = logging.getLogger(__name__)

PID_FILE = "forum-synapse.pid"


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


def _open_private_log(path: Path) -> IO[bytes]:
    """``path`` opened for appending, created 0600 (it holds Synapse's console output)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
    os.chmod(path, PRIVATE_FILE)
    return os.fdopen(fd, "ab")


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


def _workers_alive(pgid: int) -> bool:
    """A Synapse worker of the process group ``pgid`` still runs (its main process may
    have died before it: a crash)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            group = int(stat.read_text().rsplit(")", 1)[1].split()[2])
            if group == pgid and b"synapse.app" in (stat.parent / "cmdline").read_bytes():
                return True
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return False


class SynapseProcess:
    """The Synapse process of one :class:`SynapseConfig`, started and stopped by us."""

    def __init__(self, config: SynapseConfig) -> None:
        self._config = config
        self._process: asyncio.subprocess.Process | None = None
        self._workers: dict[str, asyncio.subprocess.Process] = {}
        self._log_handle: IO[bytes] | None = None

    @property
    def pid_path(self) -> Path:
        return self._config.directory / PID_FILE

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _pid_in_file(self) -> int:
        """The pid written in the pid file; 0 when there is none or it cannot be read."""
        try:
            return int(self.pid_path.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return 0

    def running_elsewhere(self) -> bool:
        """A Synapse started by another process (``forum run``) runs on this directory."""
        if not self.pid_path.exists():
            return False
        pid = self._pid_in_file()
        return pid > 0 and pid != self.pid and _process_alive(pid)

    def _check_stale(self, stop_stale: bool) -> None:
        if not self.pid_path.exists():
            return
        pid = self._pid_in_file()
        if pid > 0 and _process_alive(pid):
            if not stop_stale:
                raise HomeserverStartError(
                    f"a Synapse from a previous run (pid {pid}) is still running on "
                    f"{self._config.directory}; stop it first (kill {pid})"
                )
            log.warning("Stopping the Synapse left from a previous run (pid %d)", pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        elif pid > 0 and stop_stale and _workers_alive(pid):
            log.warning("Stopping the Synapse workers left from a previous run (group %d)", pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        else:
            log.info("Removing the stale pid file %s", self.pid_path)
            self.pid_path.unlink(missing_ok=True)

    def _tail_log(self, lines: int = 40) -> str:
        try:
            text = self._config.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def start(
        self,
        timeout: float = 60,  # noqa: ASYNC109 - a deadline for the whole start-up
        *,
        stop_stale: bool = False,
    ) -> None:
        """Prepare the configuration, start Synapse and wait until ``GET /health``
        answers 200.

        Raises :class:`HomeserverStartError` if the port is taken, a Synapse from a
        previous run still runs on this directory (unless ``stop_stale``), the process
        exits, or it is not ready within ``timeout`` seconds.
        """
        if self.running:
            return
        config = self._config
        await asyncio.to_thread(self._check_stale, stop_stale)
        if stop_stale:
            await self._wait_stale_gone(grace=15)
        for host, port in config.listen_addresses():
            if not port_is_free(host, port):
                raise HomeserverStartError(
                    f"cannot start the homeserver: port {port} on {host} is already "
                    "in use by another program"
                )
        if config.workers is not None:
            try:
                await ensure_database(config.workers.database_url, c_locale=True)
            except DatabaseUnavailable as exc:
                raise HomeserverStartError(f"the scaled profile needs PostgreSQL: {exc}") from exc
        await asyncio.to_thread(config.prepare)
        self._log_handle = await asyncio.to_thread(_open_private_log, config.log_path)
        cmd = [
            sys.executable,
            "-m",
            "synapse.app.homeserver",
            *self._config_args(),
        ]
        log.info("Starting Synapse %s on %s", config.server_name, config.url)
        # Its own process group (a Ctrl-C in the terminal reaches the forum, which stops
        # it); in worker mode a group of our session, which the workers can join.
        group: dict[str, Any] = (
            {"start_new_session": True} if config.workers is None else {"process_group": 0}
        )
        self._process = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=config.directory,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=self._log_handle,
            umask=PRIVATE_UMASK,  # its database, log and media: private
            **group,
        )
        write_private(self.pid_path, f"{self._process.pid}\n")
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            await self._wait_ready(timeout)
            if config.workers is not None:
                await self._start_workers(config.workers.workers(), deadline - loop.time())
        except BaseException:
            await self.stop()
            raise
        log.info("Synapse %s ready (pid %d)", config.server_name, self._process.pid)

    def _config_args(self) -> list[str]:
        return ["-c", str(self._config.config_path), "-c", str(self._config.overrides_path)]

    @property
    def worker_pids(self) -> dict[str, int]:
        """The running workers' pids, by instance name (empty on the single profile)."""
        return {name: p.pid for name, p in self._workers.items() if p.returncode is None}

    async def _start_workers(self, workers: list[Worker], limit: float) -> None:
        """Start every worker in the main process's group (after the main process, which
        prepared the database schema) and wait until each answers ``/health``."""
        assert self._process is not None
        assert self._config.workers is not None
        for worker in workers:
            cmd = [
                sys.executable,
                "-m",
                "synapse.app.generic_worker",
                *self._config_args(),
                "-c",
                str(self._config.directory / worker.config_file),
            ]
            self._workers[worker.name] = await asyncio.create_subprocess_exec(
                *cmd,
                cwd=self._config.directory,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=self._log_handle,
                stderr=self._log_handle,
                process_group=self._process.pid,
                umask=PRIVATE_UMASK,
            )
        urls = self._config.workers.health_urls()
        await asyncio.gather(
            *(self._wait_healthy(name, urls[name], limit) for name in self._workers)
        )
        log.info("Synapse workers ready: %s", ", ".join(self._workers))

    async def _wait_healthy(self, name: str, url: str, limit: float) -> None:
        log_path = self._config.directory / f"worker-{name}.log"
        await _poll_health(
            self._workers[name],
            url,
            max(limit, 1.0),
            exited=lambda code: (
                f"Synapse worker {name} exited with code {code} while starting; see "
                f"{log_path} and {self._config.log_path}:\n{self._tail_log()}"
            ),
            silent=lambda: (
                f"Synapse worker {name} did not answer {url} within {limit:.0f} s; see {log_path}"
            ),
        )

    async def _wait_stale_gone(self, grace: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.pid_path.exists():
            pid = self._pid_in_file()
            if pid <= 0 or not (_process_alive(pid) or _workers_alive(pid)):
                break
            if loop.time() > deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            await asyncio.sleep(0.1)
        self.pid_path.unlink(missing_ok=True)

    async def _wait_ready(self, limit: float) -> None:
        assert self._process is not None
        log_path = self._config.log_path
        await _poll_health(
            self._process,
            f"{self._config.url}/health",
            limit,
            exited=lambda code: (
                f"Synapse exited with code {code} while starting; last "
                f"lines of {log_path}:\n{self._tail_log()}"
            ),
            silent=lambda: (
                f"Synapse did not answer /health within {limit:.0f} s; last "
                f"lines of {log_path}:\n{self._tail_log()}"
            ),
        )

    async def stop(self, timeout: float = 15) -> None:  # noqa: ASYNC109 - grace period
        """SIGTERM the process group (the main process and its workers), SIGKILL after
        ``timeout`` seconds. Idempotent."""
        process, self._process = self._process, None
        workers, self._workers = list(self._workers.values()), {}
        everyone = [p for p in [process, *workers] if p is not None]
        try:
            if process is not None and any(p.returncode is None for p in everyone):
                log.info("Stopping Synapse %s (pid %d)", self._config.server_name, process.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(asyncio.gather(*(p.wait() for p in everyone)), timeout)
                except TimeoutError:
                    log.warning("Synapse did not stop in %.0f s; killing it", timeout)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    await asyncio.gather(*(p.wait() for p in everyone))
            if process is not None:
                self.pid_path.unlink(missing_ok=True)
        finally:
            if self._log_handle is not None:
                self._log_handle.close()
                self._log_handle = None


async def _poll_health(
    process: asyncio.subprocess.Process,
    url: str,
    limit: float,
    *,
    exited: Callable[[int], str],
    silent: Callable[[], str],
) -> None:
    """Wait until ``url`` answers 200; :class:`HomeserverStartError` with ``exited``'s
    text if ``process`` ends first, with ``silent``'s after ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            if process.returncode is not None:
                raise HomeserverStartError(exited(process.returncode))
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if loop.time() > deadline:
                raise HomeserverStartError(silent())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 0.1)
