"""The database handle: async engine, session maker, migrations and health.

``Database.open(url)`` is the only way the service gets a database: it builds the async
engine (aiosqlite or asyncpg), refuses a schema newer than this code and, unless told
otherwise, runs ``alembic upgrade heads``. Nothing here runs at import time.

Alembic is imported only to migrate: whether the database is at the heads of the packaged
migrations is read from ``alembic_version`` and from the migration files themselves
(:func:`head_revisions`), so a service whose database is up to date never loads Alembic
(and Mako, and Pygments: 11 MB). The service migrates in a short child process
(``Database.open(url, migrate_apart=True)``, :mod:`forum.storage.migrate`).
"""

from __future__ import annotations

import ast
import asyncio
import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import URL, Connection, event, inspect, make_url, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    AsyncSessionTransaction,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool, StaticPool

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: the directory holding the ``forum`` package (the migration's child process imports it)
_SOURCE_ROOT = Path(__file__).resolve().parents[2]

# Serialises concurrent migrations of one PostgreSQL database (any constant will do).
_PG_MIGRATION_LOCK_ID = 0x666F72756D  # "forum"

SQLITE_BUSY_TIMEOUT_MS = 5000
#: SQLite's page cache per connection, in KiB (its default: 2,000). The pool keeps five
#: connections, each filling its own cache with the pages it touched: 10 MB of resident
#: memory at worst for pages the system's file cache holds anyway.
SQLITE_CACHE_KIB = 512

#: Execution option of a connection that will write (SQLite: ``BEGIN IMMEDIATE``).
WRITE_OPTION = "forum_write"


class StorageError(Exception):
    """Base class of the storage layer's own errors."""


class MigrationFailed(StorageError):
    """The migration's child process failed (its last messages are in the error)."""


class DatabaseTooNew(StorageError):
    """The database was migrated by a newer version of the code than this one."""

    def __init__(self, unknown: set[str]) -> None:
        self.unknown = frozenset(unknown)
        names = ", ".join(sorted(unknown))
        super().__init__(
            f"the database is at revision(s) {names}, unknown to this version of forum: "
            "it was migrated by a newer release; upgrade forum instead of downgrading"
        )


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and pick the async driver: ``sqlite`` -> aiosqlite, ``postgresql`` ->
    asyncpg. Other back-ends are refused."""
    parsed = make_url(url)
    name = parsed.drivername
    if name == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif name in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    if parsed.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise ValueError(
            f"unsupported database URL scheme {name!r}: "
            "expected sqlite:///path or postgresql://user@host/db"
        )
    return parsed


def _is_sqlite_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database


def create_engine(url: str | URL) -> AsyncEngine:
    """Build the async engine for ``url`` without connecting.

    SQLite connections get WAL journaling, foreign keys and a busy timeout; PostgreSQL
    gets a bounded, pre-pinged pool and a connect timeout.
    """
    parsed = normalize_url(url)
    engine: AsyncEngine
    if parsed.get_backend_name() == "sqlite":
        if _is_sqlite_memory(parsed):
            engine = create_async_engine(parsed, poolclass=StaticPool)
        else:
            engine = create_async_engine(parsed)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
    else:
        engine = create_async_engine(
            parsed,
            pool_size=5,
            max_overflow=10,
            pool_timeout=30,
            pool_recycle=1800,
            pool_pre_ping=True,
            connect_args={"timeout": 10},
        )
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, start transactions (see _sqlite_on_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    """Start a SQLite transaction: ``BEGIN IMMEDIATE`` for a unit of work that writes,
    a plain (deferred) ``BEGIN`` for one that only reads.

    A writer is a session opened with ``session.begin()`` (see :class:`ForumSession`) or a
    connection with the :data:`WRITE_OPTION` execution option (migrations): it takes the
    write lock up front, waiting up to the busy timeout, so that it never fails with
    SQLITE_BUSY when it writes after reading (SQLite has a single writer; write units of
    work are short and make no network call). A reader takes no lock: in WAL mode it
    reads its snapshot while a writer commits.
    """
    if connection.get_execution_options().get(WRITE_OPTION):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        connection.exec_driver_sql("BEGIN")


#: Key of the :class:`WriteGuard` in the sessions' ``info``.
GUARD_KEY = "forum_write_guard"
#: Key of a SQLite database's :class:`asyncio.Lock` in the sessions' ``info``: the
#: process's write units of work take turns on it (first come, first served) before they
#: ask SQLite for its write lock.
WRITER_KEY = "forum_sqlite_writer"
#: how long a write unit of work waits for its turn in this process (SQLite)
WRITER_WAIT_SECONDS = 60.0
#: how many times opening waits (busy timeout + 1 s) for another process's SQLite write lock
OPEN_LOCKED_ATTEMPTS = 6


class Fence(Protocol):
    """Checks, in a write's own transaction, that this process may write (the lease)."""

    async def check(self, conn: AsyncConnection) -> None: ...


class WriteGuard:
    """The fence every write unit of work passes first, once armed (the service lease of
    the active process: :mod:`forum.storage.lease`). Unarmed, writes go through as is."""

    def __init__(self) -> None:
        self.fence: Fence | None = None

    def arm(self, fence: Fence) -> None:
        self.fence = fence

    def disarm(self) -> None:
        self.fence = None


class WriterBusy(StorageError, SQLAlchemyError):
    """A write unit of work waited :data:`WRITER_WAIT_SECONDS` for its turn (SQLite)."""


class _WriteTransaction(AsyncSessionTransaction):
    """``async with session.begin():`` a unit of work that writes; on SQLite its
    connection starts with ``BEGIN IMMEDIATE`` (PostgreSQL: an ordinary transaction).
    When the database's :class:`WriteGuard` is armed, its fence is checked first, in the
    same transaction.

    On SQLite the process's writers first take turns on one :class:`asyncio.Lock`: SQLite
    has a single writer, and writers polling its lock through the busy timeout are served
    in no order, so that under load one of them could wait past the timeout and fail with
    "database is locked" (seen once in CI as a forum started). In line, each waits only
    for those before it; the busy timeout is left for other processes."""

    _turn: asyncio.Lock | None = None

    async def start(self, is_ctxmanager: bool = False) -> _WriteTransaction:
        turn = self.session.info.get(WRITER_KEY)
        if isinstance(turn, asyncio.Lock):
            try:
                async with asyncio.timeout(WRITER_WAIT_SECONDS):
                    await turn.acquire()
            except TimeoutError:
                raise WriterBusy(
                    f"no turn to write in {WRITER_WAIT_SECONDS:.0f} s: the process's other "
                    "write units of work held the database"
                ) from None
            self._turn = turn
        try:
            await super().start(is_ctxmanager)
            conn = await self.session.connection(execution_options={WRITE_OPTION: True})
            guard = self.session.info.get(GUARD_KEY)
            if isinstance(guard, WriteGuard) and guard.fence is not None:
                await guard.fence.check(conn)  # raising: the session's close rolls back
        except BaseException:
            self._release()
            raise
        return self

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        try:
            await super().__aexit__(type_, value, traceback)
        finally:
            self._release()

    def _release(self) -> None:
        turn, self._turn = self._turn, None
        if turn is not None:
            turn.release()


class ForumSession(AsyncSession):
    """The service's session: ``async with sessionmaker() as s:`` reads in a plain
    transaction; ``async with sessionmaker() as s, s.begin():`` writes."""

    def begin(self) -> AsyncSessionTransaction:
        return _WriteTransaction(self)


def alembic_config(connection: Connection | None = None, url: str | URL | None = None) -> Config:
    """An Alembic config built in code (no alembic.ini needed) pointing at the packaged
    migrations. With ``connection``, ``env.py`` migrates through it; otherwise through
    an engine built from ``url``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        rendered = normalize_url(url).render_as_string(hide_password=False)
        cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def _revision_graph() -> dict[str, set[str]]:
    """Each revision of the packaged migrations and the revisions it revises, read from
    the files' ``revision`` and ``down_revision`` (without importing Alembic or the
    migrations: literals only, as Alembic's own templates write them); read once (the
    packaged files do not change), and first outside SQLAlchemy's greenlets (see
    :func:`_check_waiting_for_lock`)."""
    return _read_revision_graph(MIGRATIONS_DIR)


@functools.cache
def _read_revision_graph(migrations: Path) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted((migrations / "versions").glob("*.py")):
        if path.name.startswith(("__init__", ".#")):
            continue
        values: dict[str, Any] = {}
        for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                values[target.id] = ast.literal_eval(value)
        revision = values.get("revision")
        if not isinstance(revision, str):
            raise StorageError(f"the migration {path} names no revision")
        down = values.get("down_revision")
        graph[revision] = {down} if isinstance(down, str) else set(down or ())
    return graph


def known_revisions() -> set[str]:
    """Every revision the packaged migrations know, on every branch."""
    return set(_revision_graph())


def head_revisions() -> set[str]:
    """The heads of the packaged migrations (what ``alembic_version`` holds once the
    database is migrated): the revisions no other revision revises."""
    graph = _revision_graph()
    revised = set().union(*graph.values()) if graph else set()
    return set(graph) - revised


def _current_revisions(connection: Connection) -> set[str]:
    """The rows of ``alembic_version`` (none before the first migration)."""
    if not inspect(connection).has_table("alembic_version"):
        return set()
    return set(connection.scalars(text("SELECT version_num FROM alembic_version")))


def _check_and_migrate(connection: Connection, migrate: bool) -> bool:
    """Refuse a database newer than this code; when ``migrate``, bring it to the heads.
    Returns whether it is behind the heads (not migrated)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_MIGRATION_LOCK_ID})
    current = _current_revisions(connection)
    unknown = current - known_revisions()
    if unknown:
        raise DatabaseTooNew(unknown)
    if current == head_revisions():
        return False
    if not migrate:
        return True
    from alembic import command  # only now: a database at the heads never loads Alembic

    command.upgrade(alembic_config(connection), "heads")
    return False


async def _migrate_in_child(url: URL) -> None:
    """Run the migration in a child process (:mod:`forum.storage.migrate`), which exits
    when done: Alembic's modules are never loaded by the calling process. The URL goes
    through a pipe, never the command line (it may hold a password)."""
    request = json.dumps(
        {
            "url": url.render_as_string(hide_password=False),
            "migrations": str(MIGRATIONS_DIR),
        }
    )
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_SOURCE_ROOT), path]))}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "forum.storage.migrate",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        _, err = await child.communicate(request.encode())
    except BaseException:
        if child.returncode is None:
            child.kill()
            await child.wait()
        raise
    output = err.decode(errors="replace").strip()
    if child.returncode != 0:
        tail = "\n".join(output.splitlines()[-10:])
        raise MigrationFailed(
            f"the migration process failed (exit {child.returncode}): {tail or 'no message'}"
        )
    for line in output.splitlines():
        log.info("migration: %s", line)


def _driver_errors() -> tuple[type[Exception], ...]:
    """Driver exceptions SQLAlchemy does not wrap (asyncpg raises its own while connecting,
    for example when the database does not exist).

    Only a loaded asyncpg can raise them: its engine loaded it when it was created. On
    SQLite, asyncpg is not imported for its exception classes (1.5 MB of resident memory)."""
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is None:  # no PostgreSQL engine in this process
        return ()
    return (asyncpg.PostgresError, asyncpg.InterfaceError)


async def _check_waiting_for_lock(engine: AsyncEngine, migrate: bool) -> bool:
    """:func:`_check_and_migrate` in a write transaction, waiting for another process's
    SQLite write lock past the busy timeout (a forum stopping, an operator's command)."""
    # the migrations are parsed here, not inside run_sync's greenlet: CPython 3.11's
    # ast.parse there failed once with "AST constructor recursion depth mismatch"
    _revision_graph()
    for attempt in range(OPEN_LOCKED_ATTEMPTS):
        try:
            async with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
                return await conn.run_sync(_check_and_migrate, migrate)
        except OperationalError as exc:
            if "database is locked" not in str(exc) or attempt + 1 == OPEN_LOCKED_ATTEMPTS:
                raise
            log.warning("database locked by another process; trying again: %s", exc)
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


class Database:
    """An open database: ``engine``, ``sessionmaker`` and health/migration helpers.

    Use :meth:`open`; the constructor only wraps an engine (no I/O).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.guard = WriteGuard()
        """Armed by the active process with its lease: every write is fenced."""
        info: dict[str, Any] = {GUARD_KEY: self.guard}
        if engine.dialect.name == "sqlite":
            info[WRITER_KEY] = asyncio.Lock()
        self.sessionmaker: async_sessionmaker[AsyncSession] = async_sessionmaker(
            engine, expire_on_commit=False, class_=ForumSession, info=info
        )

    @classmethod
    async def open(
        cls, url: str | URL, *, migrate: bool = True, migrate_apart: bool = False
    ) -> Database:
        """Connect, refuse a database newer than this code (:class:`DatabaseTooNew`) and,
        when ``migrate``, run ``alembic upgrade heads`` if the database is behind.

        ``migrate_apart``: migrate in a child process (the long-running service: it never
        loads Alembic); an in-memory SQLite database is migrated in this process."""
        parsed = normalize_url(url)
        if parsed.get_backend_name() == "sqlite" and not _is_sqlite_memory(parsed):
            assert parsed.database is not None
            await asyncio.to_thread(Path(parsed.database).parent.mkdir, parents=True, exist_ok=True)
        apart = migrate and migrate_apart
        if parsed.get_backend_name() == "sqlite" and _is_sqlite_memory(parsed):
            apart = False
        engine = create_engine(parsed)
        try:
            behind = await _check_waiting_for_lock(engine, migrate and not apart)
            if behind and apart:
                try:
                    await _migrate_in_child(parsed)
                except MigrationFailed:
                    await _check_waiting_for_lock(engine, False)  # a newer release's, raced
                    raise
                if await _check_waiting_for_lock(engine, False):
                    raise MigrationFailed("the migration process left the database behind")
        except BaseException:
            await engine.dispose()
            raise
        log.info("database ready at %s", parsed)
        return cls(engine)

    @property
    def url(self) -> URL:
        """The engine's URL (its ``str`` and ``repr`` hide the password)."""
        return self.engine.url

    def __repr__(self) -> str:
        return f"<Database {self.engine.url!r}>"

    async def ping(self, timeout: float = 2.0) -> bool:
        """``SELECT 1`` within ``timeout`` seconds; False on any database error."""
        errors: tuple[type[Exception], ...] = (
            SQLAlchemyError,
            OSError,
            TimeoutError,
            *_driver_errors(),
        )
        try:
            async with asyncio.timeout(timeout), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except errors as exc:
            log.warning("database ping failed: %s: %s", type(exc).__name__, exc)
            return False
        return True

    async def current_revisions(self) -> set[str]:
        """The rows of ``alembic_version`` (one per migration branch head)."""
        async with self.engine.connect() as conn:
            return await conn.run_sync(_current_revisions)

    async def close(self) -> None:
        await self.engine.dispose()


def _admin_engine(url: URL) -> AsyncEngine:
    return create_async_engine(
        url.set(database="postgres"),
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"timeout": 10},
    )


async def create_database_if_missing(url: str | URL) -> bool:
    """Create the PostgreSQL database named in ``url`` (through the ``postgres``
    maintenance database) unless it exists. Returns True if it was created.
    SQLite needs nothing: the file is created on first connection."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "postgresql":
        return False
    name = parsed.database
    if not name:
        raise ValueError("the PostgreSQL URL names no database")
    admin = _admin_engine(parsed)
    try:
        async with admin.connect() as conn:
            exists = await conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            if exists:
                return False
            quoted = admin.dialect.identifier_preparer.quote_identifier(name)
            await conn.execute(text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        await admin.dispose()


async def drop_database(url: str | URL) -> None:
    """Drop the database named in ``url`` if it exists (PostgreSQL: closing any other
    connections to it; SQLite: removing the file and its WAL files)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not _is_sqlite_memory(parsed):
            assert parsed.database is not None
            for suffix in ("", "-wal", "-shm"):
                await asyncio.to_thread(Path(parsed.database + suffix).unlink, missing_ok=True)
        return
    name = parsed.database
    if not name or name == "postgres":
        raise ValueError(f"refusing to drop database {name!r}")
    admin = _admin_engine(parsed)
    try:
        async with admin.connect() as conn:
            quoted = admin.dialect.identifier_preparer.quote_identifier(name)
            await conn.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
    finally:
        await admin.dispose()
