"""Creating a PostgreSQL database when it is missing (the scaled profile's first start)."""

from __future__ import annotations

import logging
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)


class DatabaseUnavailable(RuntimeError):
    """The PostgreSQL server cannot be reached, or the database cannot be created."""


def _split(url: str) -> tuple[dict[str, object], str]:
    """asyncpg's connection arguments for the server of ``url``, and the database name."""
    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    name = unquote(parts.path.strip("/"))
    if parts.scheme not in {"postgres", "postgresql"} or not name:
        raise DatabaseUnavailable(f"expected postgresql://USER@HOST[:PORT]/DATABASE: {url!r}")
    args: dict[str, object] = {
        "user": unquote(parts.username or "postgres"),
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
    }
    if parts.password:
        args["password"] = unquote(parts.password)
    return args, name


async def ensure_database(url: str, *, c_locale: bool = False) -> bool:
    """Create the database of ``url`` unless it exists (``c_locale``: with the C collation
    and ctype Synapse requires). True if it was created. Connects to the server's
    ``postgres`` database to do so, as the URL's user."""
    import asyncpg

    args, name = _split(url)
    where = f"{args['host']}:{args['port']}"
    try:
        conn = await asyncpg.connect(database="postgres", timeout=10, **args)
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"cannot reach PostgreSQL at {where}: {exc}") from exc
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        options = " ENCODING 'UTF8'"
        if c_locale:
            options += " LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        log.info("creating the PostgreSQL database %s on %s", name, where)
        await conn.execute(f"CREATE DATABASE {quoted}{options}")
        return True
    except asyncpg.DuplicateDatabaseError:
        return False  # created meanwhile by another start
    except asyncpg.PostgresError as exc:
        raise DatabaseUnavailable(f"cannot create the database {name} on {where}: {exc}") from exc
    finally:
        await conn.close()
