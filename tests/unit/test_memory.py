"""glibc's allocator tuned for the service (forum.memory)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from forum.memory import _libc, release_free_memory, resident_mb

glibc = pytest.mark.skipif(_libc() is None, reason="not glibc")


def _run(code: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


ARENAS = (
    "import threading\n"
    "from forum.memory import limit_malloc_arenas\n"
    "print(limit_malloc_arenas())\n"
    "def work():\n"
    "    [bytearray(200) for _ in range(2000)]\n"
    "threads = [threading.Thread(target=work) for _ in range(6)]\n"
    "[t.start() for t in threads]; [t.join() for t in threads]\n"
    "heaps = 0\n"
    "for line in open('/proc/self/maps'):\n"
    "    start = int(line.split('-')[0], 16)\n"
    "    if start % (64 << 20) == 0 and line.split()[1].startswith('rw'):\n"
    "        heaps += 1\n"  # each thread arena is a 64 MB-aligned heap
    "print(heaps)\n"
)


@glibc
def test_threads_share_the_limited_arenas() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    limited, arenas = _run(ARENAS, env).split()
    assert limited == "True"
    assert int(arenas) <= 1  # the main arena is the heap; at most one other


@glibc
def test_the_environment_wins() -> None:
    env = {**os.environ, "MALLOC_ARENA_MAX": "4"}
    assert _run(ARENAS, env).split()[0] == "False"


def test_release_and_resident() -> None:
    assert isinstance(release_free_memory(), bool)
    assert resident_mb() > 1.0
