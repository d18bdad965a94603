"""What a feature may use, and where it declares what it adds to the service.

The composition root (:mod:`forum.app`) builds a :class:`ServiceContext` once the bots are
logged in and the forum is provisioned, and hands it to each :class:`Feature`'s ``setup``.
Everything in the context is built and immutable; a feature adds handlers to a gateway
(``gateway.on``), starts its background work on ``tasks`` and declares its outbox
executors, web routes, direct-chat claims and stop hooks on ``register``
(:class:`Registrations`). Features import this module, never :mod:`forum.app`.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from aiohttp import web

from forum.events import Message
from forum.gateway import Gateway
from forum.i18n import I18n
from forum.metrics import Metrics
from forum.settings import Settings
from forum.signals import Signals
from forum.storage import Database, Executor, OutboxWorker, utcnow
from forum.tasks import TaskSupervisor

#: Adds routes to the public web app.
WebRoutes = Callable[[web.Application], None]
#: Says whether a message in the membership bot's direct chats answers a question of the
#: feature's own (the digest asks whether a message may be quoted): the membership bot then
#: leaves it alone.
DmClaim = Callable[[Message], Awaitable[bool]]
#: The questions a feature asked ``user_id`` that wait for an answer: ``(user_id, lang)`` ->
#: one short line per question, in ``lang`` (read only). An answer binds to a question by
#: its reply relation or the reaction's target; a bare answer ("oui") binds only when the
#: sum over every feature is exactly one, otherwise the membership bot asks which one.
PendingQuestions = Callable[[str, str], Awaitable[list[str]]]
StopHook = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class ApprovalRequest:
    """A person waiting for a moderator's decision to join (``approval = "moderators"``)."""

    user_id: str
    since: datetime


#: The requests waiting for a moderator's decision, oldest first (read only).
PendingApprovals = Callable[[], Awaitable[list[ApprovalRequest]]]
#: The language a person chose with a feature (``None``: unknown to it).
PersonLanguage = Callable[[str], Awaitable[str | None]]
#: Adds a feature's subcommands to the ``forum`` argument parser.
AddCommands = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


@dataclass(frozen=True)
class HeldPermission:
    """A consent a feature asked for and keeps itself (the digest: may this one message be
    quoted), listed by the membership bot's ``!statut`` and withdrawn by its ``!retirer``
    (which emits :data:`forum.signals.PERMISSION_WITHDRAWN` with ``key``)."""

    key: str
    """The feature's id for it (the quoted message's event id)."""
    about: str
    """What it is about, for the person (an excerpt of their words)."""


@dataclass(frozen=True)
class PersonalData:
    """What one feature holds about one person, for ``!mes-donnees`` and ``!statut``."""

    section: str
    """Its key in the JSON export."""
    data: Mapping[str, Any]
    """JSON-ready."""
    title: str
    lines: tuple[str, ...]
    """``title`` and ``lines``: the same, readable, in the person's language."""
    permissions: tuple[HeldPermission, ...] = ()
    """The permissions the person gave that may be withdrawn, in a stable order."""


#: What a feature holds about a person: ``(user_id, lang)`` -> :class:`PersonalData`
#: (read only: nothing is changed by asking).
PersonalDataProvider = Callable[[str, str], Awaitable[PersonalData]]


class RegistrationClosed(RuntimeError):
    """A feature tried to register something after the service started."""


class Registrations:
    """The registration points of the service. Features declare what they add during their
    ``setup``; the composition root reads it afterwards and closes the registrations."""

    def __init__(self) -> None:
        self._executors: dict[str, Executor] = {}
        self._web_routes: list[WebRoutes] = []
        self._dm_claims: list[DmClaim] = []
        self._stop_hooks: list[StopHook] = []
        self._personal_data: list[PersonalDataProvider] = []
        self._pending: list[PendingQuestions] = []
        self._approvals: list[PendingApprovals] = []
        self._languages: list[PersonLanguage] = []
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RegistrationClosed("registrations are closed once the service has started")

    def outbox_executor(self, kind: str, executor: Executor) -> None:
        """Carry out outbox items of ``kind`` with ``executor`` (idempotent, see
        :mod:`forum.storage.outbox_worker`)."""
        self._check_open()
        if kind in self._executors:
            raise ValueError(f"outbox kind {kind!r} is registered twice")
        self._executors[kind] = executor

    def web_routes(self, routes: WebRoutes) -> None:
        self._check_open()
        self._web_routes.append(routes)

    def dm_claim(self, claim: DmClaim) -> None:
        self._check_open()
        self._dm_claims.append(claim)

    def personal_data(self, provider: PersonalDataProvider) -> None:
        """Tell what the feature holds about a person (asked by ``!mes-donnees`` and
        ``!statut``)."""
        self._check_open()
        self._personal_data.append(provider)

    def pending_questions(self, provider: PendingQuestions) -> None:
        """Tell which of the feature's questions to a person wait for an answer (asked
        before any bare answer is consumed, by every feature)."""
        self._check_open()
        self._pending.append(provider)

    def pending_approvals(self, provider: PendingApprovals) -> None:
        """Tell which join requests wait for a moderator (asked by the moderation bot's
        ``!pending``)."""
        self._check_open()
        self._approvals.append(provider)

    def person_language(self, provider: PersonLanguage) -> None:
        """Tell the language a person chose (the bots answer them in it)."""
        self._check_open()
        self._languages.append(provider)

    def on_stop(self, hook: StopHook) -> None:
        self._check_open()
        self._stop_hooks.append(hook)

    def close(self) -> None:
        self._closed = True

    @property
    def outbox_executors(self) -> Mapping[str, Executor]:
        return MappingProxyType(self._executors)

    @property
    def all_web_routes(self) -> tuple[WebRoutes, ...]:
        return tuple(self._web_routes)

    @property
    def dm_claims(self) -> tuple[DmClaim, ...]:
        return tuple(self._dm_claims)

    @property
    def stop_hooks(self) -> tuple[StopHook, ...]:
        return tuple(self._stop_hooks)

    async def personal_data_of(self, user_id: str, lang: str) -> list[PersonalData]:
        """What every feature holds about ``user_id`` (in the order they registered)."""
        return [await provider(user_id, lang) for provider in self._personal_data]

    async def pending_questions_of(self, user_id: str, lang: str) -> list[str]:
        """Every feature's questions waiting for ``user_id``'s answer (registration order):
        a bare answer binds only when there is exactly one."""
        return [line for provider in self._pending for line in await provider(user_id, lang)]

    @property
    def approvals_known(self) -> bool:
        """Whether a feature keeps join requests (otherwise none can be pending)."""
        return bool(self._approvals)

    async def approvals_pending(self) -> list[ApprovalRequest]:
        """Every feature's join requests waiting for a moderator, oldest first."""
        found = [r for provider in self._approvals for r in await provider()]
        return sorted(found, key=lambda r: r.since)

    async def language_of(self, user_id: str) -> str | None:
        """The language ``user_id`` chose, as the first feature that knows it says."""
        for provider in self._languages:
            lang = await provider(user_id)
            if lang:
                return lang
        return None

    async def claimed(self, message: Message) -> bool:
        """Whether a feature claims this direct-chat message (every claim is asked)."""
        return any([await claim(message) for claim in self._dm_claims])


class Rooms(Mapping[str, str]):
    """The forum's room ids by key, as provisioning left them: ``space``, ``lobby``,
    ``announcements``, ``management``, ``policy`` and ``topic:<slug>``. Read-only."""

    def __init__(self, ids: Mapping[str, str]) -> None:
        self._ids = dict(ids)

    def __getitem__(self, key: str) -> str:
        return self._ids[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"Rooms({self._ids!r})"

    @property
    def topic_ids(self) -> dict[str, str]:
        """Topic room ids by slug."""
        return {k.removeprefix("topic:"): v for k, v in self._ids.items() if k.startswith("topic:")}

    @property
    def forum_ids(self) -> list[str]:
        """The rooms members use: the Space, lobby, announcements and topics."""
        return [v for k, v in self._ids.items() if k not in {"management", "policy"}]


Clock = Callable[[], datetime]


@dataclass(frozen=True)
class ServiceContext:
    """What features receive: everything is built already, nothing is started."""

    settings: Settings
    config_dir: Path
    home: Path
    db: Database
    membership_gateway: Gateway
    moderation_gateway: Gateway
    i18n: I18n
    tasks: TaskSupervisor
    rooms: Rooms
    signals: Signals
    outbox: OutboxWorker
    register: Registrations
    clock: Clock = field(default=utcnow)
    """Now, in UTC (tests may set another clock)."""
    schedules: bool = True
    """Whether time-driven loops (the weekly digest) run; the tests' harness turns them off
    unless a test asks for them."""
    metrics: Metrics | None = None
    """The service's Prometheus metrics (``/metrics``); features count on it (the spam
    checker increments ``metrics.spam_checks``)."""


@dataclass(frozen=True)
class Feature:
    """A part of the service: its ``setup`` registers handlers and background work on the
    context and returns the feature's own object (kept by the service, for its tests and
    benchmarks); ``add_commands`` adds its ``forum ...`` subcommands."""

    name: str
    setup: Callable[[ServiceContext], Awaitable[Any]]
    add_commands: AddCommands | None = None
