"""One retry policy for talking to a homeserver, built on tenacity.

:func:`retrying` builds the policy; :func:`retry_call` runs one call under it::

    policy = retrying(max_retries=8, on_retry=lambda exc, wait: log.info(...))
    result = await retry_call(policy, lambda: gateway.get_state(room_id))

It retries only what is worth retrying (by default a rate limit or an unreachable
homeserver), waits what a rate limit asks (``retry_after``, from ``retry_after_ms``) and an
exponential backoff with jitter after anything else, and re-raises the last error once the
retries are spent. ``sleep`` lets the caller cut a wait short (on stop, say).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
)
from tenacity.wait import wait_base, wait_exponential, wait_random

from forum.errors import HomeserverUnavailable, RateLimited

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """A failure that may go away: rate limited, or the homeserver unreachable / 5xx."""
    return isinstance(exc, RateLimited | HomeserverUnavailable)


def is_rate_limit(exc: BaseException) -> bool:
    return isinstance(exc, RateLimited)


def is_database_error(exc: BaseException) -> bool:
    """A failure of the database (locked, unreachable, a dropped connection)."""
    return isinstance(exc, SQLAlchemyError | OSError)


def is_recoverable(exc: BaseException) -> bool:
    """A failure that may go away by itself: the database's or a transient homeserver's."""
    return is_database_error(exc) or is_transient(exc)


def backoff(attempt: int, initial: float, cap: float) -> float:
    """The wait before try ``attempt + 1`` after ``attempt`` failures, as
    :class:`WaitRetryAfter` computes it for a call retried in place: ``initial`` doubling up
    to ``cap`` seconds, plus up to ``initial`` seconds of jitter (for work that is put back
    in a queue rather than retried in place)."""
    return min(initial * 2.0 ** max(attempt - 1, 0), cap) + random.uniform(0, initial)  # noqa: S311


class WaitRetryAfter(wait_base):
    """Wait what a rate limit asks; after anything else an exponential backoff (``initial``
    doubling up to ``cap`` seconds) with up to ``initial`` seconds of jitter."""

    def __init__(self, initial: float, cap: float) -> None:
        self._backoff = wait_exponential(multiplier=initial, max=cap) + wait_random(0, initial)

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, RateLimited):
            return exc.retry_after
        return self._backoff(retry_state)


def retrying(
    max_retries: int | None,
    *,
    retryable: Callable[[BaseException], bool] = is_transient,
    initial: float = 0.5,
    cap: float = 30.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> AsyncRetrying:
    """A policy that retries ``retryable`` errors ``max_retries`` times at most (``None``:
    until the call succeeds), then re-raises the last one.

    ``on_retry(error, seconds)`` is called before each wait (to count or log it).
    """

    def before_sleep(retry_state: RetryCallState) -> None:
        outcome, action = retry_state.outcome, retry_state.next_action
        exc = outcome.exception() if outcome is not None else None
        if on_retry is not None and exc is not None and action is not None:
            on_retry(exc, action.sleep)

    return AsyncRetrying(
        retry=retry_if_exception(retryable),
        stop=stop_never if max_retries is None else stop_after_attempt(max_retries + 1),
        wait=WaitRetryAfter(initial, cap),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


async def retry_call(policy: AsyncRetrying, call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call`` under ``policy``; return its result or raise its last error."""
    async for attempt in policy:
        with attempt:
            return await call()
    raise AssertionError("unreachable: the policy re-raises the last error")
