"""``/healthz`` shows each background task's last success and last error (503 when a
critical one is stale) and ``/metrics`` serves the service's figures to Prometheus, on
SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Forum, ForumStarter, eventually

pytestmark = pytest.mark.homeserver


async def scrape(forum: Forum) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text, headers = await forum.get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not in {sorted(k for k in samples if k[0] == name)}"
    return float(samples[key])


async def test_metrics_and_task_health(start_forum: ForumStarter, db_url: str) -> None:
    forum = await start_forum("moderation", moderator=True, db_url=db_url)
    # a second service in the same process: each has its own registry
    other = await start_forum("moderation", db_url=None)
    person = await forum.member("counted")
    await forum.command(f"!mute {person.user_id} 1h bruit")
    status, _, _ = await forum.get("/healthz")
    assert status == 200

    samples = await scrape(forum)
    assert value(samples, "forum_events_handled_total", bot="moderation") >= 1
    assert value(samples, "forum_actions_total", bot="moderation", kind="PUT send", outcome="ok")
    assert value(samples, "forum_action_seconds_count", kind="PUT send") >= 1
    assert value(samples, "forum_action_seconds_bucket", kind="PUT send", le="+Inf") >= 1
    assert value(samples, "forum_outbox_depth") >= 0
    assert value(samples, "forum_outbox_oldest_age_seconds") >= 0
    assert value(samples, "forum_sync_lag_seconds", bot="moderation") < 60
    assert value(samples, "forum_task_healthy", task="moderation:mutes", critical="true") == 1
    assert value(samples, "forum_task_last_success_timestamp_seconds", task="outbox") > 0
    assert value(samples, "forum_task_errors_total", task="moderation:mutes") == 0
    assert value(samples, "forum_spam_check_calls_total") == 0
    assert value(samples, "forum_web_requests_total", route="/healthz", status="200") >= 1
    await forum.get("/nowhere/at/all")
    samples = await scrape(forum)
    assert value(samples, "forum_web_requests_total", route="unmatched", status="404") >= 1
    # the other service counted only its own
    theirs = await scrape(other)
    assert ("forum_web_requests_total", (("route", "/healthz"), ("status", "200"))) not in theirs

    status, body, _ = await forum.get("/healthz")
    health = json.loads(body)
    mutes = health["tasks"]["moderation:mutes"]
    assert mutes["critical"] is True
    assert mutes["last_success"] is not None
    assert mutes["last_error"] is None

    # a critical task that keeps failing: its error is shown, and once stale, 503
    async def broken() -> None:
        raise RuntimeError("the disk is full")

    forum.service.tasks.every("test:broken", broken, critical=True, stale_after=1.0)

    async def stale() -> bool:
        status, _, _ = await forum.get("/healthz")
        return status == 503

    await eventually(stale, 15, "/healthz answers 503")
    status, body, _ = await forum.get("/healthz")
    health = json.loads(body)
    assert health["stale"] == ["test:broken"]
    assert "the disk is full" in health["tasks"]["test:broken"]["last_error"]
    assert health["tasks"]["test:broken"]["last_success"] is None
    samples = await scrape(forum)
    assert value(samples, "forum_task_healthy", task="test:broken", critical="true") == 0
    assert value(samples, "forum_task_errors_total", task="test:broken") >= 1
    assert value(samples, "forum_web_requests_total", route="/healthz", status="503") >= 1
