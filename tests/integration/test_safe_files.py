"""Safe files (issue #11 points 3, 4 and 5): an export that never deletes what it did not
write, private files and directories, one registration secret."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from forum.homeserver import EmbeddedHomeserver, free_port
from tests.harness import export_text, operator_config

ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def forum_command(*args: str, home: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FORUM_HOME": str(home), "FORUM_CONFIG": str(config)}
    return subprocess.run(
        [sys.executable, "-m", "forum", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=home.parent,
    )


def foreign_files(directory: Path) -> dict[str, str]:
    """Put an operator's own files in ``directory``: a note and a folder with a photo."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "photos").mkdir()
    (directory / "notes.txt").write_text("mes notes", encoding="utf-8")
    (directory / "photos" / "atelier.jpg").write_bytes(b"\xff\xd8 a photo")
    return {"notes.txt": "mes notes", "photos/atelier.jpg": "\xff\xd8 a photo"}


def still_there(directory: Path, files: dict[str, str]) -> list[str]:
    lost = []
    for rel, text in files.items():
        path = directory / rel
        if not path.is_file() or path.read_bytes() != text.encode("latin-1"):
            lost.append(rel)
    return lost


# --- 3. the export --------------------------------------------------------------------


async def test_export_never_deletes_what_it_did_not_write(start_forum, tmp_path):
    forum = await start_forum("digest")
    await forum.digest.publish(forum.week())
    site = tmp_path / "site"
    mine = foreign_files(site)

    refused: Exception | None = None
    try:
        await forum.digest.export_to(site)
    except Exception as exc:  # the refusal; its type is checked below
        refused = exc
    assert still_there(site, mine) == [], "the export deleted the operator's files"
    assert refused is not None, "an export into a directory holding other files went ahead"
    assert "--force" in str(refused)
    assert "notes.txt" in str(refused)
    assert not (site / "index.html").exists()

    # --force writes beside them and still deletes nothing of theirs
    await forum.digest.export_to(site, force=True)
    assert (site / "fr" / "index.html").is_file()
    assert still_there(site, mine) == []
    manifest = site / ".forum-export.json"
    assert manifest.is_file()

    # a file it wrote before and no longer writes goes; a new file of the operator stays
    old = site / "fr" / "week" / "1999-W01" / "index.html"
    old.parent.mkdir(parents=True)
    old.write_text("an old week", encoding="utf-8")
    text = manifest.read_text(encoding="utf-8")
    manifest.write_text(text.replace('"files": [', '"files": ["fr/week/1999-W01/index.html", '))
    (site / "later.txt").write_text("written later", encoding="utf-8")
    mine["later.txt"] = "written later"
    await forum.digest.export_to(site, force=True)
    assert not old.exists()
    assert not old.parent.exists()
    assert still_there(site, mine) == []
    assert "1999-W01" not in export_text(site)


async def test_export_into_a_fresh_directory_then_again_without_force(start_forum, tmp_path):
    forum = await start_forum("digest")
    site = tmp_path / "new" / "site"
    n = await forum.digest.export_to(site)
    assert n > 3
    assert (site / "index.html").is_file()
    await forum.digest.export_to(site)  # its own files only: no force needed
    assert (site / "index.html").is_file()
    # a web server must be able to read the pages
    assert mode(site / "fr") & 0o005 == 0o005
    assert mode(site / "index.html") & 0o004


@pytest.mark.parametrize("where", ["project", "home", "inside-home", "above-home"])
async def test_export_never_writes_into_the_project_or_the_forum_home(start_forum, tmp_path, where):
    home = tmp_path / "deep" / "home"
    forum = await start_forum("digest", home=home)
    project = tmp_path / "checkout"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname='x'\n", encoding="utf-8")
    target = {
        "project": project,
        "home": home,
        "inside-home": home / "site",
        "above-home": tmp_path / "deep",
    }[where]

    def listing() -> list[str]:  # the service's own files in its home may change
        return sorted(str(p) for p in tmp_path.rglob("*") if not p.is_relative_to(home))

    before = listing()
    with pytest.raises(Exception) as err:  # noqa: PT011 - the message is what matters
        await forum.digest.export_to(target, force=True)
    assert str(target) in str(err.value)
    assert listing() == before
    assert not list(home.rglob("index.html"))
    assert not list(home.rglob(".forum-export.json"))


async def test_the_export_command_refuses_clearly_and_is_not_repeated(start_forum, tmp_path):
    """``forum digest export DIR``: a clear refusal beside other files (exit 2, nothing
    lost); with --force it exports once, and the running service does not keep
    re-exporting there after every change (only ``digest.export_dir`` is kept up to date)."""
    home = tmp_path / "home"
    forum = await start_forum("digest", home=home)
    config = operator_config(forum, tmp_path / "forum.toml")
    site = tmp_path / "site"
    mine = foreign_files(site)

    res = await asyncio.to_thread(
        forum_command, "digest", "export", str(site), home=home, config=config
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "--force" in res.stderr
    assert "notes.txt" in res.stderr
    assert still_there(site, mine) == []

    res = await asyncio.to_thread(
        forum_command, "digest", "export", "--force", str(site), home=home, config=config
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert still_there(site, mine) == []
    assert (site / "index.html").is_file()
    assert site.resolve() not in [p.resolve() for p in await forum.digest.export_dirs()]

    res = await asyncio.to_thread(
        forum_command, "digest", "export", "--force", str(ROOT), home=home, config=config
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "pyproject.toml" in res.stderr or "project" in res.stderr
    assert not (ROOT / "index.html").exists()


# --- 4. private files -------------------------------------------------------------------


def loose_files(directory: Path) -> list[str]:
    """Everything under ``directory`` that others may read: files not 0600, directories
    not 0700 (the web export is not under it)."""
    found = []
    for path in [directory, *directory.rglob("*")]:
        if path.is_symlink():
            continue
        wanted = 0o700 if path.is_dir() else 0o600
        if mode(path) & 0o077:
            found.append(
                f"{path.relative_to(directory.parent)} {oct(mode(path))} (want {oct(wanted)})"
            )
    return found


async def test_the_service_keeps_its_home_private(start_forum, tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    (home / "demo.json").write_text("{}", encoding="utf-8")  # an older install's file
    os.chmod(home / "demo.json", 0o644)
    await start_forum("digest", home=home)
    assert (home / "forum.db").is_file()
    assert mode(home) == 0o700
    assert loose_files(home) == []


async def test_the_embedded_homeserver_keeps_its_files_private(tmp_path):
    directory = tmp_path / "home" / "synapse"
    hs = EmbeddedHomeserver(directory, server_name="private.test", port=free_port(), for_tests=True)
    await hs.start()
    try:
        await hs.register(f"u{secrets.token_hex(3)}", "pw-pw-pw-pw")
        names = {p.name for p in directory.iterdir()}
        assert {"homeserver.yaml", "homeserver.db", "forum-log.yaml"} <= names, names
        assert any(n.endswith(".signing.key") for n in names), names
        assert loose_files(directory) == []
    finally:
        await hs.stop()
    # an install made before: everything loosened, tightened again at the next start
    for path in [directory, *directory.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    await hs.start()
    try:
        assert loose_files(directory) == []
    finally:
        await hs.stop()


# --- 5. one registration secret -------------------------------------------------------


async def test_synapse_own_registration_tool_works_with_homeserver_yaml(synapse):
    """``register_new_matrix_user -c homeserver.yaml`` uses the secret in force."""
    tool = Path(sys.executable).with_name("register_new_matrix_user")
    name = f"tool{secrets.token_hex(3)}"
    res = await asyncio.to_thread(
        subprocess.run,
        [
            str(tool),
            "-c",
            str(synapse.config.config_path),
            "-u",
            name,
            "-p",
            "pw-" + secrets.token_hex(6),
            "--no-admin",
            synapse.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    overrides = synapse.config.overrides_path.read_text(encoding="utf-8")
    assert "registration_shared_secret" not in overrides


def test_a_hand_edited_manifest_never_reaches_outside(tmp_path):
    """Names in the manifest that point outside the directory are never removed."""
    from bridge.export import MANIFEST, write_export

    site = tmp_path / "site"
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me", encoding="utf-8")
    write_export(site, {"index.html": b"<p>1</p>"}, home=tmp_path / "home")
    listed = ["index.html", "../outside.txt", str(outside)]
    (site / MANIFEST).write_text(json.dumps({"format": 1, "files": listed}), encoding="utf-8")
    write_export(site, {"index.html": b"<p>2</p>"}, home=tmp_path / "home")
    assert outside.read_text(encoding="utf-8") == "keep me"
    assert (site / "index.html").read_bytes() == b"<p>2</p>"


def test_the_export_never_writes_through_a_symbolic_link(tmp_path):
    from bridge.export import ExportRefused, write_export

    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_export(site, {"fr/index.html": b"fr"}, home=None)
    (site / "fr" / "index.html").unlink()
    (site / "fr").rmdir()
    (site / "fr").symlink_to(elsewhere)
    with pytest.raises(ExportRefused, match="fr"):
        write_export(site, {"fr/index.html": b"fr"}, home=None)
    with pytest.raises(ExportRefused, match="symbolic link"):
        write_export(site, {"fr/index.html": b"fr"}, home=None, force=True)
    assert list(elsewhere.iterdir()) == []


async def test_an_older_install_stops_re_exporting_to_its_last_cli_directory(start_forum, tmp_path):
    """Versions before stored the last ``forum digest export`` directory and re-exported
    there after every change; the service now forgets it (and says so in its log)."""
    from bridge.repositories import DigestStore
    from bridge.service import EXPORT_STATE_KEY
    from forum.storage import Database

    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    old_target = tmp_path / "old-site"
    db = await Database.open(url)
    async with db.sessionmaker() as s, s.begin():
        await DigestStore(s).set_state(EXPORT_STATE_KEY, str(old_target))
    await db.close()

    forum = await start_forum("digest", db_url=url)
    assert await forum.digest.export_dirs() == []
    async with forum.ctx.db.sessionmaker() as s:
        assert not await DigestStore(s).get_state(EXPORT_STATE_KEY)
    await forum.digest.publish(forum.week())
    await forum.digest.export_all()
    assert not old_target.exists()
