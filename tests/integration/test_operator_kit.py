"""The operator's kit (issue #11 point 9): backup and restore of a running forum, the
default configuration shipped inside the package, ``forum --version``, the service unit."""

from __future__ import annotations

import asyncio
import configparser
import os
import secrets
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import make_url, select

from bridge.models import DigestWeek
from forum.consent import ConsentRow
from forum.settings import DEFAULT_CONFIG
from forum.storage import Database, create_database_if_missing, drop_database
from moderation.membership.models import PersonRow
from tests.harness import operator_config
from tests.storage_fixtures import POSTGRES_BASE_URL

ROOT = Path(__file__).resolve().parents[2]


def forum_command(*args: str, home: Path, config: Path | None = None, timeout: float = 120):
    env = {**os.environ, "FORUM_HOME": str(home)}
    if config is not None:
        env["FORUM_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "forum", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=home.parent,
    )


async def rows(url: str) -> dict[str, list[tuple]]:
    """Every member, consent record and published week of the database at ``url``."""
    db = await Database.open(url)
    try:
        async with db.sessionmaker() as s:
            out: dict[str, list[tuple]] = {}
            for name, model, key in (
                ("people", PersonRow, PersonRow.user_id),
                ("consents", ConsentRow, ConsentRow.id),
                ("weeks", DigestWeek, DigestWeek.week),
            ):
                columns = [c.key for c in model.__table__.columns]
                found = await s.scalars(select(model).order_by(key))
                out[name] = [tuple(getattr(r, c) for c in columns) for r in found]
            return out
    finally:
        await db.close()


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


async def test_backup_of_a_running_forum_restores_into_a_new_home(
    start_forum, make_user, db_url, db_backend, tmp_path
):
    """Members, consent records and published weeks come back whole in a new FORUM_HOME,
    from a backup taken while the service runs; the backup's files are 0600."""
    home = tmp_path / "home"
    forum = await start_forum("membership", "digest", home=home, db_url=db_url)
    amina, kofi = await make_user("amina"), await make_user("kofi")
    await forum.admit(amina)
    await forum.admit(kofi, publication=False)
    week = forum.week()
    await forum.digest.publish(week)
    (home / "secrets.json").write_text('{"bot:x": "kept"}\n', encoding="utf-8")
    before = await rows(db_url)
    assert len(before["people"]) >= 2
    assert len(before["consents"]) >= 4
    assert [w[0] for w in before["weeks"]] == [week]

    config = operator_config(forum, tmp_path / "forum.toml")
    backup = tmp_path / "backup"
    res = await asyncio.to_thread(forum_command, "backup", str(backup), home=home, config=config)
    assert res.returncode == 0, res.stdout + res.stderr
    files = [p for p in backup.rglob("*") if p.is_file()]
    assert files, "the backup is empty"
    assert all(private(p) for p in files), [(p, oct(p.stat().st_mode)) for p in files]
    assert private(backup)

    new_home = tmp_path / "new-home"
    target = None
    if db_backend == "postgresql":
        target = make_url(POSTGRES_BASE_URL).set(database=f"forum_test_{secrets.token_hex(6)}")
        await create_database_if_missing(target)
        restored_url = target.render_as_string(hide_password=False)
    else:
        restored_url = f"sqlite+aiosqlite:///{new_home / 'forum.db'}"
    assert db_url in config.read_text(encoding="utf-8")
    target_config = tmp_path / "target.toml"
    target_config.write_text(
        config.read_text(encoding="utf-8").replace(db_url, restored_url), encoding="utf-8"
    )
    try:
        res = await asyncio.to_thread(
            forum_command, "restore", str(backup), home=new_home, config=target_config
        )
        assert res.returncode == 0, res.stdout + res.stderr
        after = await rows(restored_url)
        assert after == before
        assert (new_home / "secrets.json").read_text(encoding="utf-8") == '{"bot:x": "kept"}\n'
        assert private(new_home / "secrets.json")
        assert stat.S_IMODE(new_home.stat().st_mode) == 0o700
        # the bots' encryption stores come back (their devices can read their chats)
        stores = sorted(p.relative_to(home) for p in home.glob("crypto/*/*.db"))
        assert len(stores) == 2
        assert sorted(p.relative_to(new_home) for p in new_home.glob("crypto/*/*.db")) == stores
        assert all(private(new_home / p) for p in stores)

        # Restoring over a forum that has data is refused and changes nothing.
        again = await asyncio.to_thread(
            forum_command, "restore", str(backup), home=new_home, config=target_config
        )
        assert again.returncode == 2, again.stdout + again.stderr
        assert "--force" in again.stderr
        assert await rows(restored_url) == before
    finally:
        if target is not None:
            await drop_database(target)


def test_restore_of_something_else_is_refused(tmp_path):
    empty = tmp_path / "not-a-backup"
    empty.mkdir()
    res = forum_command("restore", str(empty), home=tmp_path / "home")
    assert res.returncode == 2
    assert "backup" in res.stderr
    assert not (tmp_path / "home" / "forum.db").exists()


def test_version(tmp_path):
    from importlib.metadata import version

    res = forum_command("--version", home=tmp_path / "home")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"forum {version('forum')}"


def test_default_config_and_charters_ship_inside_the_package(tmp_path):
    """A plain ``pip install .`` finds its forum.toml and charters: the wheel holds them,
    and the default path points inside the package, not the source tree."""
    import forum

    package = Path(forum.__file__).resolve().parent
    assert DEFAULT_CONFIG.is_relative_to(package), DEFAULT_CONFIG
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", ".forum", "build", "*.egg-info", "__pycache__", ".*cache"
        ),
    )
    out = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (wheel,) = out.glob("forum-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    rel = DEFAULT_CONFIG.relative_to(package.parent).as_posix()
    assert rel in names, sorted(n for n in names if "toml" in n)
    charters = DEFAULT_CONFIG.parent / "charter"
    for text in charters.rglob("*.md"):
        assert text.relative_to(package.parent).as_posix() in names


def test_the_config_environment_variable_still_wins(tmp_path):
    other = tmp_path / "elsewhere.toml"
    shutil.copy(DEFAULT_CONFIG, other)
    text = other.read_text(encoding="utf-8")
    other.write_text(text.replace("\nport = 8080", "\nport = -5", 1), encoding="utf-8")
    res = forum_command("check-config", home=tmp_path / "home", config=other)
    assert res.returncode == 2
    assert str(other) in res.stderr
    assert "web.port" in res.stderr


def test_a_hardened_systemd_unit_is_shipped_and_documented():
    unit = ROOT / "deploy" / "forum.service"
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(unit, encoding="utf-8")
    service = parser["Service"]
    assert "forum run" in service["ExecStart"]
    assert service["User"]
    assert service["User"] != "root"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["UMask"] == "0077"
    assert "FORUM_HOME" in service.get("Environment", "")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for words in ("deploy/forum.service", "forum backup", "forum restore"):
        assert words in readme


@pytest.mark.parametrize("args", [("backup",), ("restore",)])
def test_backup_and_restore_need_a_directory(tmp_path, args):
    res = forum_command(*args, home=tmp_path / "home")
    assert res.returncode == 2
    assert "DIR" in res.stderr or "directory" in res.stderr
