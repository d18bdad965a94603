"""The service's resident memory: glibc's allocator kept to few arenas, freed pages
given back to the system.

glibc gives every thread that allocates its own malloc arena (up to eight per core), and
keeps what each one freed: the threads of aiosqlite (one per pooled connection) and of the
default executor left 1 to 1.5 MB each in their arenas. The service does its work on one
event loop; its threads only wait on SQLite and files, so two arenas are plenty.
``MALLOC_ARENA_MAX`` in the environment, when set, wins. Elsewhere than glibc, nothing is
done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: mallopt's parameter for the highest number of arenas (glibc's malloc.h)
M_ARENA_MAX = -8
#: arenas the service allows (the main thread's and one shared by all the others)
SERVICE_ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # not glibc
    return libc


def limit_malloc_arenas(arenas: int = SERVICE_ARENAS) -> bool:
    """Let glibc create at most ``arenas`` malloc arenas from now on (threads started later
    share them), unless ``MALLOC_ARENA_MAX`` is set. Returns whether the limit was set.
    Call it early, before the process has started threads."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


def release_free_memory() -> bool:
    """Give the pages glibc holds free (in every arena) back to the system
    (``malloc_trim``). Returns whether any memory was released."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))


def resident_mb() -> float:
    """This process's resident memory (``VmRSS``), in MB; 0.0 where /proc is missing."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
