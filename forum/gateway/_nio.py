"""matrix-nio, imported without the database drivers its dependencies probe for.

nio keeps its end-to-end encryption store in SQLite through peewee, and peewee imports at
its own import every database driver it finds installed: psycopg2 (which Synapse's
PostgreSQL support installs beside the forum) costs the service 4 MB of resident memory
for nothing. pycryptodome (nio's attachment cipher) likewise prefers cffi, whose C parser
and parsed declarations cost 1.5 MB, over its ctypes back-end, which does the same work.
While nio is imported here, first of anything in the gateway, those modules are hidden
(an ``ImportError`` for whoever probes); afterwards they import normally again.
"""

from __future__ import annotations

import importlib
import sys

#: Modules nio's dependencies probe for at import and that the forum never needs there.
UNUSED = ("psycopg2", "psycopg2cffi", "psycopg", "pymysql", "MySQLdb", "cffi")


def import_without(module: str, hidden: tuple[str, ...] = UNUSED) -> None:
    """Import ``module`` with the modules named in ``hidden`` unimportable meanwhile
    (those already imported stay as they are)."""
    blocked = [name for name in hidden if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # "import name" raises
    try:
        importlib.import_module(module)
    finally:
        for name in blocked:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


import_without("nio")
