"""The service's secrets file and the private files and directories it keeps.

Generated passwords and secrets are kept in a JSON file of strings (``$FORUM_HOME/
secrets.json`` for the bots and the demo accounts), written with mode 0600. Everything
the forum keeps in ``FORUM_HOME`` is private: directories 0700, files 0600
(:func:`private_dir`, :func:`tighten`, :func:`private_sqlite`), including what an older
version left readable. Nothing happens at import time.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
#: what a process of the forum creates: private unless it says otherwise
PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents, 0700) if needed; make it 0700."""
    if not path.is_dir():
        # mkdir(parents=True) gives the parents it makes the umask's mode, not ``mode``
        missing = [p for p in (path, *path.parents) if not p.exists()]
        for directory in reversed(missing):
            directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)
            os.chmod(directory, PRIVATE_DIR)
    if stat.S_IMODE(path.stat().st_mode) != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)
    return path


def tighten(root: Path, *, skip: Iterable[Path] = ()) -> int:
    """Make every directory under ``root`` (itself included) 0700 and every file 0600
    when others or the group may read it; symbolic links are left alone (not followed).
    ``skip``: directories not to touch (a public export kept inside). Returns how many
    modes were changed."""
    skipped = {p.resolve() for p in skip}
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if (here / d).resolve() not in skipped]
        for path, wanted in [(here, PRIVATE_DIR)] + [(here / f, PRIVATE_FILE) for f in filenames]:
            try:
                st = path.lstat()
            except FileNotFoundError:  # removed meanwhile (a temporary file)
                continue
            if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o077:
                continue
            os.chmod(path, stat.S_IMODE(st.st_mode) & wanted)
            changed += 1
    return changed


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if it does not exist; make it 0600.

    An existing file is never opened: closing a descriptor of a file drops every POSIX
    lock this process holds on it, and SQLite's locks on an open database are such locks
    (another process on the same file would then delete the WAL under this one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, PRIVATE_FILE)
    return path


def private_sqlite(path: Path) -> None:
    """A SQLite database file that others cannot read. Created empty (a valid, empty
    database) with mode 0600 before SQLite opens it: SQLite gives its ``-wal``, ``-shm``
    and ``-journal`` files the mode of the database file. Existing ones are tightened."""
    private_file(path)
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists() and stat.S_IMODE(side.stat().st_mode) & 0o077:
            os.chmod(side, PRIVATE_FILE)


def write_private(path: Path, text: str | bytes) -> None:
    """Write ``text`` atomically to ``path`` with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(text.encode("utf-8") if isinstance(text, str) else text)
    os.chmod(tmp, PRIVATE_FILE)
    os.replace(tmp, path)


def load_or_create_secrets(path: Path, names: Iterable[str]) -> dict[str, str]:
    """The secrets named ``names`` from the JSON file ``path``, generating missing ones.

    Existing values are kept; new ones are random URL-safe strings. The file is written
    with mode 0600 (and an existing file is tightened to 0600). Returns every secret in
    the file, not only the ones asked for.
    """
    data: dict[str, str] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the secrets file: {exc}") from exc
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
        ):
            raise ValueError(f"{path}: expected a JSON object of strings")
        data = dict(loaded)
    missing = [n for n in names if n not in data]
    for name in missing:
        data[name] = secrets.token_urlsafe(24)
    if missing or not path.exists():
        write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    elif path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return data


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database URL; None for another database or an in-memory one."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).resolve()


def secure_home(home: Path, database_url: str | None = None) -> None:
    """``FORUM_HOME`` private before the service or a command uses it: the directory
    0700, a SQLite database created 0600 (its ``-wal``/``-shm`` follow), and whatever an
    older version left readable (secrets, ``demo.json``, the embedded homeserver's
    files) tightened to 0600/0700."""
    private_dir(home)
    db_file = sqlite_file(database_url) if database_url else None
    if db_file is not None:
        private_sqlite(db_file)
    tighten(home)
