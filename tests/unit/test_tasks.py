"""The task supervisor: an iteration that fails is logged, recorded and tried again; the
loop never ends on an error; a critical task with no success for too long is stale."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import pytest
from sqlalchemy.exc import OperationalError

from forum.tasks import TaskHealth, TaskSupervisor


async def test_a_failing_iteration_is_retried_and_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = TaskSupervisor(retry_initial=0.01, retry_cap=0.02)
    calls = 0
    done = asyncio.Event()

    async def step() -> float:
        nonlocal calls
        calls += 1
        if calls in (2, 3):
            raise RuntimeError(f"failure {calls}")
        if calls >= 5:
            done.set()
        return 0.0

    with caplog.at_level(logging.ERROR, logger="forum.tasks"):
        tasks.every("test:step", step, critical=True, stale_after=60)
        await asyncio.wait_for(done.wait(), 5)
    health = tasks.health["test:step"]
    assert health.errors == 2
    assert health.last_error == "RuntimeError: failure 3"
    assert health.last_success is not None
    assert health.last_error_at is not None
    assert not tasks.failed.is_set()
    assert tasks.unhealthy() == []
    logged = [r.getMessage() for r in caplog.records]
    assert any("test:step failed (2 in a row)" in m for m in logged)
    await tasks.stop()
    assert tasks.names == []


def test_a_critical_task_without_success_is_stale() -> None:
    health = TaskHealth("t", critical=True, stale_after=10, started=1000.0)
    assert not health.stale(now=1005.0)
    assert health.stale(now=1011.0)
    health.last_success = 1010.0
    assert not health.stale(now=1015.0)
    assert health.as_dict(now=1015.0)["stale"] is False
    never = TaskHealth("n", critical=True, stale_after=None, started=0.0)
    assert not never.stale(now=1e9)


async def test_a_one_shot_call_is_retried_after_a_database_error_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``retried``: a database error is logged and the call tried again with backoff until
    it succeeds; an error that will not go away by itself is raised at once."""
    tasks = TaskSupervisor(retry_initial=0.01, retry_cap=0.02)
    calls = 0

    async def locked_twice() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise OperationalError("BEGIN IMMEDIATE", {}, sqlite3.OperationalError("locked"))
        return "done"

    with caplog.at_level(logging.WARNING, logger="forum.tasks"):
        assert await asyncio.wait_for(tasks.retried("command $x", locked_twice), 5) == "done"
    assert calls == 3
    logged = [r.getMessage() for r in caplog.records]
    assert any("command $x failed (2 in a row): OperationalError" in m for m in logged), logged

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug")

    calls = 0
    with pytest.raises(ValueError, match="a bug"):
        await tasks.retried("command $y", broken)
    assert calls == 1
    assert 0.01 <= tasks.backoff(1) <= 0.02
    assert 0.02 <= tasks.backoff(9) <= 0.03
