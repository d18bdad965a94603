"""Background work with an owner: tasks are kept, their failures logged with their name,
and all are cancelled on stop.

Two kinds of work:

- :meth:`TaskSupervisor.start`: a one-shot task (a command, an entry); its failure is
  logged and, for a ``critical`` task, sets :attr:`TaskSupervisor.failed`.
- :meth:`TaskSupervisor.every`: a loop of isolated iterations (the digest schedule, timed
  mutes, the charter's grace period, admin reports, the export, housekeeping). A failed
  iteration is logged with the task's name and retried after a backoff (the one policy
  of :mod:`forum.retry`); it never ends the loop. Its :class:`TaskHealth` (last success,
  last error) is shown by ``/healthz`` and ``/metrics``; a ``critical`` task with no
  success for ``stale_after`` seconds makes ``/healthz`` answer 503.

One-shot work that meets a failure which may go away (the database locked longer than
its busy timeout, the homeserver unreachable) is tried again with the same backoff in
the running process, rather than at the next start: :meth:`TaskSupervisor.retried` retries
a call in place (a moderator's command), :meth:`TaskSupervisor.backoff` gives the wait
for work put back in a queue (a person's entry).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from forum.retry import backoff, is_recoverable, retry_call, retrying

log = logging.getLogger(__name__)

#: a failed iteration is tried again after this many seconds, doubling up to the cap
RETRY_INITIAL_SECONDS = 1.0
RETRY_CAP_SECONDS = 300.0

Step = Callable[[], Awaitable[float | None]]
T = TypeVar("T")


def _any_error(exc: BaseException) -> bool:
    return isinstance(exc, Exception)


@dataclass(eq=False)
class TaskHealth:
    """What ``/healthz`` and ``/metrics`` show of one supervised task."""

    name: str
    critical: bool = False
    stale_after: float | None = None
    """Seconds without a success after which the task counts as stale (None: never)."""
    started: float = field(default_factory=time.time)
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    errors: int = 0
    successes: int = 0

    def ok(self) -> None:
        self.last_success = time.time()
        self.successes += 1

    def failed(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"[:500]
        self.last_error_at = time.time()
        self.errors += 1

    def stale(self, now: float | None = None) -> bool:
        """No success for ``stale_after`` seconds (counted from the start before the first)."""
        if self.stale_after is None:
            return False
        now = time.time() if now is None else now
        return now - (self.last_success or self.started) > self.stale_after

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        def iso(t: float | None) -> str | None:
            return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()

        return {
            "critical": self.critical,
            "stale": self.stale(now),
            "last_success": iso(self.last_success),
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
            "errors": self.errors,
        }


class TaskSupervisor:
    """Starts named background tasks, keeps references, logs failures, cancels on stop."""

    def __init__(
        self,
        *,
        retry_initial: float = RETRY_INITIAL_SECONDS,
        retry_cap: float = RETRY_CAP_SECONDS,
    ) -> None:
        self._tasks: dict[asyncio.Task[Any], str] = {}
        self.failed = asyncio.Event()
        self.failures: list[tuple[str, BaseException]] = []
        self.health: dict[str, TaskHealth] = {}
        self.retry_initial = retry_initial
        self.retry_cap = retry_cap

    def start(
        self, name: str, coro: Coroutine[Any, Any, Any], *, critical: bool = False
    ) -> asyncio.Task[Any]:
        """Run ``coro`` in the background. A failure of a ``critical`` task sets ``failed``."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks[task] = name

        def _done(t: asyncio.Task[Any]) -> None:
            self._tasks.pop(t, None)
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None:
                log.error("background task %s failed", name, exc_info=exc)
                self.failures.append((name, exc))
                del self.failures[:-100]  # the latest ones are enough
                if critical:
                    self.failed.set()

        task.add_done_callback(_done)
        return task

    def track(
        self, name: str, *, critical: bool = False, stale_after: float | None = None
    ) -> TaskHealth:
        """The health record of ``name`` (created on first use), for work that reports
        its successes itself (a sync loop)."""
        health = self.health.get(name)
        if health is None:
            health = self.health[name] = TaskHealth(name, critical, stale_after)
        return health

    def every(
        self,
        name: str,
        step: Step,
        *,
        critical: bool = False,
        stale_after: float | None = None,
        retry_cap: float | None = None,
    ) -> asyncio.Task[Any]:
        """Run ``step`` again and again until stopped: after a success, wait the seconds it
        returns (None: call it again at once; a step may wait for its own wake-up); after
        a failure, log it with ``name``, record it and call it again after a backoff
        (``retry_initial`` doubling up to ``retry_cap``, the supervisor's unless given,
        with jitter)."""
        health = self.track(name, critical=critical, stale_after=stale_after)

        in_a_row = 0

        def failed(exc: BaseException, wait: float) -> None:
            nonlocal in_a_row
            in_a_row += 1
            health.failed(exc)
            log.error(
                "background task %s failed (%d in a row); trying again in %.1f s",
                name,
                in_a_row,
                wait,
                exc_info=exc,
            )

        async def loop() -> None:
            nonlocal in_a_row
            while True:
                policy = retrying(
                    None,
                    retryable=_any_error,
                    initial=self.retry_initial,
                    cap=self.retry_cap if retry_cap is None else retry_cap,
                    on_retry=failed,
                )
                wait = await retry_call(policy, step)
                in_a_row = 0
                health.ok()
                await asyncio.sleep(wait or 0)

        return self.start(name, loop(), critical=critical)

    async def retried(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        *,
        retryable: Callable[[BaseException], bool] = is_recoverable,
    ) -> T:
        """Run ``call`` until it succeeds: a ``retryable`` failure is logged with ``what``
        and tried again after the supervisor's backoff (as a failed iteration of
        :meth:`every`); any other failure is raised. Cancellation (the service stopping)
        goes through."""
        in_a_row = 0

        def failed(exc: BaseException, wait: float) -> None:
            nonlocal in_a_row
            in_a_row += 1
            log.warning(
                "%s failed (%d in a row): %s: %s; trying again in %.1f s",
                what,
                in_a_row,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                wait,
            )

        policy = retrying(
            None,
            retryable=retryable,
            initial=self.retry_initial,
            cap=self.retry_cap,
            on_retry=failed,
        )
        return await retry_call(policy, call)

    def backoff(self, attempt: int) -> float:
        """The wait before trying again work that failed ``attempt`` times in a row (the
        policy of :meth:`every` and :meth:`retried`)."""
        return backoff(attempt, self.retry_initial, self.retry_cap)

    def unhealthy(self, now: float | None = None) -> list[str]:
        """The critical tasks that are stale."""
        return sorted(h.name for h in self.health.values() if h.critical and h.stale(now))

    @property
    def names(self) -> list[str]:
        return sorted(self._tasks.values())

    def cancel_all(self) -> None:
        """Cancel every task now, without waiting (stepping down: nothing may act any
        more), except the one calling (it is raising already); :meth:`stop` still waits
        for them."""
        current = asyncio.current_task()
        for t in list(self._tasks):
            if t is not current:
                t.cancel()

    async def stop(self, timeout: float = 10) -> None:  # noqa: ASYNC109 - grace period
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                log.warning("task %s did not stop within %.0fs", t.get_name(), timeout)
        self._tasks.clear()
