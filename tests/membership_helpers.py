"""Helpers for the membership bot's tests: a forum with the membership component, people
walking through the flow as a Matrix client would, and a process entry point for the
crash test (``python -m tests.membership_helpers serve CONFIG HOME [--crash-after-consent]``)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from forum.app import Service
from forum.consent import ConsentRecord, ConsentRecords
from forum.context import Feature, ServiceContext
from forum.homeserver import EmbeddedHomeserver
from forum.settings import Settings
from forum.signals import MEMBER_LEFT, PUBLICATION_GRANTED, PUBLICATION_WITHDRAWN
from moderation.membership import feature
from moderation.membership.models import People, PersonRow
from tests.forum_fixtures import CONFIG_DIR, register_bots
from tests.matrix_user import TestUser

Event = dict[str, Any]


@dataclass
class SignalLog:
    seen: list[tuple[str, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def attach(self, service: Service) -> None:
        assert service.ctx is not None
        for name in (PUBLICATION_GRANTED, PUBLICATION_WITHDRAWN, MEMBER_LEFT):
            service.ctx.signals.connect(name, self._receiver(name))

    def _receiver(self, name: str) -> Any:
        async def receive(user_id: str, **_: Any) -> None:
            self.seen.append((name, user_id))
            self.changed.set()

        return receive

    async def wait(self, name: str, user_id: str, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while (name, user_id) not in self.seen:
                self.changed.clear()
                await self.changed.wait()


def config_dir_with_charters(tmp: Path, versions: Iterable[int] = (1,)) -> Path:
    """A config directory holding charter versions (v2+ are v1 with an added rule)."""
    for lang in ("fr", "en"):
        src = (CONFIG_DIR / "charter" / lang / "v1.md").read_text(encoding="utf-8")
        target = tmp / "charter" / lang
        target.mkdir(parents=True, exist_ok=True)
        for v in versions:
            extra = (
                ""
                if v == 1
                else f"\n\n7. **Version {v}.** "
                + ("Nous citons nos sources." if lang == "fr" else "We cite our sources.")
            )
            (target / f"v{v}.md").write_text(src + extra, encoding="utf-8")
    return tmp


async def start_service(
    hs: EmbeddedHomeserver,
    settings: Settings,
    home: Path,
    *,
    config_dir: Path = CONFIG_DIR,
    **options: Any,
) -> Service:
    """A whole forum with the membership component (``options`` tune the bot)."""
    await register_bots(hs, settings)
    await asyncio.to_thread(home.mkdir, parents=True, exist_ok=True)
    opts = {"deadline_poll_seconds": 0.5, **options}
    service = Service(
        settings,
        config_dir=config_dir,
        home=home,
        features=[feature(**opts)],
        web_port=0,
    )
    try:
        await service.start()
    except BaseException:
        await service.stop()
        raise
    return service


def bot_id(service: Service) -> str:
    return service.settings.membership_bot_id


def via(service: Service) -> list[str]:
    return [service.settings.server_name]


async def wait_dm(user: TestUser, service: Service, timeout: float = 20, after: int = 0) -> str:
    """The DM room the membership bot invites ``user`` to (joined); returns its id."""
    forum_rooms = set(service.result.room_ids.values()) if service.result else set()

    def is_dm_invite(e: Event) -> bool:
        return (
            e["_section"] == "invite"
            and e["type"] == "m.room.member"
            and e["state_key"] == user.user_id
            and e["sender"] == bot_id(service)
            and e["room_id"] not in forum_rooms
        )

    ev = await user.wait_for(is_dm_invite, timeout, after=after)
    room = str(ev["room_id"])
    await user.join(room, via=[service.settings.server_name])
    return room


def dm_invites(user: TestUser, service: Service) -> set[str]:
    forum_rooms = set(service.result.room_ids.values()) if service.result else set()
    return {
        e["room_id"]
        for e in user.events
        if e.get("_section") == "invite"
        and e.get("type") == "m.room.member"
        and e.get("state_key") == user.user_id
        and e.get("sender") == bot_id(service)
        and e.get("room_id") not in forum_rooms
    }


async def open_dm_with_bot(user: TestUser, service: Service) -> str:
    """The person opens a DM with the welcome bot (door 3) and gets the language question."""
    room = await user.create_room(
        is_direct=True, invite=[bot_id(service)], preset="trusted_private_chat"
    )
    await wait_bot_text(user, room, service, "Which language")
    return room


async def wait_bot_text(
    user: TestUser, room: str, service: Service, *needles: str, timeout: float = 20, after: int = 0
) -> Event:
    """A message of the bot in ``room`` whose body contains one of ``needles``."""

    def match(e: Event) -> bool:
        body = str(e["content"].get("body", ""))
        return (
            e["room_id"] == room
            and e["type"] == "m.room.message"
            and e["sender"] == bot_id(service)
            and any(n in body for n in needles)
        )

    return await user.wait_for(match, timeout, after=after)


CHARTER_FR = "Charte de l'Espace commun"
CHARTER_EN = "Charter of the Common space"
PUBLICATION_Q = ("résumé public", "public digest")
INVITED = ("Vous êtes invité", "You are invited")


async def wait_invites(user: TestUser, service: Service, timeout: float = 30) -> None:
    """Wait for invites to the Space and every topic room."""
    assert service.ctx is not None
    for room in [service.ctx.rooms["space"], *service.ctx.rooms.topic_ids.values()]:
        await user.wait_for_invite(room, timeout)


async def person(service: Service, user_id: str) -> PersonRow | None:
    assert service.ctx is not None
    async with service.ctx.db.sessionmaker() as s:
        return await People(s).get(user_id)


async def history(service: Service, user_id: str) -> list[ConsentRecord]:
    assert service.ctx is not None
    async with service.ctx.db.sessionmaker() as s:
        return await ConsentRecords(s).history(user_id)


async def admit(
    user: TestUser, service: Service, *, publication: bool = True, knock: str = "Bonjour"
) -> str:
    """Walk ``user`` through the whole flow by a knock on the Space; returns the DM room."""
    assert service.ctx is not None
    mark = user.mark()
    await user.knock(service.ctx.rooms["space"], knock, via=via(service))
    room = await wait_dm(user, service, after=mark)
    await wait_bot_text(user, room, service, CHARTER_FR, CHARTER_EN)
    mark = user.mark()
    await user.send_text(room, "oui")
    await wait_bot_text(user, room, service, *PUBLICATION_Q, after=mark)
    await user.send_text(room, "oui" if publication else "non")
    await wait_invites(user, service)
    return room


# --- a real process for the crash test ------------------------------------------------------


def _crashing(base: Feature) -> Feature:
    """``base`` whose bot kills its own process (SIGKILL) right after committing a
    publication answer with its outbox items, before anything is sent (the crash test)."""

    async def setup(ctx: ServiceContext) -> Any:
        bot = await base.setup(ctx)
        record = bot.conversation.record_publication

        async def record_then_die(*args: Any, **kwargs: Any) -> None:
            await record(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        bot.conversation.record_publication = record_then_die
        return bot

    return replace(base, setup=setup)


async def _serve(config: str, home: str, *, crash_after_consent: bool = False) -> None:
    import logging

    from forum.settings import load_settings

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    settings = load_settings(config, env={})
    membership = feature(deadline_poll_seconds=1)
    service = Service(
        settings,
        config_dir=CONFIG_DIR,
        home=Path(home),
        features=[_crashing(membership) if crash_after_consent else membership],
        web_port=0,
    )
    await service.start()
    print("READY", flush=True)
    try:
        await service.wait_failed()
    finally:
        await service.stop()


def copy_charters(dst: Path) -> None:
    shutil.copytree(CONFIG_DIR / "charter", dst / "charter", dirs_exist_ok=True)


CRASH_FLAG = "--crash-after-consent"

if __name__ == "__main__":
    if len(sys.argv) in {4, 5} and sys.argv[1] == "serve" and sys.argv[4:] in ([], [CRASH_FLAG]):
        asyncio.run(_serve(sys.argv[2], sys.argv[3], crash_after_consent=len(sys.argv) == 5))
    else:
        print(
            f"usage: python -m tests.membership_helpers serve CONFIG HOME [{CRASH_FLAG}]",
            file=sys.stderr,
        )
        sys.exit(2)
