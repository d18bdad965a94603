"""What the service's process loads: modules it never uses stay out of its memory (the
service's resident memory target, benchmarks/moderation.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

#: never needed by a running service: Alembic (the migrations run in a child process) and
#: what it pulls in; the drivers and parsers nio's dependencies probe for
NOT_LOADED = ("alembic", "mako", "pygments", "psycopg2", "cffi", "pycparser")


def loaded_by(code: str, modules: tuple[str, ...] = NOT_LOADED) -> dict[str, object]:
    script = (
        f"import json, sys\n{code}\n"
        f"print(json.dumps({{'loaded': sorted(m for m in {modules!r} if m in sys.modules)}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_the_service_modules_load_nothing_unused() -> None:
    assert loaded_by("import forum.app\nforum.app.default_features()") == {"loaded": []}


def test_hidden_modules_import_again_after_nio() -> None:
    """The drivers hidden from nio's import are importable afterwards (PostgreSQL's
    psycopg2 by whoever needs it)."""
    pytest.importorskip("psycopg2")
    assert loaded_by("import forum.gateway\nimport psycopg2") == {"loaded": ["psycopg2"]}


def test_a_service_on_sqlite_does_not_load_asyncpg(tmp_path: Path) -> None:
    """asyncpg's exception classes are caught only where asyncpg is loaded (PostgreSQL)."""
    code = (
        "import asyncio\n"
        "from forum.storage import Database, Lease\n"
        "async def main():\n"
        f"    db = await Database.open('sqlite:///{tmp_path / 'forum.db'}', migrate_apart=True)\n"
        "    assert await db.ping()\n"
        "    lease = Lease(db.engine, 'probe', seconds=30, poll=1)\n"
        "    assert await lease.try_acquire()\n"
        "    await lease.release()\n"
        "    await db.close()\n"
        "asyncio.run(main())"
    )
    assert loaded_by(code, ("asyncpg", *NOT_LOADED)) == {"loaded": []}
