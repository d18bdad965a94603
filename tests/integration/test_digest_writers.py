"""One site, whoever writes (issue #10, point 8): a week built by the operator's CLI, an
erasure committed by another process, reach the running service's pages, JSON and
export within a few seconds; and the export loop neither loses a change that arrives
while it exports nor gives up after a failed export (point 3)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from bridge.cli import add_commands
from bridge.repositories import DigestStore
from forum.settings import database_url
from forum.storage import Database
from tests.harness import Forum, ForumStarter, eventually, export_text, operator_config

pytestmark = pytest.mark.homeserver

#: how soon a change made by another process shows on the running site and its export
OTHER_WRITER_BOUND_SECONDS = 5


async def consenting_message(make_user: Any, forum: Forum, text: str) -> Any:
    amina = await make_user("amina", display_name="Amina")
    await forum.join(amina)
    await forum.consent(amina)
    await amina.send_text(forum.room(), text)

    async def stored() -> bool:
        return any(text in b for b in await forum.stored_bodies())

    await eventually(stored, 20, "message stored")
    return amina


async def listed_weeks(forum: Forum) -> list[str]:
    status, raw, _ = await forum.get("/api/digests.json")
    assert status == 200
    return [w["week"] for w in json.loads(raw)["weeks"]]


def read_if_there(path: Path) -> str:
    """A file of the export, or "" while the export has not written it yet."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


async def test_a_week_built_by_the_cli_shows_on_the_running_site(
    make_user, start_forum: ForumStarter, db_url, tmp_path, monkeypatch, capsys
):
    export = tmp_path / "site"
    forum = await start_forum(
        "digest", db_url=db_url, config={"digest": {"export_dir": str(export)}}
    )
    await consenting_message(make_user, forum, "CLI-SEMAINE: les clubs de lecture du réseau.")
    week = forum.week()
    # The running site has looked (and cached): no week yet.
    status, _, _ = await forum.get(f"/fr/week/{week}/")
    assert status == 404
    assert week not in await listed_weeks(forum)

    # The operator builds the week from a shell: the CLI, its own database connection.
    config = operator_config(forum, tmp_path / "forum.toml")
    monkeypatch.setenv("FORUM_HOME", str(forum.service.home))
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["--config", str(config), "digest", "build", "--week", week, "--without-review"]
    )
    assert await args.func(args) == 0
    assert week in capsys.readouterr().out

    async def shown() -> bool:
        status, page, _ = await forum.get(f"/fr/week/{week}/")
        exported = export / "fr" / "week" / week / "index.html"
        return (
            status == 200
            and "CLI-SEMAINE" in page
            and week in await listed_weeks(forum)
            and "CLI-SEMAINE" in read_if_there(exported)
            and week in read_if_there(export / "api" / "digests.json")
        )

    await eventually(shown, OTHER_WRITER_BOUND_SECONDS, "the CLI's week on the running site")
    forum.assert_alive()


async def test_an_erasure_by_another_process_leaves_the_running_site(
    make_user, start_forum: ForumStarter, db_url, tmp_path
):
    export = tmp_path / "site"
    forum = await start_forum(
        "digest", db_url=db_url, config={"digest": {"export_dir": str(export)}}
    )
    amina = await consenting_message(make_user, forum, "AUTRE-PROCESSUS: les cantines scolaires.")
    week = forum.week()
    await forum.digest.publish(week)

    async def shown() -> bool:
        _, page, _ = await forum.get(f"/fr/week/{week}/")
        return "AUTRE-PROCESSUS" in page and "AUTRE-PROCESSUS" in export_text(export)

    await eventually(shown, 10, "the message on the site and in the export")

    # Another process erases Amina's words (its own connection, its own transaction).
    other = await Database.open(database_url(forum.settings, forum.service.home))
    try:
        async with other.sessionmaker() as s, s.begin():
            assert await DigestStore(s).erase_user(amina.user_id) == 1
    finally:
        await other.close()

    async def gone() -> bool:
        texts = [export_text(export)]
        for path in (f"/fr/week/{week}/", "/fr/feed.atom", "/api/digests.json"):
            status, body, _ = await forum.get(path)
            assert status == 200, path
            texts.append(body)
        return "AUTRE-PROCESSUS" not in "\n".join(texts)

    await eventually(gone, OTHER_WRITER_BOUND_SECONDS, "the erasure on the running site")
    forum.assert_alive()


async def test_a_change_during_an_export_is_exported_after_it(
    make_user, start_forum: ForumStarter, tmp_path, monkeypatch
):
    export = tmp_path / "site"
    forum = await start_forum("digest", config={"digest": {"export_dir": str(export)}})
    await consenting_message(make_user, forum, "PENDANT-EXPORT: les jardins scolaires.")
    service = forum.digest
    week = forum.week()
    real_export = service.export_all
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_export() -> None:
        await real_export()  # written from the store as it was
        if not release.is_set():
            started.set()
            await release.wait()

    monkeypatch.setattr(service, "export_all", slow_export)
    service.changed()
    await asyncio.wait_for(started.wait(), 10)
    assert not (export / "fr" / "week" / week).exists()
    await service.publish(week)  # arrives while the export runs
    release.set()

    async def exported() -> bool:
        page = export / "fr" / "week" / week / "index.html"
        return "PENDANT-EXPORT" in read_if_there(page)

    await eventually(exported, 10, "the change exported after the running export")
    forum.assert_alive()


async def test_a_failed_export_is_retried(make_user, start_forum: ForumStarter, tmp_path, caplog):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the export's parent directory should be")
    export = blocker / "site"
    forum = await start_forum("digest", config={"digest": {"export_dir": str(export)}})
    await consenting_message(make_user, forum, "REESSAI: les bibliothèques de quartier.")
    week = forum.week()
    await forum.digest.publish(week)

    async def failed() -> bool:  # tried, and failed: not a directory (the supervisor logs it)
        return any(
            r.name == "forum.tasks"
            and r.levelno >= logging.WARNING
            and "digest:export" in r.getMessage()
            and r.exc_info is not None
            and isinstance(r.exc_info[1], OSError)
            for r in caplog.records
        )

    await eventually(failed, 10, "the export failed")
    assert not export.exists()

    blocker.unlink()  # the operator fixes the directory

    async def exported() -> bool:
        page = export / "fr" / "week" / week / "index.html"
        return "REESSAI" in read_if_there(page)

    await eventually(exported, 15, "the failed export retried")
    forum.assert_alive()
