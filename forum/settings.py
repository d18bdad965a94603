"""Typed, frozen settings loaded once from ``forum.toml`` (the default one is
``forum/config/forum.toml``, in the package).

Every problem in a file is reported with its key path, the value found and what was
expected (:class:`ConfigError`). Secrets are :class:`pydantic.SecretStr`; a string value of
the form ``${NAME}`` is read from the environment variable ``NAME``.
"""

from __future__ import annotations

import os
import re
import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from croniter import croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

#: the default configuration and charters, shipped inside the package (``pip install .``
#: works anywhere); ``--config FILE`` or ``$FORUM_CONFIG`` name another file
DEFAULT_CONFIG = Path(__file__).resolve().parent / "config" / "forum.toml"

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_SECRET_WORDS = ("password", "token", "secret")

LANG_RE = r"^[a-z]{2,3}$"
LOCALPART_RE = r"^[a-z0-9._=\-/+]+$"
ALIAS_RE = r"^[a-z0-9._=\-]+$"
SLUG_RE = r"^[a-z0-9][a-z0-9\-]*$"
USER_ID_RE = re.compile(r"^@[a-z0-9._=\-/+]+:[A-Za-z0-9.\-]+(:[0-9]{1,5})?$")


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration file."""

    path: str
    value: str
    expected: str

    def __str__(self) -> str:
        return f"{self.path}: {self.expected} (found {self.value})"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the configuration\n{lines}")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


def _check_localized(value: dict[str, str]) -> dict[str, str]:
    if not value:
        raise ValueError('expected at least one language, for example { fr = "…", en = "…" }')
    for lang, text in value.items():
        if not re.match(LANG_RE, lang):
            raise ValueError(f"language code {lang!r} is not a two- or three-letter code")
        if not text.strip():
            raise ValueError(f"text for language {lang!r} is empty")
    return value


Localized = Annotated[dict[str, str], AfterValidator(_check_localized)]


def _check_user_id(value: str) -> str:
    if not (USER_ID_RE.match(value) or re.match(LOCALPART_RE, value)):
        raise ValueError(
            "expected a Matrix user id like @name:example.org or a local name like 'name'"
        )
    return value


UserRef = Annotated[str, AfterValidator(_check_user_id)]


class ForumSection(_Model):
    name: Localized
    description: Localized
    languages: list[Annotated[str, Field(pattern=LANG_RE)]] = Field(min_length=1)

    @field_validator("languages")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each language may appear only once")
        return v


class ScaledProfile(_Model):
    """Synapse's worker mode (``profile = "scaled"``): the main process, event persisters
    sharded by room, generic workers and a federation sender, over PostgreSQL and Redis."""

    event_persisters: int = Field(default=4, ge=1, le=32)
    generic_workers: int = Field(default=1, ge=1, le=16)
    #: Synapse's database (created with the C collation Synapse needs when missing)
    synapse_database: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/forum_synapse",
        pattern=r"^postgres(ql)?://",
    )
    #: the forum's own database when ``[database] url`` is not set
    forum_database: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/forum",
        pattern=r"^postgresql\+asyncpg://",
    )
    redis_host: str = "127.0.0.1"
    redis_port: int = Field(default=6379, ge=1, le=65535)
    redis_password: SecretStr | None = None
    #: the replication listeners of the main process and of the workers: consecutive ports
    #: from here, on the embedded homeserver's host
    base_port: int = Field(default=8100, ge=1, le=65000)


class EmbeddedHomeserver(_Model):
    host: Literal["127.0.0.1", "::1", "localhost"] = "127.0.0.1"
    port: int = Field(default=8008, ge=1, le=65535)
    server_name: str = Field(default="localhost", pattern=r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$")
    #: "single": one Synapse process on SQLite; "scaled": Synapse's workers (see above)
    profile: Literal["single", "scaled"] = "single"
    scaled: ScaledProfile = ScaledProfile()


class HomeserverSection(_Model):
    mode: Literal["embedded", "external"] = "embedded"
    url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/.*)?$")
    server_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$")
    embedded: EmbeddedHomeserver = EmbeddedHomeserver()
    request_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    max_retries: int = Field(default=8, ge=0, le=100)

    @model_validator(mode="after")
    def _external_needs_url(self) -> HomeserverSection:
        if self.mode == "external" and (self.url is None or self.server_name is None):
            raise ValueError("mode 'external' needs both 'url' and 'server_name'")
        return self

    @property
    def effective_url(self) -> str:
        if self.mode == "external":
            assert self.url is not None
            return self.url.rstrip("/")
        host = self.embedded.host if self.embedded.host != "::1" else "[::1]"
        return f"http://{host}:{self.embedded.port}"

    @property
    def effective_server_name(self) -> str:
        if self.mode == "external":
            assert self.server_name is not None
            return self.server_name
        return self.embedded.server_name


class DatabaseSection(_Model):
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _async_driver(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.match(r"^(sqlite\+aiosqlite|postgresql\+asyncpg)://", v):
            raise ValueError(
                "expected an async SQLAlchemy URL: sqlite+aiosqlite:///PATH or "
                "postgresql+asyncpg://USER@HOST/DB"
            )
        return v


class WebSection(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = Field(default=None, pattern=r"^https?://\S+$")


class BotAccount(_Model):
    localpart: Annotated[str, Field(pattern=LOCALPART_RE)]
    display_name: str
    password: SecretStr | None = None
    access_token: SecretStr | None = None


class BotsSection(_Model):
    membership: BotAccount
    moderation: BotAccount
    ignore: list[UserRef] = []
    command_prefix: str = Field(default="!", min_length=1, max_length=3)
    lanes: int | None = Field(default=None, ge=1, le=32)


class PowerLevelsSection(_Model):
    moderator: int = Field(default=50, ge=1, le=100)
    moderation_bot: int = Field(default=100, ge=1, le=100)
    membership_bot: int = Field(default=40, ge=1, le=100)
    members: int = Field(default=0, ge=0, le=100)
    invite: int = Field(default=40, ge=0, le=100)
    kick: int = Field(default=50, ge=0, le=100)
    ban: int = Field(default=50, ge=0, le=100)
    redact: int = Field(default=50, ge=0, le=100)
    state_default: int = Field(default=50, ge=0, le=100)

    @model_validator(mode="after")
    def _coherent(self) -> PowerLevelsSection:
        if self.invite <= self.members:
            raise ValueError(
                f"invite ({self.invite}) must be above members ({self.members}), "
                "or any member could invite people past the consent gate"
            )
        if self.membership_bot < self.invite:
            raise ValueError(
                f"membership_bot ({self.membership_bot}) must be at least invite ({self.invite})"
            )
        if self.moderation_bot < max(self.moderator, self.ban, self.kick, self.redact):
            raise ValueError("moderation_bot must be at least moderator, ban, kick and redact")
        if self.moderator < max(self.kick, self.ban, self.redact):
            raise ValueError("moderator must be at least kick, ban and redact")
        if self.members >= self.moderator:
            raise ValueError(
                f"members ({self.members}) must be below moderator ({self.moderator}), "
                "or everyone who joins would be exempt from the protections and could curate"
            )
        if self.moderator > self.moderation_bot:
            raise ValueError(
                f"moderator ({self.moderator}) must not be above moderation_bot "
                f"({self.moderation_bot}), or the bot could not act on moderators' behalf"
            )
        return self


class RoomSpec(_Model):
    alias: Annotated[str, Field(pattern=ALIAS_RE)]
    name: Localized
    topic: Localized


class RoomsSection(_Model):
    space: RoomSpec
    lobby: RoomSpec
    announcements: RoomSpec
    management: RoomSpec
    policy: RoomSpec


class TopicSpec(_Model):
    slug: Annotated[str, Field(pattern=SLUG_RE, max_length=64)]
    alias: Annotated[str | None, Field(pattern=ALIAS_RE)] = None
    name: Localized
    topic: Localized

    @property
    def effective_alias(self) -> str:
        return self.alias or self.slug


class CharterSection(_Model):
    version: int = Field(default=1, ge=1)
    directory: str = "charter"
    grace_days: int = Field(default=14, ge=0, le=365)
    on_expiry: Literal["mute", "remove"] = "mute"
    reminder_hours: int = Field(default=24, ge=0, le=24 * 365)
    """A reminder this many hours before a re-consent deadline (0: none; none either
    when the grace period is not longer than that)."""


class MembershipSection(_Model):
    approval: Literal["auto", "moderators"] = "auto"
    charter: CharterSection = CharterSection()


class DigestSection(_Model):
    schedule: str = "0 8 * * 1"
    timezone: str = "Africa/Lome"
    history_start: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    editors: list[UserRef] = []
    key_points: int = Field(default=3, ge=0, le=20)
    export_dir: str | None = None
    #: the preview is posted to the management room this long before the publication
    preview_hours: int = Field(default=24, ge=0, le=168)
    #: nothing is published before a moderator releases it (``!publier`` / ``!release``)
    require_release: bool = True

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str) -> str:
        if not croniter.is_valid(v):
            raise ValueError("expected a cron expression of five fields, like '0 8 * * 1'")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("expected an IANA time zone like 'Africa/Lome'") from exc
        return v


class DemoAccount(_Model):
    localpart: Annotated[str, Field(pattern=LOCALPART_RE)]
    display_name: str
    role: Literal["moderator", "member"]


class DemoSection(_Model):
    accounts: list[DemoAccount] = []


class ServiceSection(_Model):
    """Running two ``forum run`` processes on one database: one acts, the other stands by."""

    instance: str | None = Field(default=None, min_length=1, max_length=64)
    """This process's name in the lease and ``/healthz`` (default: the host's name)."""
    lease_seconds: float = Field(default=6.0, ge=2, le=300)
    """How long the active process's lease lasts without renewal (renewed every third of
    it): the longest a standby waits after the active one died."""
    standby_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    """How often a standby looks whether the lease is free."""
    standby_observe_seconds: float = Field(default=300.0, ge=5, le=86400)
    """How often a standby reads the forum's rooms again (what provisioning would change),
    so that it takes over with them known (external homeserver only)."""


class LoggingSection(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


_STEP_RE = r"^(warn|kick|ban|mute(:[0-9]+[smhd])?)$"


class ModerationSection(_Model):
    """The moderation bot's protections, graduated steps and policy-list subscriptions."""

    flood_messages: int = Field(default=10, ge=2, le=1000)
    flood_seconds: float = Field(default=10.0, gt=0, le=3600)
    mention_limit: int = Field(default=8, ge=1, le=1000)
    new_member_hours: float = Field(default=24.0, ge=0, le=24 * 365)
    words: list[str] = []
    join_wave_joins: int = Field(default=15, ge=2, le=10000)
    join_wave_seconds: float = Field(default=60.0, gt=0, le=86400)
    steps: list[Annotated[str, Field(pattern=_STEP_RE)]] = Field(
        default=["warn", "mute:10m", "ban"], min_length=1
    )
    step_reset_hours: float = Field(default=24.0, gt=0, le=24 * 365)
    policy_lists: list[str] = []
    dry_run: bool = False
    report_poll_seconds: float = Field(default=15.0, ge=0.2, le=3600)
    reports_per_hour: int = Field(default=5, ge=1, le=10000)
    """Reports one person may make in an hour; beyond, they are asked to wait."""
    glob_force_above: int = Field(default=3, ge=1, le=100000)
    """A ban glob matching more members than this acts only with ``--force``."""

    @field_validator("policy_lists")
    @classmethod
    def _list_refs(cls, v: list[str]) -> list[str]:
        for ref in v:
            if not re.match(r"^[#!][^\s]+$", ref):
                raise ValueError(
                    f"{ref!r}: expected a room alias (#list:example.org) or a room id "
                    "(!id:example.org, optionally !id?via=example.org)"
                )
        return v


class AntispamSection(_Model):
    """The forum as the homeserver's spam checker: a listener on loopback answering the
    callbacks of the Synapse module ``synapse-http-antispam`` for the forum's rooms."""

    enabled: bool = True
    host: Literal["127.0.0.1", "::1", "localhost"] = "127.0.0.1"
    port: int = Field(default=8009, ge=0, le=65535)
    secret: SecretStr | None = None
    """The shared secret the module sends (``Authorization: Bearer ...``); none: one is
    generated and kept in ``$FORUM_HOME/secrets.json`` (mode 0600)."""
    deadline_seconds: float = Field(default=0.5, gt=0, le=30)
    """A verdict not reached within this time lets the action through (counted)."""

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value().strip()) < 16:
            raise ValueError("a shared secret of at least 16 characters (or none: generated)")
        return v

    @property
    def url(self) -> str:
        host = "[::1]" if self.host == "::1" else self.host
        return f"http://{host}:{self.port}"


class Settings(_Model):
    forum: ForumSection
    homeserver: HomeserverSection = HomeserverSection()
    database: DatabaseSection = DatabaseSection()
    web: WebSection = WebSection()
    bots: BotsSection
    moderators: list[UserRef] = []
    power_levels: PowerLevelsSection = PowerLevelsSection()
    room_version: Literal["10", "11", "12"] = "11"
    rooms: RoomsSection
    topics: list[TopicSpec] = Field(min_length=1)
    membership: MembershipSection = MembershipSection()
    digest: DigestSection = DigestSection()
    demo: DemoSection = DemoSection()
    logging: LoggingSection = LoggingSection()
    service: ServiceSection = ServiceSection()
    moderation: ModerationSection = ModerationSection()
    antispam: AntispamSection = AntispamSection()

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        problems: list[str] = []
        langs = set(self.forum.languages)
        primary = self.forum.languages[0]
        for where, text in self._localized_fields():
            if primary not in text:
                problems.append(f"{where} has no text in the primary language {primary!r}")
            extra = set(text) - langs
            if extra:
                problems.append(
                    f"{where} has languages not listed in forum.languages: {sorted(extra)}"
                )
        slugs = [t.slug for t in self.topics]
        dup = {s for s in slugs if slugs.count(s) > 1}
        if dup:
            problems.append(f"topics: slug used more than once: {sorted(dup)}")
        aliases = [spec.alias for _, spec in self._special_rooms()] + [
            t.effective_alias for t in self.topics
        ]
        dup = {a for a in aliases if aliases.count(a) > 1}
        if dup:
            problems.append(f"rooms/topics: alias used more than once: {sorted(dup)}")
        bots = {self.bots.membership.localpart, self.bots.moderation.localpart}
        if len(bots) != 2:
            problems.append("bots: membership and moderation bots need different localparts")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _special_rooms(self) -> list[tuple[str, RoomSpec]]:
        r = self.rooms
        return [
            ("space", r.space),
            ("lobby", r.lobby),
            ("announcements", r.announcements),
            ("management", r.management),
            ("policy", r.policy),
        ]

    def _localized_fields(self) -> list[tuple[str, dict[str, str]]]:
        out: list[tuple[str, dict[str, str]]] = [
            ("forum.name", self.forum.name),
            ("forum.description", self.forum.description),
        ]
        for key, spec in self._special_rooms():
            out += [(f"rooms.{key}.name", spec.name), (f"rooms.{key}.topic", spec.topic)]
        for i, t in enumerate(self.topics):
            out += [(f"topics[{i}].name", t.name), (f"topics[{i}].topic", t.topic)]
        return out

    # --- derived facts -------------------------------------------------------------
    @property
    def primary_language(self) -> str:
        return self.forum.languages[0]

    @property
    def server_name(self) -> str:
        return self.homeserver.effective_server_name

    def user_id(self, ref: str) -> str:
        """A full user id for a config reference (a local name gets our server name)."""
        return ref if ref.startswith("@") else f"@{ref}:{self.server_name}"

    @property
    def membership_bot_id(self) -> str:
        return self.user_id(self.bots.membership.localpart)

    @property
    def moderation_bot_id(self) -> str:
        return self.user_id(self.bots.moderation.localpart)

    @property
    def moderator_ids(self) -> list[str]:
        return [self.user_id(m) for m in self.moderators]

    @property
    def ignored_user_ids(self) -> set[str]:
        return {self.user_id(u) for u in self.bots.ignore} | {
            self.membership_bot_id,
            self.moderation_bot_id,
        }

    def alias_id(self, alias: str) -> str:
        return f"#{alias}:{self.server_name}"

    def topic(self, slug: str) -> TopicSpec | None:
        return next((t for t in self.topics if t.slug == slug), None)

    def room_spec(self, key: str) -> RoomSpec | TopicSpec | None:
        """The configured room behind a registry key ("lobby", "topic:SLUG"...)."""
        kind, _, slug = key.partition(":")
        if kind == "topic":
            return self.topic(slug)
        room = getattr(self.rooms, key, None)
        return room if isinstance(room, RoomSpec) else None

    def text(self, localized: Mapping[str, str], lang: str | None = None) -> str:
        """The text in ``lang``, else in the primary language."""
        if lang and lang in localized:
            return localized[lang]
        return localized.get(self.primary_language) or next(iter(localized.values()))

    def charter_dir(self, config_dir: Path) -> Path:
        path = Path(self.membership.charter.directory)
        return path if path.is_absolute() else config_dir / path


# --- loading ---------------------------------------------------------------------------


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "constrained-")) or part in {"str", "dict[str,str]"}:
            continue
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _is_secret(path: str) -> bool:
    return any(w in path.lower() for w in _SECRET_WORDS)


# ``scheme://user:PASSWORD@host``: the password of a URL's userinfo, wherever the URL sits.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"]*):[^\s/?#@'\"]*@")
# ``password=…``, ``access_token: …``, ``"secret": "…"`` in a query string, a DSN or a dump.
_KEYED_SECRET = re.compile(
    r"(?P<key>[A-Za-z0-9_\-]*(?:passw(?:or)?d|pwd|token|secret|api[_\-]?key|private[_\-]?key"
    r"|authorization)[A-Za-z0-9_\-]*)"
    r"(?P<sep>['\"]?\s*[=:]\s*['\"]?)(?P<value>[^\s&;,'\"}]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with every secret it may hold replaced by ``***``: a URL's password,
    a ``password=…`` / ``token: …`` pair (query strings, DSNs, dumped tables). For any
    message that may show a configured value: errors, logs, the CLI."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:***@", text)
    return _KEYED_SECRET.sub(lambda m: f"{m.group('key')}{m.group('sep')}***", text)


def _show(value: Any, path: str) -> str:
    if _is_secret(path):
        return "'***'"
    if isinstance(value, dict) and len(repr(value)) > 80:
        return "a table"
    text = redact(repr(value))
    return text if len(text) <= 80 else text[:77] + "...'"


def _expand_env(data: Any, env: Mapping[str, str], path: str, problems: list[ConfigProblem]) -> Any:
    if isinstance(data, dict):
        return {
            k: _expand_env(v, env, f"{path}.{k}" if path else k, problems) for k, v in data.items()
        }
    if isinstance(data, list):
        return [_expand_env(v, env, f"{path}[{i}]", problems) for i, v in enumerate(data)]
    if isinstance(data, str):
        m = _ENV_REF.match(data)
        if m:
            name = m.group(1)
            if name not in env:
                problems.append(ConfigProblem(path, data, f"environment variable {name} to be set"))
                return None
            return env[name]
    return data


def parse_settings(
    data: Mapping[str, Any], source: str = "<settings>", env: Mapping[str, str] | None = None
) -> Settings:
    """Validate raw TOML data; raise :class:`ConfigError` listing every problem."""
    env = os.environ if env is None else env
    problems: list[ConfigProblem] = []
    expanded = _expand_env(dict(data), env, "", problems)
    try:
        settings = Settings.model_validate(expanded)
    except ValidationError as exc:
        for err in exc.errors():
            path = _loc_to_path(tuple(err["loc"]))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "no such option (check the spelling)"
            elif err["type"] == "missing":
                msg = "a value (this option is required)"
            problems.append(ConfigProblem(path, _show(err.get("input"), path), redact(msg)))
    if problems:
        raise ConfigError(source, problems)
    return settings


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a TOML file (default: ``$FORUM_CONFIG``, else
    :data:`DEFAULT_CONFIG`)."""
    env = os.environ if env is None else env
    file = Path(path or env.get("FORUM_CONFIG") or DEFAULT_CONFIG)
    try:
        raw = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            str(file), [ConfigProblem("(file)", str(file), f"a readable file ({exc.strerror})")]
        ) from exc
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            str(file), [ConfigProblem("(syntax)", "invalid TOML", f"valid TOML: {exc}")]
        ) from exc
    return parse_settings(with_profile_from_env(data, env), str(file), env)


def with_profile_from_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """``$FORUM_PROFILE`` ("single" or "scaled") and ``$FORUM_EVENT_PERSISTERS`` override
    ``[homeserver.embedded]`` ``profile`` and ``scaled.event_persisters`` (``make
    run-scaled`` sets them, so every ``forum`` command of that shell sees the profile)."""
    profile, persisters = env.get("FORUM_PROFILE"), env.get("FORUM_EVENT_PERSISTERS")
    if not profile and not persisters:
        return data
    out = dict(data)
    homeserver = dict(out.get("homeserver") or {})
    embedded = dict(homeserver.get("embedded") or {})
    if profile:
        embedded["profile"] = profile
    if persisters:
        scaled = dict(embedded.get("scaled") or {})
        scaled["event_persisters"] = int(persisters) if persisters.isdigit() else persisters
        embedded["scaled"] = scaled
    homeserver["embedded"] = embedded
    out["homeserver"] = homeserver
    return out


def config_dir_of(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(path or env.get("FORUM_CONFIG") or DEFAULT_CONFIG).resolve().parent


def forum_home(env: Mapping[str, str] | None = None) -> Path:
    """Where the service keeps its state: ``$FORUM_HOME``, default ``./.forum``."""
    env = os.environ if env is None else env
    return Path(env.get("FORUM_HOME") or ".forum").resolve()


def database_url(settings: Settings, home: Path) -> str:
    if settings.database.url:
        return settings.database.url
    hs = settings.homeserver
    if hs.mode == "embedded" and hs.embedded.profile == "scaled":
        return hs.embedded.scaled.forum_database
    return f"sqlite+aiosqlite:///{home / 'forum.db'}"
