"""The kernel features receive: the registrations, the rooms, the one retry policy."""

from __future__ import annotations

import pytest

from forum.context import RegistrationClosed, Registrations, Rooms
from forum.errors import BadRequest, HomeserverUnavailable, RateLimited
from forum.events import Message
from forum.retry import retry_call, retrying

ROOMS = {
    "space": "!space",
    "lobby": "!lobby",
    "announcements": "!news",
    "management": "!mgmt",
    "policy": "!policy",
    "topic:droits-enfants": "!children",
    "topic:egalite": "!equality",
}


async def _executor(payload: dict[str, object]) -> None:
    return None


def test_an_outbox_kind_is_registered_once() -> None:
    register = Registrations()
    register.outbox_executor("membership.invite", _executor)
    with pytest.raises(ValueError, match="membership.invite"):
        register.outbox_executor("membership.invite", _executor)
    assert dict(register.outbox_executors) == {"membership.invite": _executor}


def test_nothing_is_registered_once_the_service_started() -> None:
    register = Registrations()
    register.close()
    with pytest.raises(RegistrationClosed):
        register.web_routes(lambda app: None)
    with pytest.raises(RegistrationClosed):
        register.outbox_executor("digest.ask", _executor)


async def test_every_feature_is_asked_whether_it_claims_a_message() -> None:
    register = Registrations()
    asked: list[str] = []

    async def no(message: Message) -> bool:
        asked.append("no")
        return False

    async def yes(message: Message) -> bool:
        asked.append("yes")
        return True

    content = {"msgtype": "m.text", "body": "oui"}
    message = Message(
        room_id="!dm", event_id="$e", sender="@amina:forum.test", type="m.room.message",
        origin_server_ts=0, content=content, raw={"content": content}, body="oui",
    )  # fmt: skip
    assert not await register.claimed(message)
    register.dm_claim(yes)
    register.dm_claim(no)
    assert await register.claimed(message)
    assert asked == ["yes", "no"]


def test_rooms_are_read_only_and_grouped() -> None:
    rooms = Rooms(ROOMS)
    assert rooms["lobby"] == "!lobby"
    assert rooms.get("nowhere") is None
    assert rooms.topic_ids == {"droits-enfants": "!children", "egalite": "!equality"}
    assert sorted(rooms.forum_ids) == sorted(
        ["!space", "!lobby", "!news", "!children", "!equality"]
    )
    with pytest.raises(TypeError):
        rooms["lobby"] = "!other"  # type: ignore[index]
    source = dict(ROOMS)
    copy = Rooms(source)
    source["lobby"] = "!changed"
    assert copy["lobby"] == "!lobby"


class Flaky:
    """Fails with the given errors, then answers."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def _recording_sleep(waits: list[float]):  # type: ignore[no-untyped-def]
    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return sleep


async def test_a_rate_limit_is_waited_out_as_the_homeserver_asks() -> None:
    waits: list[float] = []
    call = Flaky(RateLimited("slow down", 2.5), RateLimited("slow down", 0.25))
    policy = retrying(3, sleep=_recording_sleep(waits))
    assert await retry_call(policy, call) == "ok"
    assert call.calls == 3
    assert waits == [2.5, 0.25]


async def test_an_unreachable_homeserver_is_retried_with_growing_waits_then_given_up() -> None:
    waits: list[float] = []
    retried: list[str] = []
    call = Flaky(*(HomeserverUnavailable(f"down {i}") for i in range(5)))
    policy = retrying(
        3,
        initial=1.0,
        cap=30.0,
        sleep=_recording_sleep(waits),
        on_retry=lambda exc, wait: retried.append(str(exc)),
    )
    with pytest.raises(HomeserverUnavailable, match="down 3"):
        await retry_call(policy, call)
    assert call.calls == 4  # the first try and 3 retries
    assert retried == ["down 0", "down 1", "down 2"]
    assert len(waits) == 3
    # exponential (1, 2, 4 s) with up to 1 s of jitter each
    for wait, base in zip(waits, [1.0, 2.0, 4.0], strict=True):
        assert base <= wait <= base + 1.0


async def test_a_refusal_is_not_retried() -> None:
    call = Flaky(BadRequest("no"))
    with pytest.raises(BadRequest):
        await retry_call(retrying(5, sleep=_recording_sleep([])), call)
    assert call.calls == 1


async def test_without_a_limit_the_policy_tries_until_the_call_succeeds() -> None:
    waits: list[float] = []
    call = Flaky(*(HomeserverUnavailable("down") for _ in range(12)))
    assert await retry_call(retrying(None, cap=2.0, sleep=_recording_sleep(waits)), call) == "ok"
    assert call.calls == 13
    assert max(waits) <= 2.0 + 0.5  # capped, plus jitter
