"""The listener synapse-http-antispam calls: ``POST /<callback>`` with a JSON body and
``Authorization: Bearer <secret>``; ``POST /ping`` answered ``{"id": ..., "status":
"ok"}``.

An answer 200 ``{}`` lets the action through; any other status with ``{"errcode": ...,
"error": ...}`` refuses it, and Synapse hands that error to the person's client. A wrong
or missing secret gets 401. The forum never holds Synapse up: a verdict not reached
within ``deadline`` seconds (or a failure of the rules) lets the action through, as the
module does when the forum does not answer; the bot's protections act afterwards.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from forum.metrics import Metrics

from .judge import ALLOW, Verdict

log = logging.getLogger(__name__)

CALLBACK_RE = re.compile(r"^[a-z0-9_]{1,64}$")
Decide = Callable[[str, Mapping[str, Any]], Awaitable[Verdict]]


@dataclass(frozen=True)
class Checker:
    """What the listener needs: the rules, the secret, the deadline and the metrics."""

    decide: Decide
    secret: str
    deadline: float
    metrics: Metrics | None = None


CHECKER = web.AppKey("antispam_checker", Checker)


def _unauthorized() -> web.Response:
    return web.json_response(
        {"errcode": "M_UNAUTHORIZED", "error": "Missing or wrong Authorization header"},
        status=401,
    )


async def _callback(request: web.Request) -> web.Response:
    checker = request.app[CHECKER]
    expected = f"Bearer {checker.secret}".encode()
    given = request.headers.get("Authorization", "").encode()
    if not hmac.compare_digest(given, expected):
        return _unauthorized()
    callback = request.match_info["callback"]
    try:
        body = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError):
        log.warning("antispam: %s with a body that is not JSON; let through", callback)
        body = {}
    if not isinstance(body, dict):
        body = {}
    if callback == "ping":
        return web.json_response({"id": body.get("id"), "status": "ok"})
    if not CALLBACK_RE.match(callback):
        return web.json_response({})
    metrics = checker.metrics
    if metrics is not None:
        metrics.spam_checks.inc()
    started = time.perf_counter()
    try:
        verdict = await asyncio.wait_for(checker.decide(callback, body), checker.deadline)
    except TimeoutError:
        log.warning(
            "antispam: no verdict on %s within %.2f s; let through", callback, checker.deadline
        )
        if metrics is not None:
            metrics.spam_check_timeouts.inc()
        verdict = ALLOW
    except Exception:
        log.exception("antispam: the rules failed on %s; let through", callback)
        verdict = ALLOW
    if metrics is not None:
        metrics.spam_check_seconds.observe(time.perf_counter() - started)
    if verdict.allowed:
        return web.json_response({})
    if metrics is not None:
        metrics.spam_refusals.labels(callback, verdict.rule or "other").inc()
    return web.json_response(verdict.as_json(), status=403)


def create_antispam_app(checker: Checker) -> web.Application:
    app = web.Application(client_max_size=1024**2)
    app[CHECKER] = checker
    app.router.add_post("/{callback}", _callback)
    return app


class AntispamListener:
    """The listener on loopback; :meth:`start` binds it, :meth:`stop` closes it."""

    def __init__(self, checker: Checker, host: str, port: int) -> None:
        self.checker = checker
        self.host = host
        self.port = port
        self.runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    @property
    def running(self) -> bool:
        return self.runner is not None

    async def start(self) -> None:
        if self.runner is not None:
            return
        runner = web.AppRunner(create_antispam_app(self.checker), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.runner = runner
        addresses = runner.addresses  # the bound port, also when 0 was asked
        self.bound_port = int(addresses[0][1]) if addresses else self.port
        log.info("spam checker listening on %s:%s", self.host, self.bound_port)

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()
