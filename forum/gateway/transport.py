"""One checked request to the homeserver.

:class:`Transport` owns matrix-nio's ``AsyncClient`` (its HTTP session and login). Every
request goes through :meth:`Transport.request`, which maps errors to :mod:`forum.errors`
and retries 429 (honouring ``retry_after_ms``) and 5xx / connection failures a bounded
number of times, under the one retry policy of :mod:`forum.retry`. The requests nio makes
itself (the encryption keys', :mod:`.crypto`) go through :meth:`Transport.nio` for the
same mapping and the same retries.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import aiohttp
from nio import AsyncClient, AsyncClientConfig, ErrorResponse, LoginError, LoginResponse
from tenacity import AsyncRetrying

from forum.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    HomeserverUnavailable,
    MatrixError,
    NotFound,
    RateLimited,
    Unauthorized,
)
from forum.retry import is_rate_limit, is_transient, retry_call, retrying

log = logging.getLogger(__name__)

CLIENT_V3 = "/_matrix/client/v3"
CLIENT_V1 = "/_matrix/client/v1"


@dataclass
class GatewayStats:
    requests: int = 0
    writes: int = 0
    retries: int = 0
    events_dispatched: int = 0
    handler_failures: int = 0
    bookkeeping_retries: int = 0
    last_synced: float | None = None
    """Unix time when a ``/sync`` batch was last handled and its token stored."""
    by_endpoint: dict[str, int] = field(default_factory=dict)


RequestObserver = Callable[[str, float, str], None]
"""Called after each request with its kind (:func:`action_kind`), its duration in seconds
(retries included) and its outcome ("ok" or the error's class name)."""


def action_kind(method: str, path: str) -> str:
    """A request's kind, with no id in it (a bounded label for metrics): ``PUT send``,
    ``POST kick``, ``PUT state``, ``GET sync``..."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if not parts:
        return method
    name = parts[2] if parts[0] == "rooms" and len(parts) > 2 else parts[0]
    return f"{method} {name}"


class RequestOptions(TypedDict, total=False):
    """The keyword options of :meth:`Transport.request`."""

    query: Mapping[str, str | int | Iterable[str]] | None
    body: Any
    api: str
    timeout: float | None
    retry_unavailable: bool
    raw_body: bytes | None
    content_type: str


def path(*parts: str) -> str:
    """A request path from its segments, each one percent-encoded."""
    return "/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)


@dataclass(eq=False)
class Transport:
    """The HTTP side of one account: checked requests, retries, transaction ids."""

    homeserver_url: str
    user_id: str
    _: KW_ONLY
    stats: GatewayStats
    request_timeout: float
    max_retries: int
    _client: AsyncClient = field(init=False, repr=False)
    _txn: itertools.count[int] = field(init=False, default_factory=itertools.count)
    _txn_prefix: str = field(init=False, default_factory=lambda: secrets.token_hex(6))
    observer: RequestObserver | None = field(init=False, default=None)
    store_path: Path | None = None
    """Where the end-to-end encryption store lives (:mod:`.crypto`); None: no encryption."""
    pickle_key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self._client = AsyncClient(
            self.homeserver_url,
            self.user_id,
            store_path=str(self.store_path) if self.store_path else "",
            config=AsyncClientConfig(
                max_limit_exceeded=0,
                max_timeouts=0,
                request_timeout=self.request_timeout,
                store_sync_tokens=False,
                encryption_enabled=self.store_path is not None,
                pickle_key=self.pickle_key or "DEFAULT_KEY",
            ),
        )

    @property
    def client(self) -> AsyncClient:
        """nio's client (its HTTP session, and its Olm machine for :mod:`.crypto`)."""
        return self._client

    @property
    def access_token(self) -> str | None:
        return self._client.access_token or None

    @access_token.setter
    def access_token(self, token: str | None) -> None:
        self._client.access_token = token or ""

    def txn_id(self) -> str:
        return f"forum-{self._txn_prefix}-{time.monotonic_ns()}-{next(self._txn)}"

    async def close(self) -> None:
        await self._client.close()

    async def password_login(
        self, password: str, device_name: str, device_id: str | None = None
    ) -> tuple[str, str]:
        """Log in with the password (as ``device_id`` when given: the same device and
        keys again); return ``(device_id, access_token)``."""
        if device_id:
            self._client.device_id = device_id

        async def login_once() -> LoginResponse | LoginError:
            with unreachable_is_unavailable("login"):
                return await self._client.login(password, device_name=device_name)

        resp = await retry_call(self._policy(retry_unavailable=True), login_once)
        if not isinstance(resp, LoginResponse):
            status = getattr(resp, "status_code", None)
            raise Unauthorized(
                f"login of {self.user_id} failed: {getattr(resp, 'message', resp)}",
                errcode=str(status),
            )
        return resp.device_id, resp.access_token

    def _policy(self, *, retry_unavailable: bool) -> AsyncRetrying:
        return retrying(
            self.max_retries,
            retryable=is_transient if retry_unavailable else is_rate_limit,
            on_retry=self._note_retry,
        )

    def _note_retry(self, error: BaseException, wait: float) -> None:
        self.stats.retries += 1
        if isinstance(error, RateLimited):
            log.info("rate limited on %s; waiting %d ms", error, wait * 1000)

    async def nio(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """One of nio's own requests (``call`` makes it again at each try), checked
        (:func:`checked`) and retried as :meth:`request` retries: nio is configured not to
        retry by itself, and a homeserver too slow to answer raises a timeout from it."""

        async def once() -> Any:
            with unreachable_is_unavailable(what):
                resp = await call()
            if isinstance(resp, list):  # several requests at once (to-device messages)
                for one in resp:
                    checked(one, what)
                return resp
            return checked(resp, what)

        return await retry_call(self._policy(retry_unavailable=True), once)

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | Iterable[str]] | None = None,
        body: Any = None,
        api: str = CLIENT_V3,
        timeout: float | None = None,
        retry_unavailable: bool = True,
        raw_body: bytes | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """Send one request; return its JSON; raise a typed error.

        429 is retried after ``retry_after_ms`` and 5xx / connection failures (unless not
        ``retry_unavailable``) with exponential backoff, at most ``max_retries`` times.
        """
        full = api + path
        if query:
            pairs: list[tuple[str, str]] = []
            for k, v in query.items():
                if isinstance(v, str | int):
                    pairs.append((k, str(v)))
                else:
                    pairs.extend((k, str(x)) for x in v)
            full += "?" + urllib.parse.urlencode(pairs)
        headers = {"Content-Type": content_type}
        if self._client.access_token:
            headers["Authorization"] = f"Bearer {self._client.access_token}"
        data: bytes | str | None = raw_body
        if data is None and body is not None:
            data = json.dumps(body)
        self.stats.requests += 1
        if method != "GET":
            self.stats.writes += 1
        key = f"{method} {path.split('/')[1] if '/' in path else path}"
        self.stats.by_endpoint[key] = self.stats.by_endpoint.get(key, 0) + 1
        label = f"{method} {path}"

        async def send_once() -> dict[str, Any]:
            with unreachable_is_unavailable(label):
                resp = await self._client.send(
                    method,
                    full,
                    data,
                    headers,
                    timeout=timeout if timeout is not None else self.request_timeout,
                )
                async with resp:
                    status = resp.status
                    text = await resp.text()
                    retry_header = resp.headers.get("Retry-After")
            try:
                payload = json.loads(text) if text else {}
            except ValueError:
                payload = {}
            if not isinstance(payload, dict):
                payload = {"value": payload}
            if 200 <= status < 300:
                return payload
            raise _error_for(status, payload, text, retry_header, label)

        started, outcome = time.monotonic(), "ok"
        try:
            return await retry_call(self._policy(retry_unavailable=retry_unavailable), send_once)
        except MatrixError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            if self.observer is not None:
                self.observer(action_kind(method, path), time.monotonic() - started, outcome)


@contextlib.contextmanager
def unreachable_is_unavailable(label: str) -> Iterator[None]:
    """A dropped connection, or a homeserver too slow to answer, raised as
    :class:`HomeserverUnavailable` (which the retry policy retries)."""
    try:
        yield
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise HomeserverUnavailable(
            f"{label}: homeserver unreachable ({exc.__class__.__name__})"
        ) from exc


def checked(resp: Any, what: str) -> Any:
    """nio's response, or the typed error of :mod:`forum.errors` it stands for (as
    :meth:`Transport.request` types a failed request)."""
    if not isinstance(resp, ErrorResponse):
        return resp
    transport = resp.transport_response
    status = int(getattr(transport, "status", 0) or 0)
    payload: dict[str, Any] = {"errcode": str(resp.status_code or "") or None}
    payload["error"] = resp.message
    if resp.retry_after_ms is not None:
        payload["retry_after_ms"] = resp.retry_after_ms
    if not status:  # nio says the errcode only
        code = str(resp.status_code or "")
        status = 429 if code == "M_LIMIT_EXCEEDED" else (int(code) if code.isdigit() else 0)
        status = status or (500 if not code else 400)
    raise _error_for(status, payload, resp.message or "", None, what)


def _error_for(
    status: int, payload: dict[str, Any], text: str, retry_header: str | None, label: str
) -> MatrixError:
    errcode = payload.get("errcode") if isinstance(payload.get("errcode"), str) else None
    message = f"{label}: {payload.get('error') or text[:200] or f'HTTP {status}'}"
    kw: dict[str, Any] = {"status": status, "errcode": errcode}
    if status == 429 or errcode == "M_LIMIT_EXCEEDED":
        retry_ms = payload.get("retry_after_ms")
        if not isinstance(retry_ms, int | float):
            retry_ms = (
                float(retry_header) * 1000 if retry_header and retry_header.isdigit() else 1000
            )
        return RateLimited(message, retry_ms / 1000, **kw)
    if status >= 500:
        return HomeserverUnavailable(message, **kw)
    if status == 401 or errcode in {"M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"}:
        return Unauthorized(message, **kw)
    if status == 403 or errcode == "M_FORBIDDEN":
        return Forbidden(message, **kw)
    if status == 404 or errcode == "M_NOT_FOUND":
        return NotFound(message, **kw)
    if status == 409 or errcode == "M_ROOM_IN_USE":
        return Conflict(message, **kw)
    if status == 400:
        return BadRequest(message, **kw)
    return MatrixError(message, **kw)
