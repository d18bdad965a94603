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
import datetime
import hashlib
import hmac
import ipaddress
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
import yaml

from forum.credentials import load_or_create_secrets, write_private

log = logging.getLogger(__name__)

CONFIG_FILE = "homeserver.yaml"
OVERRIDES_FILE = "forum-overrides.yaml"
LOG_CONFIG_FILE = "forum-log.yaml"
LOG_FILE = "homeserver.log"
PID_FILE = "forum-synapse.pid"
SECRETS_FILE = "forum-secrets.json"
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"

# A rate limit loose enough that tests never see a 429.
_LOOSE: dict[str, float] = {"per_second": 10000, "burst_count": 100000}

# The rate limits of Synapse 1.163 that tests loosen (MATRIX-FACTS.md).
_TEST_RATE_LIMITS: dict[str, Any] = {
    "rc_message": _LOOSE,
    "rc_registration": _LOOSE,
    "rc_login": {"address": _LOOSE, "account": _LOOSE, "failed_attempts": _LOOSE},
    "rc_joins": {"local": _LOOSE, "remote": _LOOSE},
    "rc_joins_per_room": _LOOSE,
    "rc_invites": {"per_room": _LOOSE, "per_user": _LOOSE, "per_issuer": _LOOSE},
    "rc_room_creation": _LOOSE,
    "rc_3pid_validation": _LOOSE,
    "rc_admin_redaction": _LOOSE,
    "rc_delayed_event_mgmt": _LOOSE,
    "rc_reports": _LOOSE,
    "rc_profile": _LOOSE,
    "rc_user_directory": _LOOSE,
    "rc_media_create": _LOOSE,
    "rc_presence": {"per_user": _LOOSE},
    "rc_federation": {
        "window_size": 1000,
        "sleep_limit": 10000,
        "sleep_delay": 0,
        "reject_limit": 100000,
        "concurrent": 1000,
    },
}


# The embedded (demo) homeserver: a person joins the Space, the lobby, the announcements
# and every topic room on arrival, a moderator the management and policy rooms too. Each
# join is an event, and Synapse's defaults (a burst of 10 events, then one every 5 s; a
# burst of 10 joins, then one every 10 s) refused the 11th of a moderator's first joins
# with a 429. Spam is the moderation bot's business (its flood protection), not this.
# Everyone signs in from 127.0.0.1 here, and Synapse's default (5 logins per address,
# then one every 5 minutes) locked out the third demo account signed in twice.
_FORUM_LIMITS: dict[str, Any] = {
    "rc_message": {"per_second": 1, "burst_count": 30},
    "rc_joins": {"local": {"per_second": 1, "burst_count": 50}},
    "rc_login": {
        "address": {"per_second": 1, "burst_count": 30},
        "account": {"per_second": 1, "burst_count": 30},
    },
}


class HomeserverStartError(RuntimeError):
    """The embedded homeserver could not be prepared or did not become ready."""


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


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _make_self_signed_cert(cert_path: Path, key_path: Path) -> None:
    """A self-signed certificate for 127.0.0.1 / localhost (federation on loopback)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode("ascii"),
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


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
        self.directory = Path(directory).resolve()
        self._server_name = server_name
        self.host = host
        self.port = port
        self.for_tests = for_tests
        self.federation_port = federation_port
        self.extra_config: dict[str, Any] = dict(extra_config or {})
        self._process: asyncio.subprocess.Process | None = None
        self._log_handle: Any = None

    # --- facts -------------------------------------------------------------------
    @property
    def server_name(self) -> str:
        return self._server_name

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.directory / CONFIG_FILE

    @property
    def overrides_path(self) -> Path:
        return self.directory / OVERRIDES_FILE

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_FILE

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
        path = self.directory / SECRETS_FILE
        return load_or_create_secrets(path, ["registration_shared_secret"])[
            "registration_shared_secret"
        ]

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    # --- configuration -----------------------------------------------------------
    def prepare(self) -> None:
        """Write the Synapse configuration (generate once, overrides every time).

        Blocking (runs ``--generate-config`` the first time); :meth:`start` calls it
        in a thread.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            self._generate()
        else:
            existing = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
            if existing.get("server_name") != self.server_name:
                raise HomeserverStartError(
                    f"{self.config_path} was generated for server name "
                    f"{existing.get('server_name')!r}, not {self.server_name!r}; a server "
                    "name cannot change: use another directory"
                )
        self._write_log_config()
        if self.federation_port is not None:
            cert, key = self.directory / TLS_CERT_FILE, self.directory / TLS_KEY_FILE
            if not (cert.exists() and key.exists()):
                _make_self_signed_cert(cert, key)
        write_private(
            self.overrides_path,
            "# Written by forum on every start; edits are lost.\n"
            + yaml.safe_dump(self.overrides(), sort_keys=False),
        )

    def _generate(self) -> None:
        import subprocess

        cmd = [
            sys.executable,
            "-m",
            "synapse.app.homeserver",
            "--server-name",
            self.server_name,
            "--config-path",
            str(self.config_path),
            "--data-directory",
            str(self.directory),
            "--generate-config",
            "--report-stats=no",
        ]
        log.info("Generating Synapse configuration in %s", self.directory)
        result = subprocess.run(  # noqa: S603 - fixed command, our interpreter
            cmd, cwd=self.directory, capture_output=True, text=True, check=False
        )
        if result.returncode != 0 or not self.config_path.exists():
            raise HomeserverStartError(
                f"generating the Synapse configuration in {self.directory} failed "
                f"(exit {result.returncode}):\n{result.stderr[-2000:]}"
            )

    def _write_log_config(self) -> None:
        level = "WARNING"
        config = {
            "version": 1,
            "formatters": {
                "precise": {
                    "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                    "%(request)s - %(message)s"
                }
            },
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "precise",
                    "filename": str(self.log_path),
                    "encoding": "utf8",
                }
            },
            "loggers": {"synapse.storage.SQL": {"level": level}},
            "root": {"level": level, "handlers": ["file"]},
            "disable_existing_loggers": False,
        }
        (self.directory / LOG_CONFIG_FILE).write_text(
            yaml.safe_dump(config, sort_keys=False), encoding="utf-8"
        )

    def overrides(self) -> dict[str, Any]:
        """The settings written to ``forum-overrides.yaml`` (reads only the kept
        shared secret)."""
        listeners: list[dict[str, Any]] = [
            {
                "port": self.port,
                "bind_addresses": [self.host],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ]
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "pid_file": str(self.directory / "homeserver.pid"),
            "listeners": listeners,
            "database": {
                "name": "sqlite3",
                "args": {"database": str(self.directory / "homeserver.db")},
            },
            "media_store_path": str(self.directory / "media_store"),
            "log_config": str(self.directory / LOG_CONFIG_FILE),
            "enable_registration": False,
            "registration_shared_secret": self.registration_shared_secret,
            "report_stats": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "presence": {"enabled": False},
            "enable_metrics": False,
            "url_preview_enabled": False,
            # The forum publishes its lobby to the room directory.
            "room_list_publication_rules": [{"action": "allow"}],
            # Lets our users see the hierarchy of a Space their server is not in yet
            # (GET /hierarchy?org.matrix.msc4235.via=SERVER), as a remote forum's Space.
            "experimental_features": {"msc4235_enabled": True},
            **_FORUM_LIMITS,
        }
        if self.federation_port is not None:
            cert = self.directory / TLS_CERT_FILE
            key = self.directory / TLS_KEY_FILE
            listeners.append(
                {
                    "port": self.federation_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": True,
                    "x_forwarded": False,
                    "resources": [{"names": ["federation"], "compress": False}],
                }
            )
            config |= {
                "tls_certificate_path": str(cert),
                "tls_private_key_path": str(key),
                "federation_verify_certificates": False,
                "ip_range_blacklist": [],
                "ip_range_whitelist": ["127.0.0.1/32"],
                "federation": {
                    "destination_min_retry_interval": "1s",
                    "destination_max_retry_interval": "5s",
                },
            }
        if self.for_tests:
            config |= _TEST_RATE_LIMITS
            config["caches"] = {"sync_response_cache_duration": 0}
        return _deep_merge(config, self.extra_config)

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
        wanted = [(self.host, self.port)]
        if self.federation_port is not None:
            wanted.append(("127.0.0.1", self.federation_port))
        for host, port in wanted:
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
