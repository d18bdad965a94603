"""Background work with an owner: tasks are kept, their failures logged with their name,
and all are cancelled on stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class TaskSupervisor:
    """Starts named background tasks, keeps references, logs failures, cancels on stop."""

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[Any], str] = {}
        self.failed = asyncio.Event()
        self.failures: list[tuple[str, BaseException]] = []

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
                if critical:
                    self.failed.set()

        task.add_done_callback(_done)
        return task

    @property
    def names(self) -> list[str]:
        return sorted(self._tasks.values())

    async def stop(self, timeout: float = 10) -> None:  # noqa: ASYNC109 - grace period
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                log.warning("task %s did not stop within %.0fs", t.get_name(), timeout)
        self._tasks.clear()
