"""Helpers for the digest tests: a forum with the digest component, members joined to
topic rooms, consent written through the real consent records, and polling with a
timeout for what the public would see."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict
from sqlalchemy import select

from bridge import FEATURE, DigestService
from bridge.models import DigestMessage
from bridge.weeks import week_of
from forum.app import Service, ServiceContext
from forum.consent import ConsentRecords
from forum.errors import MatrixError
from forum.storage.models import utcnow
from tests.forum_fixtures import forum_data, settings_from
from tests.matrix_user import TestUser

TOPIC = "droits-enfants"
OTHER_TOPIC = "egalite-filles"


@dataclass
class DigestForum:
    service: Service
    digest: DigestService

    @property
    def ctx(self) -> ServiceContext:
        assert self.service.ctx is not None
        return self.service.ctx

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.bound_port}"

    def room(self, slug: str = TOPIC) -> str:
        return self.ctx.rooms[f"topic:{slug}"]

    @property
    def server(self) -> str:
        return self.ctx.settings.server_name

    def week(self) -> str:
        return week_of(utcnow(), self.ctx.settings.digest.timezone)

    async def join(self, user: TestUser, *rooms: str) -> None:
        """Invite ``user`` with the moderation bot and join (topic rooms are restricted)."""
        for room in rooms or (self.room(),):
            # already invited: moderators are invited by provisioning
            with contextlib.suppress(MatrixError):
                await self.ctx.moderation_gateway.invite(room, user.user_id)
            await user.join(room, via=[self.server])

    async def consent(self, user: TestUser | str, granted: bool = True) -> None:
        user_id = user if isinstance(user, str) else user.user_id
        async with self.ctx.db.sessionmaker() as s, s.begin():
            await ConsentRecords(s).add(user_id, "publication", granted, method="test")

    async def stored_bodies(self) -> list[str]:
        async with self.ctx.db.sessionmaker() as s:
            rows = await s.execute(select(DigestMessage.body, DigestMessage.html))
            return [f"{b} {h or ''}" for b, h in rows]

    async def get(self, path: str, **kw: Any) -> tuple[int, str, CIMultiDict[str]]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(self.url + path, allow_redirects=False, **kw) as resp,
        ):
            return resp.status, await resp.text(), resp.headers.copy()


async def start_digest_forum(
    synapse: Any,
    start_forum: Callable[..., Awaitable[Service]],
    *,
    moderators: list[str] = (),  # type: ignore[assignment]
    editors: list[str] = (),  # type: ignore[assignment]
    db_url: str | None = None,
    public_url: str | None = None,
    **digest: Any,
) -> DigestForum:
    data = forum_data(synapse, moderators=list(moderators), db_url=db_url)
    data.setdefault("digest", {})
    data["digest"]["editors"] = list(editors)
    data["digest"].update(digest)
    if public_url:
        data.setdefault("web", {})["public_url"] = public_url
    service = await start_forum(settings_from(data), features=[FEATURE])
    return DigestForum(service, service.feature("digest"))


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 30, what: str = "condition"
) -> None:
    """Poll ``check`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.2)
