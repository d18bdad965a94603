"""Consent journeys that would catch a regression (DESIGN.md consent rules 3 and 4, issue
#10): on one forum (real bots, real Synapse), each way a person's words stop being
publishable is driven with nothing else happening, and EACH public output is checked on
its own: the week page, the Atom feed, the JSON API and the static export (its week
page, feed and JSON files). Every output must hold the quote before, and lose it after:
an output that never showed the quote fails the "before" check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import select

from bridge.models import DigestHighlight
from forum.consent import ConsentRecords
from tests.harness import Forum, ForumStarter, eventually, published_forum_with_export
from tests.matrix_user import TestUser

pytestmark = pytest.mark.homeserver

#: a quote appears, or disappears, within this many seconds (web: at once; the export:
#: the change watch and the export's debounce)
BOUND_SECONDS = 20


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def forum(start_module_forum: ForumStarter, tmp_path_factory: pytest.TempPathFactory):
    """One forum for the module: membership bot and digest, a moderator in the topic
    room, the current week published, a static export kept up to date. Each test uses
    its own people and its own words."""
    return await published_forum_with_export(start_module_forum, tmp_path_factory)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


async def outputs(forum: Forum) -> dict[str, str]:
    """Each public output on its own (never joined into one string)."""
    week = forum.week()
    export: Path = forum.export_dir  # type: ignore[attr-defined]
    out: dict[str, str] = {}
    for name, path in (
        ("week page", f"/fr/week/{week}/"),
        ("feed", "/fr/feed.atom"),
        ("JSON API", "/api/digests.json"),
    ):
        status, body, _ = await forum.get(path)
        assert status == 200, path
        out[name] = body
    out["export: week page"] = _read(export / "fr" / "week" / week / "index.html")
    out["export: feed"] = _read(export / "fr" / "feed.atom")
    out["export: JSON"] = _read(export / "api" / "digests.json")
    return out


async def holds_everywhere(forum: Forum, marker: str) -> None:
    """Every output shows ``marker`` (the "before" check, output by output)."""
    missing: list[str] = []

    async def check() -> bool:
        missing[:] = [n for n, text in (await outputs(forum)).items() if marker not in text]
        return not missing

    try:
        await eventually(check, BOUND_SECONDS, f"{marker} in every output")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; missing from: {missing}") from None


async def gone_everywhere(forum: Forum, marker: str) -> None:
    """No output shows ``marker`` any more (the "after" check, output by output)."""
    holding: list[str] = []

    async def check() -> bool:
        holding[:] = [n for n, text in (await outputs(forum)).items() if marker in text]
        return not holding

    try:
        await eventually(check, BOUND_SECONDS, f"{marker} gone from every output")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still in: {holding}") from None


async def highlighted(forum: Forum, target: str) -> None:
    async def marked() -> bool:
        async with forum.ctx.db.sessionmaker() as s:
            row = await s.get(DigestHighlight, target)
        return row is not None and row.status == "ok"

    await eventually(marked, BOUND_SECONDS, "the message is highlighted")


async def consenting_quote(forum: Forum, name: str, text: str) -> tuple[TestUser, str, str]:
    """A member admitted through the bot with publication consent, whose message a
    moderator marks 📰; returns the person, their DM and the message id, once every
    output holds the quote."""
    person = await forum.user(name, name.capitalize())
    dm = await forum.admit(person, publication=True)
    room = forum.room()
    await forum.join(person, room)
    target = await person.send_text(room, text)
    await forum.mod.react(room, target, "📰")
    await highlighted(forum, target)
    await holds_everywhere(forum, text.split(":")[0])
    return person, dm, target


async def quoted_with_permission(forum: Forum, name: str, text: str) -> tuple[TestUser, str, str]:
    """A member who refused publication in general, whose message a moderator marks 📰
    and who answers "oui" to the quote question; returned once every output holds it."""
    person = await forum.user(name, name.capitalize())
    dm = await forum.admit(person, publication=False)
    room = forum.room()
    await forum.join(person, room)
    target = await person.send_text(room, text)
    mark = person.mark()
    await forum.mod.react(room, target, "📰")
    await forum.wait_bot_text(person, dm, text.split(":")[0], after=mark)
    mark = person.mark()
    await person.send_text(dm, "oui")
    await forum.wait_bot_text(person, dm, "Merci", after=mark)
    await highlighted(forum, target)
    await holds_everywhere(forum, text.split(":")[0])
    return person, dm, target


async def by_command(forum: Forum, person: TestUser, dm: str, command: str) -> None:
    mark = person.mark()
    await person.send_text(dm, command)
    await forum.wait_bot_text(person, dm, "noté", "quitté", "left", after=mark)


async def leave_every_room(forum: Forum, person: TestUser) -> None:
    for room in forum.forum_rooms:
        await person.leave(room)


async def unmark(forum: Forum, target: str) -> None:
    """The moderator takes back their 📰 (redacts the reaction)."""
    reactions = [
        e
        for e in forum.mod.events
        if e.get("type") == "m.reaction"
        and e.get("sender") == forum.mod.user_id
        and (e["content"].get("m.relates_to") or {}).get("event_id") == target
    ]
    if not reactions:  # not synced back yet: ask the server
        raise AssertionError("the moderator's 📰 reaction was not seen")
    await forum.mod.redact(forum.room(), reactions[-1]["event_id"])


Withdrawal = Callable[[Forum, TestUser, str, str], Awaitable[None]]

#: every way words stop being publishable: (the person's consent, how it ends)
PATHS: dict[str, tuple[str, Withdrawal]] = {
    "!retirer": ("general", lambda f, p, dm, t: by_command(f, p, dm, "!retirer")),
    "!publication non": ("general", lambda f, p, dm, t: by_command(f, p, dm, "!publication non")),
    "!quitter": ("general", lambda f, p, dm, t: by_command(f, p, dm, "!quitter")),
    "leaving the rooms": ("general", lambda f, p, dm, t: leave_every_room(f, p)),
    "redaction": ("general", lambda f, p, dm, t: p.redact(f.room(), t)),
    "!retirer (one quote)": ("quote", lambda f, p, dm, t: by_command(f, p, dm, "!retirer")),
    "unmark": ("quote", lambda f, p, dm, t: unmark(f, t)),
}


@pytest.mark.parametrize("path", list(PATHS))
async def test_withdrawal_path_reaches_each_output(forum: Forum, path: str):
    """One withdrawal path, nothing else happening: each output held the quote, and
    loses it; the store keeps none of the removed words (the erasure ran)."""
    basis, withdraw = PATHS[path]
    key = "".join(c for c in path if c.isalpha()).upper()[:12]
    text = f"CHEMIN-{key}: les cantines scolaires gardent les filles à l'école."
    marker = text.split(":")[0]
    quoted = consenting_quote if basis == "general" else quoted_with_permission
    person, dm, target = await quoted(forum, f"p{key.lower()[:6]}", text)
    await withdraw(forum, person, dm, target)
    await gone_everywhere(forum, marker)

    async def not_stored() -> bool:
        if path == "unmark":  # words allowed for one quote stay, shown nowhere
            async with forum.ctx.db.sessionmaker() as s:
                return await s.get(DigestHighlight, target) is None
        return not any(marker in b for b in await forum.stored_bodies())

    await eventually(not_stored, BOUND_SECONDS, "the store keeps none of the removed words")
    forum.assert_alive()


async def test_a_withdrawal_record_alone_hides_the_quote_everywhere(forum: Forum):
    """Rendering filters by current consent: a withdrawal record written directly, with
    no erasure run (nothing else happening), hides the quote from every output although
    the store still holds the words (a late or lost erasure never shows them)."""
    text = "SEUL-RECORD: les cantines scolaires gardent les filles à l'école."
    person, _, _ = await consenting_quote(forum, "rania", text)
    async with forum.ctx.db.sessionmaker() as s, s.begin():
        await ConsentRecords(s).add(person.user_id, "publication", False, method="test")
    await gone_everywhere(forum, "SEUL-RECORD")
    # nothing else happened: the words are still stored (no erasure ran)
    assert any("SEUL-RECORD" in b for b in await forum.stored_bodies())
    async with forum.ctx.db.sessionmaker() as s:
        assert (await s.scalars(select(DigestHighlight))).first() is not None
    forum.assert_alive()
