"""The spam checker's listener through aiohttp's test client on the real factory, with
rules given here: the protocol of synapse-http-antispam (answers, ping, the secret) and
fail-open on slowness, errors and bad input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from forum.metrics import Metrics
from forum.tasks import TaskSupervisor
from moderation.antispam.judge import ALLOW, Verdict
from moderation.antispam.server import Checker, create_antispam_app


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    calls: list[tuple[str, Mapping[str, Any]]] = []

    async def decide(callback: str, body: Mapping[str, Any]) -> Verdict:
        calls.append((callback, body))
        if body.get("slow"):
            await asyncio.sleep(5)
        if body.get("boom"):
            raise RuntimeError("rules failed")
        if body.get("spam"):
            return Verdict("M_FORBIDDEN", "non", rule="word")
        return ALLOW

    metrics = Metrics(TaskSupervisor())
    app = create_antispam_app(Checker(decide, "s3cret", 0.2, metrics))
    async with TestClient(TestServer(app)) as c:
        c.calls = calls  # type: ignore[attr-defined]
        c.metrics = metrics  # type: ignore[attr-defined]
        yield c


AUTH = {"Authorization": "Bearer s3cret"}


async def test_listener_protocol(client: Any):
    resp = await client.post("/check_event_for_spam", json={"event": {}}, headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {}
    resp = await client.post("/check_event_for_spam", json={"spam": True}, headers=AUTH)
    assert resp.status == 403
    assert await resp.json() == {"errcode": "M_FORBIDDEN", "error": "non"}
    resp = await client.post("/ping", json={"id": "x1"}, headers=AUTH)
    assert await resp.json() == {"id": "x1", "status": "ok"}
    registry = client.metrics.registry
    assert registry.get_sample_value("forum_spam_check_calls_total") == 2
    assert (
        registry.get_sample_value(
            "forum_spam_check_refusals_total", {"callback": "check_event_for_spam", "rule": "word"}
        )
        == 1
    )


@pytest.mark.parametrize("header", [None, "Bearer wrong", "s3cret", "Bearer s3cretX"])
async def test_listener_refuses_a_wrong_secret(client: Any, header: str | None):
    headers = {"Authorization": header} if header is not None else {}
    resp = await client.post("/check_event_for_spam", json={"spam": True}, headers=headers)
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_UNAUTHORIZED"
    assert client.calls == []


async def test_listener_fails_open_on_slowness_errors_and_bad_input(client: Any):
    resp = await client.post("/check_event_for_spam", json={"slow": True}, headers=AUTH)
    assert resp.status == 200  # the deadline passed: let through, counted
    assert client.metrics.registry.get_sample_value("forum_spam_check_timeouts_total") == 1
    resp = await client.post("/check_event_for_spam", json={"boom": True}, headers=AUTH)
    assert resp.status == 200
    resp = await client.post("/check_event_for_spam", data=b"{not json", headers=AUTH)
    assert resp.status == 200
