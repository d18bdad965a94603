"""``forum backup DIR`` and ``forum restore DIR``: the database and the secrets of
``FORUM_HOME``, kept and moved safely.

A backup is a consistent copy taken while the service runs: SQLite's online backup API
(through :mod:`sqlite3`; a plain file copy of a database in WAL mode can be broken) or
``pg_dump`` for PostgreSQL. Beside it: the secrets of ``FORUM_HOME`` (``secrets.json``,
``demo.json``) and, with the embedded homeserver, its configuration, signing key,
certificate and database (its media store is not included). Everything is written 0600
in a 0700 directory, with a manifest, ``forum-backup.json``.

A restore refuses a forum that already has data unless ``force``, and loses nothing of a
backup it cannot use: it names what is wrong. Blocking functions: run them in a thread.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url

from forum.credentials import (
    PRIVATE_UMASK,
    private_dir,
    private_file,
    secure_home,
    sqlite_file,
    tighten,
    write_private,
)

MANIFEST = "forum-backup.json"
FORMAT = 1
SQLITE_FILE = "forum.db"
PG_FILE = "forum.pgdump"
HOME_DIR = "home"
#: the files of FORUM_HOME a backup keeps, as glob patterns relative to it
HOME_FILES = (
    "secrets.json",
    "demo.json",
    "synapse/homeserver.yaml",
    "synapse/*.signing.key",
    "synapse/tls.key",
    "synapse/tls.crt",
)
#: SQLite databases of FORUM_HOME copied with the backup API (the embedded homeserver's,
#: the bots' end-to-end encryption stores: without them a restored bot could not read
#: its encrypted chats), as glob patterns relative to it
HOME_DATABASES = ("synapse/homeserver.db", "crypto/*/*.db")


class BackupError(Exception):
    """The backup or the restore cannot be done; nothing was changed (the message says
    why and what to do)."""


@dataclass(frozen=True)
class BackupReport:
    directory: Path
    database: str
    files: list[str]


def backend_of(url: str) -> str:
    """``"sqlite"`` or ``"postgresql"``."""
    name = make_url(url).get_backend_name()
    if name not in ("sqlite", "postgresql"):
        raise BackupError(f"cannot back up a {name} database (SQLite or PostgreSQL only)")
    return name


def _pg_target(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection URI without its password, and the environment carrying it
    (never on a command line others can read)."""
    parsed: URL = make_url(url).set(drivername="postgresql")
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    return parsed.set(password=None).render_as_string(hide_password=False), env


def _run_tool(cmd: list[str], env: dict[str, str], what: str) -> None:
    tool = shutil.which(cmd[0])
    if tool is None:
        raise BackupError(f"{cmd[0]} is not installed: it is needed to {what} (PostgreSQL)")
    result = subprocess.run(  # noqa: S603 - a fixed tool, arguments are ours
        [tool, *cmd[1:]],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        umask=PRIVATE_UMASK,
    )
    if result.returncode != 0:
        from forum.settings import redact

        raise BackupError(
            f"{cmd[0]} failed to {what} (exit {result.returncode}): "
            f"{redact(result.stderr.strip()[-1500:])}"
        )


def _sqlite_copy(source: Path, target: Path) -> None:
    """Copy a SQLite database that may be in use, page by page, consistently."""
    private_sqlite_target = private_file(target)
    src = sqlite3.connect(source)  # only read; a database in WAL mode needs its -shm
    try:
        dst = sqlite3.connect(private_sqlite_target)
        try:
            src.backup(dst)
            ok = dst.execute("PRAGMA integrity_check").fetchone()
            if not ok or ok[0] != "ok":
                raise BackupError(f"the copy of {source} fails its integrity check: {ok}")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy the SQLite database {source}: {exc}") from exc
    finally:
        src.close()


def _revisions(db_file: Path) -> list[str]:
    con = sqlite3.connect(f"{db_file.as_uri()}?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute("SELECT version_num FROM alembic_version")]
    except sqlite3.Error:
        return []
    finally:
        con.close()


def backup(database_url: str, home: Path, directory: Path, version: str) -> BackupReport:
    """Write a backup of the forum (database ``database_url``, home ``home``) into
    ``directory``, which must be new or empty."""
    directory = directory.resolve()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BackupError(
            f"{directory} is not an empty directory; a backup never overwrites another: "
            "choose a new directory (for example one named after the date)"
        )
    kind = backend_of(database_url)
    if kind == "sqlite":
        source = sqlite_file(database_url)
        if source is None or not source.is_file():
            raise BackupError(f"there is no database at {source}: nothing to back up")
    private_dir(directory)
    files: list[str] = []
    if kind == "sqlite":
        assert source is not None
        _sqlite_copy(source, directory / SQLITE_FILE)
        files.append(SQLITE_FILE)
        revisions = _revisions(directory / SQLITE_FILE)
    else:
        uri, env = _pg_target(database_url)
        dump = directory / PG_FILE
        cmd = ["pg_dump", "--format=custom", "--no-owner", "--no-privileges"]
        _run_tool([*cmd, f"--file={dump}", f"--dbname={uri}"], env, "dump the database")
        files.append(PG_FILE)
        revisions = []
    home_files: list[str] = []
    for pattern in HOME_FILES:
        for path in sorted(home.glob(pattern)):
            if path.is_file():
                rel = path.relative_to(home).as_posix()
                write_private(directory / HOME_DIR / rel, path.read_bytes())
                home_files.append(rel)
    for pattern in HOME_DATABASES:
        for path in sorted(home.glob(pattern)):
            if path.is_file():
                rel = path.relative_to(home).as_posix()
                _sqlite_copy(path, directory / HOME_DIR / rel)
                home_files.append(rel)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "forum_version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": kind,
        "database_file": files[0],
        "revisions": revisions,
        "home_files": home_files,
    }
    write_private(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    tighten(directory)
    return BackupReport(directory, kind, [*files, *(f"{HOME_DIR}/{f}" for f in home_files)])


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BackupError(f"{directory} is not a forum backup (no {MANIFEST})") from exc
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path} cannot be read: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BackupError(f"{path}: not a backup this version can restore (format {FORMAT})")
    if not (directory / str(data.get("database_file"))).is_file():
        raise BackupError(f"{directory}: the database file {data.get('database_file')} is missing")
    return data


def check_restore(
    manifest: dict[str, Any], database_url: str, home: Path, *, has_data: bool, force: bool
) -> None:
    """Raise :class:`BackupError` if the restore would overwrite a forum (unless
    ``force``) or cannot use this backup."""
    kind = backend_of(database_url)
    if manifest["database"] != kind:
        raise BackupError(
            f"the backup holds a {manifest['database']} database and the configuration "
            f"names a {kind} one; restore into a configuration of the same kind"
        )
    if force:
        return
    present = [
        rel
        for rel in manifest.get("home_files", [])
        if isinstance(rel, str) and (home / rel).exists()
    ]
    if has_data or present:
        what = "the database already holds a forum" if has_data else f"{home} holds {present[0]}"
        raise BackupError(
            f"{what}; nothing was changed. Restore into a new FORUM_HOME and an empty "
            "database, or add --force to replace them (stop the service first)"
        )


def sqlite_has_data(database_url: str) -> bool:
    target = sqlite_file(database_url)
    return target is not None and target.is_file() and target.stat().st_size > 0


def restore(
    manifest: dict[str, Any], directory: Path, database_url: str, home: Path, *, force: bool
) -> list[str]:
    """Restore the database and the home files of the backup in ``directory``; return
    what was restored. :func:`check_restore` first."""
    private_dir(home)
    restored: list[str] = []
    source = directory / str(manifest["database_file"])
    if manifest["database"] == "sqlite":
        target = sqlite_file(database_url)
        assert target is not None
        target.parent.mkdir(parents=True, exist_ok=True)
        _sqlite_copy(source, target)
    else:
        uri, env = _pg_target(database_url)
        cmd = ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error"]
        if force:
            cmd += ["--clean", "--if-exists"]
        _run_tool([*cmd, f"--dbname={uri}", str(source)], env, "restore the database")
    restored.append(str(manifest["database_file"]))
    for rel in manifest.get("home_files", []):
        src = directory / HOME_DIR / str(rel)
        if not isinstance(rel, str) or ".." in Path(rel).parts or not src.is_file():
            raise BackupError(f"{directory}: {HOME_DIR}/{rel} is listed but missing")
        if any(fnmatch.fnmatchcase(rel, pattern) for pattern in HOME_DATABASES):
            _sqlite_copy(src, home / rel)
        else:
            private_dir((home / rel).parent)
            write_private(home / rel, src.read_bytes())
        restored.append(f"{HOME_DIR}/{rel}")
    secure_home(home, database_url)
    return restored
