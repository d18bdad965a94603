"""Writing the static export safely: only its own files, listed in a manifest.

The export writes every file of the site atomically (a web host serving the directory
never sees one missing or half-written), then removes the files its previous export
wrote (listed in ``.forum-export.json``) that are no longer part of the site: a removed
text must not stay behind. It never removes anything else. A directory that holds
anything it did not write is refused unless ``force`` (then it writes beside those files
and still removes none of them). It never writes into a project root (a directory with
``pyproject.toml`` or ``.git``) nor into, or above, the service's home (``FORUM_HOME``:
the database and the secrets), even with ``force``.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

MANIFEST = ".forum-export.json"
MANIFEST_FORMAT = 1
#: markers of a project's root (a source checkout): never exported into
PROJECT_MARKERS = ("pyproject.toml", ".git")
_SHOWN = 5


class ExportRefused(Exception):
    """The export would write where it must not, or beside files it did not write."""


def _inside(path: Path, other: Path) -> bool:
    return path == other or path.is_relative_to(other)


def _read_manifest(directory: Path) -> set[str]:
    path = directory / MANIFEST
    if not path.exists():
        return set()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise TypeError("files is not a list of names")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportRefused(
            f"{path} cannot be read ({exc}); it lists the files of the previous export. "
            f"Remove it if {directory} holds nothing of yours, or export elsewhere"
        ) from exc
    # names outside the directory are never ours (a hand-edited manifest)
    return {f for f in files if f and not Path(f).is_absolute() and ".." not in Path(f).parts}


def _foreign(directory: Path, ours: set[str]) -> list[str]:
    """What ``directory`` holds that the export did not write (relative names)."""
    ours_dirs = {str(p) for f in ours for p in Path(f).parents if str(p) != "."}
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        here = Path(dirpath)
        for name in sorted(dirnames):
            rel = (here / name).relative_to(directory).as_posix()
            if (here / name).is_symlink() or rel not in ours_dirs:
                found.append(rel + "/")
        dirnames[:] = [
            d
            for d in dirnames
            if not (here / d).is_symlink()
            and (here / d).relative_to(directory).as_posix() in ours_dirs
        ]
        for name in sorted(filenames):
            rel = (here / name).relative_to(directory).as_posix()
            is_tmp = name.startswith(".") and name.endswith(".tmp")
            if rel == MANIFEST or is_tmp:
                continue
            st = (here / name).lstat()
            if rel not in ours or not stat.S_ISREG(st.st_mode):
                found.append(rel)
    return found


def check_target(directory: Path, *, home: Path | None, force: bool = False) -> set[str]:
    """Raise :class:`ExportRefused` if the export may not write into ``directory``;
    return the files its previous export wrote there."""
    directory = directory.resolve()
    if directory.exists() and not directory.is_dir():
        raise ExportRefused(f"{directory} is not a directory")
    for marker in PROJECT_MARKERS:
        if (directory / marker).exists():
            raise ExportRefused(
                f"{directory} holds {marker}: it is a project's root, and the export never "
                "writes there; choose an empty directory of its own (for example ./site)"
            )
    if home is not None:
        home = home.resolve()
        if _inside(directory, home) or _inside(home, directory):
            raise ExportRefused(
                f"{directory} is the forum's home {home}, inside it or above it (the database "
                "and the secrets): the export never writes there; choose another directory"
            )
    if not directory.exists():
        return set()
    ours = _read_manifest(directory)
    foreign = _foreign(directory, ours)
    if foreign and not force:
        shown = ", ".join(foreign[:_SHOWN]) + (
            f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else ""
        )
        raise ExportRefused(
            f"{directory} holds files the export did not write ({shown}); nothing was "
            "changed. Export into an empty directory, or add --force to write beside them "
            "(they are kept)"
        )
    return ours


def write_export(
    directory: Path, files: Mapping[str, bytes], *, home: Path | None, force: bool = False
) -> int:
    """Write ``files`` (relative name -> content) into ``directory`` as described in the
    module's docstring; return how many. Pages are readable by a web server (0644 files,
    0755 directories), whatever the process's umask."""
    directory = directory.resolve()
    previous = check_target(directory, home=home, force=force)
    for rel in files:
        if Path(rel).is_absolute() or ".." in Path(rel).parts or rel == MANIFEST:
            raise ValueError(f"not a file name of the export: {rel!r}")
    _make_public_dir(directory)
    for rel, data in files.items():
        target = directory / rel
        for parent in reversed(target.relative_to(directory).parents[:-1]):
            if (directory / parent).is_symlink():
                raise ExportRefused(f"{directory / parent} is a symbolic link: not written through")
            _make_public_dir(directory / parent)
        if target.is_symlink() or target.is_dir():
            raise ExportRefused(f"{target} is in the way of the export (not a plain file)")
        _replace(target, data, 0o644)
    # the manifest first: a crash below leaves files it lists, never files it forgot
    body = {"format": MANIFEST_FORMAT, "files": sorted(files)}
    _replace(directory / MANIFEST, (json.dumps(body, indent=1) + "\n").encode(), 0o644)
    _remove_stale(directory, previous - set(files))
    return len(files)


def _make_public_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) readable by a web server."""
    if not path.is_dir():
        if not path.parent.is_dir():
            _make_public_dir(path.parent)
        path.mkdir()
        os.chmod(path, 0o755)


def _replace(target: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_stale(directory: Path, stale: Iterable[str]) -> None:
    """Remove files the previous export wrote and this one did not, and the directories
    that held only them."""
    emptied: set[Path] = set()
    for rel in stale:
        path = directory / rel
        if path.is_file() and not path.is_symlink():
            path.unlink()
            emptied.update(p for p in path.parents if _inside(p, directory) and p != directory)
    for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()
