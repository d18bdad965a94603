"""Per-person state in memory that cannot grow without bound (issue #11, point 7).

:class:`LRUDict` forgets the least recently used keys past ``maxsize``;
:class:`LockTable` hands out one :class:`asyncio.Lock` per key and forgets the ones
nobody holds or waits for, past ``maxsize`` (a lock in use is never forgotten, so two
holders of "the" lock of one person can never exist).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: what a per-person map keeps by default: the people active lately, not everyone ever seen
DEFAULT_MAXSIZE = 10_000


class LRUDict(MutableMapping[K, V]):
    """A dict that keeps at most ``maxsize`` items, forgetting the least recently used
    (read or written) first."""

    def __init__(self, maxsize: int = DEFAULT_MAXSIZE) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()

    def __getitem__(self, key: K) -> V:
        value = self._data[key]
        self._data.move_to_end(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def __delitem__(self, key: K) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data


class LockTable:
    """One lock per key; at most ``maxsize`` kept unless more are in use at once (a held
    or awaited lock is never forgotten)."""

    def __init__(self, maxsize: int = DEFAULT_MAXSIZE) -> None:
        self.maxsize = maxsize
        self._locks: OrderedDict[str, asyncio.Lock] = OrderedDict()

    def __call__(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
            self._forget_idle(keep=key)
        self._locks.move_to_end(key)
        return lock

    def _forget_idle(self, keep: str) -> None:
        excess = len(self._locks) - self.maxsize
        if excess <= 0:
            return
        for key in list(self._locks):  # oldest first
            if excess <= 0:
                break
            lock = self._locks[key]
            if key != keep and not lock.locked() and not _has_waiters(lock):
                del self._locks[key]
                excess -= 1

    def __len__(self) -> int:
        return len(self._locks)


def _has_waiters(lock: asyncio.Lock) -> bool:
    waiters = getattr(lock, "_waiters", None)
    return bool(waiters)
