"""The migration's child process: ``python -m forum.storage.migrate``, given
``{"url": ..., "migrations": ...}`` as JSON on its standard input.

Started by ``Database.open(url, migrate_apart=True)`` (the service), it migrates the
database to the heads and exits, so that Alembic's modules live only here. Its messages go
to its standard error, which the service logs; a failure exits non-zero.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path


async def _migrate(url: str) -> str:
    from forum.storage.db import Database

    database = await Database.open(url, migrate=False)
    try:
        before = await database.current_revisions()
    finally:
        await database.close()
    database = await Database.open(url)
    try:
        after = await database.current_revisions()
    finally:
        await database.close()
    return (
        f"migrated the database from {', '.join(sorted(before)) or 'nothing'} "
        f"to {', '.join(sorted(after))}"
    )


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    request = json.loads(sys.stdin.read())
    from forum.storage import db

    db.MIGRATIONS_DIR = Path(request["migrations"])  # the parent's (tests may point elsewhere)
    try:
        done = asyncio.run(_migrate(request["url"]))
    except Exception as exc:  # the child's boundary: the parent shows the message
        from forum.settings import redact

        print(f"{type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
        return 1
    print(done, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
