"""The service's figures for Prometheus (``GET /metrics``).

One :class:`Metrics` per :class:`~forum.app.Service`, on its own registry (not the
global default one: tests start several services in one process). What is counted as it
happens (homeserver requests with their latency, web requests, spam-check calls) uses
prometheus-client's counters and histograms; what is read at scrape time (events handled
and sync lag per bot, the outbox, the health of background tasks) comes from a collector
over the live objects, refreshed by :meth:`Metrics.refresh` just before each scrape.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from forum.gateway import GatewayStats
from forum.storage import Lease, Outbox, utcnow
from forum.tasks import TaskSupervisor

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROLES = ("active", "standby", "stepped-down")

#: latency buckets of homeserver requests, in seconds
ACTION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class _Snapshot:
    """What is read from the database at scrape time."""

    outbox_depth: int = 0
    outbox_oldest_age: float = 0.0


@dataclass(eq=False)
class _LiveCollector(Collector):
    tasks: TaskSupervisor
    bots: dict[str, GatewayStats] = field(default_factory=dict)
    snapshot: _Snapshot = field(default_factory=_Snapshot)
    started: float = field(default_factory=time.time)
    lease: Lease | None = None

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        events = CounterMetricFamily(
            "forum_events_handled", "Events handed to a bot's handlers.", labels=["bot"]
        )
        failures = CounterMetricFamily(
            "forum_handler_failures", "Handler calls that raised.", labels=["bot"]
        )
        lag = GaugeMetricFamily(
            "forum_sync_lag_seconds",
            "Seconds since the bot's last /sync was handled (its token stored).",
            labels=["bot"],
        )
        for bot, stats in sorted(self.bots.items()):
            events.add_metric([bot], stats.events_dispatched)
            failures.add_metric([bot], stats.handler_failures)
            lag.add_metric([bot], now - (stats.last_synced or self.started))
        yield events
        yield failures
        yield lag
        yield GaugeMetricFamily(
            "forum_outbox_depth",
            "Outbox items waiting to be carried out (not done, not abandoned).",
            value=self.snapshot.outbox_depth,
        )
        yield GaugeMetricFamily(
            "forum_outbox_oldest_age_seconds",
            "Age of the oldest item waiting in the outbox (0 when none waits).",
            value=self.snapshot.outbox_oldest_age,
        )
        healthy = GaugeMetricFamily(
            "forum_task_healthy",
            "1 when the background task is not stale, else 0.",
            labels=["task", "critical"],
        )
        last = GaugeMetricFamily(
            "forum_task_last_success_timestamp_seconds",
            "Unix time of the task's last successful iteration (0: none yet).",
            labels=["task"],
        )
        errors = CounterMetricFamily(
            "forum_task_errors", "Failed iterations of the background task.", labels=["task"]
        )
        for name, health in sorted(self.tasks.health.items()):
            healthy.add_metric([name, str(health.critical).lower()], 0 if health.stale(now) else 1)
            last.add_metric([name], health.last_success or 0)
            errors.add_metric([name], health.errors)
        yield healthy
        yield last
        yield errors
        if self.lease is not None:
            role = GaugeMetricFamily(
                "forum_role",
                "1 for this process's role: active (holds the service lease and acts), "
                "standby (waits for it) or stepped-down (lost it).",
                labels=["role"],
            )
            for name in ROLES:
                role.add_metric([name], 1 if self.lease.role == name else 0)
            yield role
            yield GaugeMetricFamily(
                "forum_lease_token",
                "The fencing token of the service lease as last read (grows at each takeover).",
                value=self.lease.current.token if self.lease.current else 0,
            )


class Metrics:
    """The service's metrics on its own registry."""

    def __init__(self, tasks: TaskSupervisor) -> None:
        self.registry = CollectorRegistry()
        self._live = _LiveCollector(tasks)
        self.registry.register(self._live)
        self.actions = Counter(
            "forum_actions",
            "Requests to the homeserver, by bot, kind and outcome.",
            ["bot", "kind", "outcome"],
            registry=self.registry,
        )
        self.action_seconds = Histogram(
            "forum_action_seconds",
            "Latency of requests to the homeserver (retries included), by kind.",
            ["kind"],
            buckets=ACTION_BUCKETS,
            registry=self.registry,
        )
        self.spam_checks = Counter(
            "forum_spam_check_calls",
            "Calls of the homeserver's spam checker to the forum.",
            registry=self.registry,
        )
        self.spam_refusals = Counter(
            "forum_spam_check_refusals",
            "Spam checks the forum refused, by callback and rule.",
            ["callback", "rule"],
            registry=self.registry,
        )
        self.spam_check_timeouts = Counter(
            "forum_spam_check_timeouts",
            "Spam checks not decided within the deadline (let through).",
            registry=self.registry,
        )
        self.spam_check_seconds = Histogram(
            "forum_spam_check_seconds",
            "Time the forum took to answer a spam check.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self.web_requests = Counter(
            "forum_web_requests",
            "Requests to the web app, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )

    def watch_bot(self, bot: str, stats: GatewayStats) -> None:
        """Count the events and sync lag of ``bot`` (its gateway's stats)."""
        self._live.bots[bot] = stats

    def watch_lease(self, lease: Lease) -> None:
        """Show this process's role (active, standby, stepped-down)."""
        self._live.lease = lease

    def observe_action(self, bot: str, kind: str, seconds: float, outcome: str) -> None:
        self.actions.labels(bot, kind, outcome).inc()
        self.action_seconds.labels(kind).observe(seconds)

    def observe_web(self, route: str, status: int) -> None:
        self.web_requests.labels(route, str(status)).inc()

    async def refresh(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        """Read what lives in the database (the outbox) for the next scrape."""
        async with sessionmaker() as s:
            outbox = Outbox(s)
            depth = await outbox.pending_count()
            oldest = await outbox.oldest_pending()
        age = max(0.0, (utcnow() - oldest).total_seconds()) if oldest else 0.0
        self._live.snapshot = _Snapshot(depth, age)

    def render(self) -> bytes:
        return generate_latest(self.registry)
