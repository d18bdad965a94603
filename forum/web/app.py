"""The public web app: a factory, typed state, pages in the reader's language.

Pages are light (one small cached stylesheet, no JavaScript, no third-party request) for
readers on cheap phones and costly mobile data. Later parts (the digest) add their routes
through ``extensions`` and render templates that extend ``base.html`` with
:func:`render_page`, which gives them the language links, ETag, caching and security
headers for free.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from aiohttp.helpers import ETag
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from forum.i18n import I18n
from forum.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from forum.metrics import Metrics
from forum.settings import Settings
from forum.tasks import TaskSupervisor

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
TEMPLATE_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"

PAGE_CACHE_CONTROL = "public, max-age=300"
STATIC_CACHE_LONG = "public, max-age=31536000, immutable"
STATIC_CACHE_SHORT = "public, max-age=300"
HEALTH_TIMEOUT_SECONDS = 2.0

SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Ping = Callable[[], Awaitable[bool]]
Extension = Callable[[web.Application], None]


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    digest: str


class Renderer:
    """Jinja2 environments, one per language, with that language's translations installed.

    Autoescape is on for HTML and XML templates. ``add_loader`` lets an extension make its
    own templates available (searched before the built-in ones).
    """

    def __init__(self, i18n: I18n, static_url: Callable[[str], str]) -> None:
        self._i18n = i18n
        self._loader = jinja2.ChoiceLoader([jinja2.FileSystemLoader(TEMPLATE_DIR)])
        self._envs: dict[str, jinja2.Environment] = {}
        self._static_url = static_url

    def add_loader(self, loader: jinja2.BaseLoader) -> None:
        self._loader.loaders = [loader, *self._loader.loaders]

    def environment(self, lang: str) -> jinja2.Environment:
        env = self._envs.get(lang)
        if env is None:
            env = jinja2.Environment(
                loader=self._loader,
                autoescape=jinja2.select_autoescape(["html", "xml"]),
                undefined=jinja2.StrictUndefined,
                extensions=["jinja2.ext.i18n"],
                trim_blocks=True,
                lstrip_blocks=True,
            )
            env.policies["ext.i18n.trimmed"] = True
            env.install_gettext_translations(  # type: ignore[attr-defined]
                self._i18n.translations(lang), newstyle=True
            )
            i18n = self._i18n
            env.filters["date"] = lambda d, fmt="long": i18n.format_date(d, lang, fmt)
            env.filters["datetime"] = lambda d, fmt="medium": i18n.format_datetime(d, lang, fmt)
            env.globals["static_url"] = self._static_url
            self._envs[lang] = env
        return env

    def render(self, template: str, lang: str, **context: Any) -> str:
        return self.environment(lang).get_template(template).render(lang=lang, **context)


SETTINGS_KEY = web.AppKey("settings", Settings)
I18N_KEY = web.AppKey("i18n", I18n)
RENDERER_KEY = web.AppKey("renderer", Renderer)
STATIC_KEY = web.AppKey("static_files", dict[str, StaticFile])
PINGS_KEY = web.AppKey("pings", dict[str, Ping])
TASKS_KEY = web.AppKey("tasks", TaskSupervisor)
METRICS_KEY = web.AppKey("metrics", Metrics)
Refresh = Callable[[], Awaitable[None]]
REFRESH_METRICS_KEY: web.AppKey[Refresh] = web.AppKey("refresh_metrics")
LeaseView = Callable[[], dict[str, Any]]
LEASE_KEY: web.AppKey[LeaseView] = web.AppKey("lease")


# --- helpers for handlers (also used by extensions) --------------------------------------


def language_of(request: web.Request) -> str:
    """The page's language: the first path segment if it is one of ours, else negotiated."""
    i18n = request.app[I18N_KEY]
    first = request.path.lstrip("/").split("/", 1)[0]
    if first in i18n.languages:
        return first
    return i18n.negotiate(request.headers.get("Accept-Language"))


def page_language(request: web.Request) -> str:
    """``{lang}`` from the route, or 404 when it is not one of the forum's languages."""
    lang = request.match_info.get("lang", "")
    if lang not in request.app[I18N_KEY].languages:
        raise web.HTTPNotFound()
    return lang


def _language_links(request: web.Request, lang: str) -> list[dict[str, str]]:
    i18n = request.app[I18N_KEY]
    segments = request.path.lstrip("/").split("/", 1)
    rest = segments[1] if len(segments) > 1 and segments[0] == lang else ""
    return [
        {"lang": other, "name": i18n.language_name(other), "url": f"/{other}/{rest}"}
        for other in i18n.languages
    ]


def render_page(
    request: web.Request,
    template: str,
    lang: str,
    *,
    status: int = 200,
    **context: Any,
) -> web.Response:
    """Render ``template`` (which extends ``base.html``) into an HTML response."""
    settings = request.app[SETTINGS_KEY]
    root = site_url(request)
    base: dict[str, Any] = {
        "forum_name": settings.text(settings.forum.name, lang),
        "forum_description": settings.text(settings.forum.description, lang),
        "language_links": _language_links(request, lang),
        "site_url": root,
        "page_url": root + request.path.lstrip("/"),
    }
    base.update(context)
    body = request.app[RENDERER_KEY].render(template, lang, **base)
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Language": lang},
    )


def matrix_to(alias_id: str) -> str:
    """A matrix.to link that opens a room in any Matrix client.

    The ``#`` of an alias is written ``%23``: a second ``#`` in a URL's fragment is not
    valid HTML (the Nu HTML Checker refuses it), and matrix.to reads both."""
    return "https://matrix.to/#/" + urllib.parse.quote(alias_id, safe="@:!$")


def site_url(request: web.Request) -> str:
    """The site's absolute root (``web.public_url`` when set), ending with ``/``."""
    public = request.app[SETTINGS_KEY].web.public_url
    if public:
        return public.rstrip("/") + "/"
    return f"{request.scheme}://{request.host}/"


def join_context(settings: Settings, lang: str) -> dict[str, Any]:
    """What the "How to join" section shows: the lobby (name, alias, matrix.to link)."""
    lobby = settings.rooms.lobby
    alias = settings.alias_id(lobby.alias)
    return {
        "lobby": {
            "name": settings.text(lobby.name, lang),
            "alias": alias,
            "url": matrix_to(alias),
        }
    }


# --- handlers -------------------------------------------------------------------------


async def root(request: web.Request) -> web.StreamResponse:
    lang = request.app[I18N_KEY].negotiate(request.headers.get("Accept-Language"))
    raise web.HTTPFound(
        f"/{lang}/",
        headers={"Vary": "Accept-Language", "Cache-Control": "private, max-age=300"},
    )


async def home(request: web.Request) -> web.StreamResponse:
    lang = page_language(request)
    settings = request.app[SETTINGS_KEY]
    topics = [
        {
            "slug": t.slug,
            "name": settings.text(t.name, lang),
            "topic": settings.text(t.topic, lang),
            "alias": settings.alias_id(t.effective_alias),
            "url": matrix_to(settings.alias_id(t.effective_alias)),
        }
        for t in settings.topics
    ]
    return render_page(request, "home.html", lang, topics=topics, **join_context(settings, lang))


async def _check(name: str, ping: Ping, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            return bool(await ping())
    except TimeoutError:
        log.warning("health check %s: no answer within %.1f s", name, timeout)
    except Exception as exc:  # a failing check means "down", whatever the reason
        log.warning("health check %s failed: %s: %s", name, type(exc).__name__, exc)
    return False


async def healthz(request: web.Request) -> web.StreamResponse:
    """The homeserver and the database answer; with the service's tasks, each one's last
    success and last error under ``tasks``; this process's ``role`` (``active`` or
    ``standby``) and the ``lease``'s holder. 503 when something is down, a critical task
    is stale, the process stepped down or (``?active``) it is not the active one."""
    pings = request.app[PINGS_KEY]
    names = list(pings)
    results = await asyncio.gather(
        *(_check(name, pings[name], HEALTH_TIMEOUT_SECONDS) for name in names)
    )
    body: dict[str, Any] = {
        name: ("ok" if ok else "down") for name, ok in zip(names, results, strict=True)
    }
    healthy = all(results)
    lease = request.app.get(LEASE_KEY)
    if lease is not None:
        described = lease()
        body["role"] = described["role"]
        body["lease"] = described
        # a load balancer sending the traffic to the active process asks /healthz?active
        if described["role"] == "stepped-down" or (
            "active" in request.query and described["role"] != "active"
        ):
            healthy = False
    tasks = request.app.get(TASKS_KEY)
    if tasks is not None and body.get("role") != "standby":  # a standby runs no task
        now = time.time()
        body["tasks"] = {name: h.as_dict(now) for name, h in sorted(tasks.health.items())}
        stale = tasks.unhealthy(now)
        if stale:
            body["stale"] = stale
            healthy = False
    return web.json_response(
        body, status=200 if healthy else 503, headers={"Cache-Control": "no-store"}
    )


async def metrics_page(request: web.Request) -> web.StreamResponse:
    """The service's figures in Prometheus' text format."""
    refresh = request.app.get(REFRESH_METRICS_KEY)
    if refresh is not None:
        try:
            await asyncio.wait_for(refresh(), HEALTH_TIMEOUT_SECONDS)
        except Exception as exc:  # the figures read live are shown; the stored ones wait
            log.warning("metrics: cannot read the database: %s: %s", type(exc).__name__, exc)
    body = request.app[METRICS_KEY].render()
    return web.Response(
        body=body, headers={"Content-Type": METRICS_CONTENT_TYPE, "Cache-Control": "no-store"}
    )


async def static(request: web.Request) -> web.StreamResponse:
    files = request.app[STATIC_KEY]
    item = files.get(request.match_info["name"])
    if item is None:
        raise web.HTTPNotFound()
    versioned = request.query.get("v") == item.digest
    headers = CIMultiDict({"Cache-Control": STATIC_CACHE_LONG if versioned else STATIC_CACHE_SHORT})
    response = web.Response(body=item.body, content_type=item.content_type, headers=headers)
    response.etag = item.digest
    return response


def _load_static(directory: Path) -> dict[str, StaticFile]:
    files: dict[str, StaticFile] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        body = path.read_bytes()
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        files[path.name] = StaticFile(body, content_type, hashlib.sha256(body).hexdigest()[:16])
    return files


# --- middlewares and signals ----------------------------------------------------------

_ERROR_JSON_PATHS = re.compile(r"^/(healthz$|api(/|$))")


def _wants_json(request: web.Request) -> bool:
    return bool(_ERROR_JSON_PATHS.match(request.path))


def _error_texts(request: web.Request, lang: str, status: int) -> tuple[str, str]:
    _ = request.app[I18N_KEY].gettext(lang)
    if status == 404:
        return _("Page not found"), _(
            "There is no page at this address. It may have moved, or the link may be wrong."
        )
    if status == 405:
        return _("Not allowed"), _("This page cannot be used this way.")
    if status >= 500:
        return _("Something went wrong"), _(
            "The server could not show this page. Please try again in a few minutes."
        )
    return _("Request not understood"), _("The server could not understand this request.")


def _error_response(request: web.Request, status: int, reason: str) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if _wants_json(request):
        return web.json_response(
            {"error": reason, "status": status}, status=status, headers=headers
        )
    lang = language_of(request)
    title, message = _error_texts(request, lang, status)
    i18n = request.app[I18N_KEY]
    links = [
        {"lang": other, "name": i18n.language_name(other), "url": f"/{other}/"}
        for other in i18n.languages
    ]
    response = render_page(
        request,
        "error.html",
        lang,
        status=status,
        title=title,
        message=message,
        language_links=links,
    )
    response.headers.update(headers)
    return response


def _route_of(request: web.Request) -> str:
    """The route's pattern (``/{lang}/week/{week}/``), never the path itself: a bounded
    label."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count each request by route and status (``forum_web_requests_total``)."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        request.app[METRICS_KEY].observe_web(_route_of(request), status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Real 404 and 500 pages in the reader's language; never a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        try:
            response = _error_response(request, exc.status, exc.reason)
        except Exception:
            log.exception("rendering the %d page for %s failed", exc.status, request.path)
            return web.Response(status=exc.status, text=exc.reason)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        try:
            return _error_response(request, 500, "Internal Server Error")
        except Exception:
            log.exception("rendering the 500 page failed")
            return web.Response(status=500, text="Internal Server Error")


def _etag_of(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


@web.middleware
async def caching_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """ETag and a short public cache on HTML pages; 304 on a matching If-None-Match."""
    response = await handler(request)
    if (
        request.method not in ("GET", "HEAD")
        or not isinstance(response, web.Response)
        or response.status != 200
        or response.body is None
        or not isinstance(response.body, bytes)
    ):
        return response
    if response.etag is None and response.content_type in ("text/html", "application/atom+xml"):
        response.etag = ETag(value=_etag_of(response.body), is_weak=True)
        response.headers.setdefault("Cache-Control", PAGE_CACHE_CONTROL)
    etag = response.etag
    wanted = request.if_none_match
    if (
        etag is not None
        and wanted is not None
        and any(c.value in (etag.value, "*") for c in wanted)
    ):
        headers = {
            key: response.headers[key]
            for key in ("ETag", "Cache-Control", "Vary", "Content-Language")
            if key in response.headers
        }
        return web.Response(status=304, headers=headers)
    if response.content_type.startswith("text/") or response.content_type.endswith(
        ("xml", "json", "svg+xml")
    ):
        response.enable_compression()
        response.headers["Vary"] = _add_vary(response.headers.get("Vary"), "Accept-Encoding")
    return response


def _add_vary(current: str | None, name: str) -> str:
    if not current:
        return name
    if name.lower() in (v.strip().lower() for v in current.split(",")):
        return current
    return f"{current}, {name}"


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)


# --- the factory ------------------------------------------------------------------------


def create_app(
    settings: Settings,
    *,
    database_ping: Ping,
    homeserver_ping: Ping,
    i18n: I18n,
    extensions: Sequence[Extension] = (),
    tasks: TaskSupervisor | None = None,
    metrics: Metrics | None = None,
    refresh_metrics: Callable[[], Awaitable[None]] | None = None,
    lease: Callable[[], dict[str, Any]] | None = None,
) -> web.Application:
    """Build the web app. ``extensions`` are called with it to add routes (the digest).
    ``tasks``: their health is shown by ``/healthz``; ``metrics``: served at ``/metrics``
    (after ``refresh_metrics``), web requests counted on it; ``lease``: this process's
    role and the lease's holder, shown by ``/healthz``."""
    app = web.Application(
        middlewares=[
            *([metrics_middleware] if metrics is not None else []),
            error_middleware,
            web.normalize_path_middleware(append_slash=True, merge_slashes=True),
            caching_middleware,
        ]
    )
    static_files = _load_static(STATIC_DIR)

    def static_url(name: str) -> str:
        item = static_files.get(name)
        return f"/static/{name}?v={item.digest}" if item else f"/static/{name}"

    app[SETTINGS_KEY] = settings
    app[I18N_KEY] = i18n
    renderer = Renderer(i18n, static_url)
    for lang in i18n.languages:  # read templates now, not in the event loop; fail early
        for template in ("base.html", "home.html", "error.html"):
            renderer.environment(lang).get_template(template)
    app[RENDERER_KEY] = renderer
    app[STATIC_KEY] = static_files
    app[PINGS_KEY] = {"homeserver": homeserver_ping, "database": database_ping}
    if tasks is not None:
        app[TASKS_KEY] = tasks
    if metrics is not None:
        app[METRICS_KEY] = metrics
        app.router.add_get("/metrics", metrics_page, name="metrics")
    if refresh_metrics is not None:
        app[REFRESH_METRICS_KEY] = refresh_metrics
    if lease is not None:
        app[LEASE_KEY] = lease

    app.router.add_get("/", root, name="root")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/static/{name}", static, name="static")
    app.on_response_prepare.append(_security_headers)
    # Extensions come first so that one may provide the home page (the digest does).
    for extend in extensions:
        extend(app)
    if "home" not in app.router.named_resources():
        languages = "|".join(re.escape(lang) for lang in i18n.languages)
        app.router.add_get(f"/{{lang:(?:{languages})}}/", home, name="home")
    return app


async def run_web(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving ``app``; return the runner (the caller cleans it up) and the bound port.

    With ``port=0`` the system picks a free port, which is what is returned.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = port
        for address in runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                bound = int(address[1])
                break
    except BaseException:
        await runner.cleanup()
        raise
    log.info("web app listening on http://%s:%d", host, bound)
    return runner, bound
