"""Synapse's worker mode for the embedded homeserver (the "scaled" profile).

The main process keeps the client listener the forum talks to and adds a replication
listener; each worker is a ``synapse.app.generic_worker`` process with its own
replication listener (``instance_map``), all on loopback, all sharing one PostgreSQL
database and one Redis:

- ``event_persister1..N`` are the ``stream_writers.events``: Synapse shards the rooms
  over them, so events of different rooms are persisted in parallel;
- ``generic_worker1..M`` each also listen for client requests on their own port (for a
  reverse proxy routing ``/sync`` and the like to them; the forum itself talks to the main
  process), and the first one takes the user directory, the pushers and the appservice
  notifications off the main process;
- ``federation_sender1`` sends every outgoing federation transaction.

Pure: builds configuration mappings; :class:`forum.homeserver.config.SynapseConfig`
writes them and :class:`forum.homeserver.process.SynapseProcess` starts the processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

WorkerKind = Literal["event_persister", "generic_worker", "federation_sender"]

MAIN = "main"


@dataclass(frozen=True)
class Worker:
    """One worker process: its instance name, its role and its listener's port."""

    name: str
    kind: WorkerKind
    port: int

    @property
    def config_file(self) -> str:
        return f"worker-{self.name}.yaml"

    @property
    def log_config_file(self) -> str:
        return f"worker-{self.name}-log.yaml"

    @property
    def log_file(self) -> str:
        return f"worker-{self.name}.log"


def postgres_args(url: str) -> dict[str, Any]:
    """psycopg2 connection arguments from a ``postgresql://USER[:PASS]@HOST[:PORT]/DB``
    URL (what Synapse's ``database.args`` take)."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"} or not parts.path.strip("/"):
        raise ValueError(f"expected postgresql://USER@HOST[:PORT]/DATABASE, not {url!r}")
    args: dict[str, Any] = {
        "user": unquote(parts.username or "postgres"),
        "database": unquote(parts.path.strip("/")),
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "cp_min": 5,
        "cp_max": 10,
    }
    if parts.password:
        args["password"] = unquote(parts.password)
    return args


@dataclass(frozen=True)
class WorkerLayout:
    """How many workers of each kind, where they listen, and what they share."""

    database_url: str
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_password: str | None = None
    event_persisters: int = 4
    generic_workers: int = 1
    federation_senders: int = 1
    host: str = "127.0.0.1"
    base_port: int = 8100

    @property
    def replication_port(self) -> int:
        """The main process's replication listener."""
        return self.base_port

    def workers(self) -> list[Worker]:
        kinds: list[tuple[WorkerKind, int]] = [
            ("event_persister", self.event_persisters),
            ("generic_worker", self.generic_workers),
            ("federation_sender", self.federation_senders),
        ]
        out: list[Worker] = []
        port = self.base_port + 1
        for kind, count in kinds:
            for i in range(1, count + 1):
                out.append(Worker(f"{kind}{i}", kind, port))
                port += 1
        return out

    def of_kind(self, kind: WorkerKind) -> list[Worker]:
        return [w for w in self.workers() if w.kind == kind]

    def listen_addresses(self) -> list[tuple[str, int]]:
        return [(self.host, self.replication_port)] + [(self.host, w.port) for w in self.workers()]

    def health_urls(self) -> dict[str, str]:
        """``/health`` of every worker's listener, by instance name."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return {w.name: f"http://{host}:{w.port}/health" for w in self.workers()}

    # --- configuration --------------------------------------------------------------
    def shared_config(self) -> dict[str, Any]:
        """Merged into the main process's overrides (which every worker reads too)."""
        instance_map: dict[str, Any] = {MAIN: {"host": self.host, "port": self.replication_port}}
        for w in self.workers():
            instance_map[w.name] = {"host": self.host, "port": w.port}
        redis: dict[str, Any] = {
            "enabled": True,
            "host": self.redis_host,
            "port": self.redis_port,
        }
        if self.redis_password:
            redis["password"] = self.redis_password
        generic = self.of_kind("generic_worker")[0].name
        return {
            "database": {"name": "psycopg2", "args": postgres_args(self.database_url)},
            "redis": redis,
            "instance_map": instance_map,
            "stream_writers": {"events": [w.name for w in self.of_kind("event_persister")]},
            "federation_sender_instances": [w.name for w in self.of_kind("federation_sender")],
            "update_user_directory_from_worker": generic,
            "pusher_instances": [generic],
            "notify_appservices_from_worker": generic,
        }

    def main_listener(self) -> dict[str, Any]:
        """The replication listener added to the main process."""
        return {
            "port": self.replication_port,
            "bind_addresses": [self.host],
            "type": "http",
            "resources": [{"names": ["replication"]}],
        }

    def worker_config(self, worker: Worker, log_config_path: str) -> dict[str, Any]:
        names = ["replication"]
        if worker.kind == "generic_worker":
            names = ["client", "replication"]
        return {
            "worker_app": "synapse.app.generic_worker",
            "worker_name": worker.name,
            "worker_listeners": [
                {
                    "type": "http",
                    "port": worker.port,
                    "bind_addresses": [self.host],
                    "resources": [{"names": names}],
                }
            ],
            "worker_log_config": log_config_path,
        }
