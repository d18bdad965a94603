"""The names ``benchmarks/`` still import from the test helpers of before the harness
(``tests.forum_fixtures``, ``tests.membership_helpers``, ``tests.moderation_helpers``).
Only the benchmarks use them; tests use :mod:`tests.harness`. Remove these modules once
the benchmarks import :mod:`tests.harness` themselves."""

from __future__ import annotations

from typing import Any

from forum.app import Service
from tests.harness import Forum
from tests.matrix_user import Event, TestUser


def forum_of(service: Service) -> Forum:
    """A :class:`Forum` view of a service a benchmark started itself."""
    assert service.ctx is not None
    return Forum(None, service.settings, service.ctx.rooms)  # type: ignore[arg-type]


async def wait_dm(user: TestUser, service: Service, **kw: Any) -> str:
    return await forum_of(service).wait_dm(user, **kw)


async def wait_bot_text(
    user: TestUser, room: str, service: Service, *needles: str, **kw: Any
) -> Event:
    return await forum_of(service).wait_bot_text(user, room, *needles, **kw)


def dm_invites(user: TestUser, service: Service) -> set[str]:
    return forum_of(service).dm_invites(user)
