"""The bots' accounts: their credentials, their gateways, their registration on the embedded
homeserver and the lifting of its rate limits for them. Used by the composition root and by
the operator's commands (:mod:`forum.kit`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from forum.credentials import load_or_create_secrets
from forum.errors import MatrixError
from forum.gateway import Gateway
from forum.homeserver import AntispamHook, EmbeddedHomeserver, WorkerLayout
from forum.settings import Settings
from forum.storage import Database

log = logging.getLogger(__name__)

BotRole = Literal["membership", "moderation"]
ROLES: tuple[BotRole, ...] = ("moderation", "membership")
DEVICE_NAMES: dict[BotRole, str] = {
    "membership": "forum membership bot",
    "moderation": "forum moderation bot",
}


@dataclass(frozen=True)
class BotCredentials:
    password: str | None
    access_token: str | None


def secrets_path(home: Path) -> Path:
    return home / "secrets.json"


def bot_credentials(settings: Settings, home: Path) -> dict[BotRole, BotCredentials]:
    """Credentials by bot role. With the embedded homeserver, generated passwords are kept
    in ``$FORUM_HOME/secrets.json`` (mode 0600)."""
    bots = {"membership": settings.bots.membership, "moderation": settings.bots.moderation}
    generated: dict[str, str] = {}
    if settings.homeserver.mode == "embedded":
        generated = load_or_create_secrets(
            secrets_path(home), [f"bot:{b.localpart}" for b in bots.values()]
        )
    out: dict[BotRole, BotCredentials] = {}
    for role in ROLES:
        bot = bots[role]
        password = bot.password.get_secret_value() if bot.password else None
        token = bot.access_token.get_secret_value() if bot.access_token else None
        out[role] = BotCredentials(password or generated.get(f"bot:{bot.localpart}"), token)
    return out


def bot_user_id(settings: Settings, role: BotRole) -> str:
    return settings.membership_bot_id if role == "membership" else settings.moderation_bot_id


def bot_gateway(
    settings: Settings,
    db: Database,
    role: BotRole,
    credentials: BotCredentials,
    device_name: str | None = None,
    *,
    home: Path | None = None,
) -> Gateway:
    """A gateway for one bot account (not logged in yet). With ``home`` (the service's
    ``FORUM_HOME``), the bot takes part in encrypted rooms: its keys are kept under
    ``home/crypto`` (their pickle key in ``secrets.json``)."""
    hs = settings.homeserver
    crypto: dict[str, Any] = {}
    if home is not None:
        user_id = bot_user_id(settings, role)
        key = f"crypto:{user_id}"
        crypto = {
            "crypto_store": crypto_dir(home),
            "crypto_pickle_key": load_or_create_secrets(secrets_path(home), [key])[key],
        }
    return Gateway(
        homeserver_url=hs.effective_url,
        user_id=bot_user_id(settings, role),
        sessionmaker=db.sessionmaker,
        password=credentials.password,
        access_token=credentials.access_token,
        device_name=device_name or DEVICE_NAMES[role],
        request_timeout=hs.request_timeout_seconds,
        max_retries=hs.max_retries,
        lanes=settings.bots.lanes or (1 if db.engine.dialect.name == "sqlite" else 4),
        **crypto,
    )


def antispam_secret(settings: Settings, home: Path) -> str:
    """The secret synapse-http-antispam sends the forum's spam checker: the configured
    one, else one generated and kept in ``$FORUM_HOME/secrets.json`` (mode 0600)."""
    configured = settings.antispam.secret
    if configured is not None:
        return configured.get_secret_value()
    return load_or_create_secrets(secrets_path(home), ["antispam"])["antispam"]


def crypto_dir(home: Path) -> Path:
    """Where the bots' end-to-end encryption stores are kept."""
    return home / "crypto"


def embedded_homeserver(settings: Settings, home: Path, **kw: Any) -> EmbeddedHomeserver:
    """The embedded Synapse of the settings: one process in ``$FORUM_HOME/synapse``, or,
    on the scaled profile, its workers in ``$FORUM_HOME/synapse-scaled`` (another
    database: the two profiles' homeservers never share a directory). It asks the forum's
    spam checker when the checker is enabled."""
    emb = settings.homeserver.embedded
    if settings.antispam.enabled and "antispam" not in kw:
        kw["antispam"] = AntispamHook(settings.antispam.url, antispam_secret(settings, home))
    directory = home / "synapse"
    if emb.profile == "scaled":
        scaled = emb.scaled
        directory = home / "synapse-scaled"
        kw.setdefault(
            "workers",
            WorkerLayout(
                database_url=scaled.synapse_database,
                redis_host=scaled.redis_host,
                redis_port=scaled.redis_port,
                redis_password=(
                    scaled.redis_password.get_secret_value() if scaled.redis_password else None
                ),
                event_persisters=scaled.event_persisters,
                generic_workers=scaled.generic_workers,
                host="127.0.0.1" if emb.host == "localhost" else emb.host,
                base_port=scaled.base_port,
            ),
        )
    return EmbeddedHomeserver(
        directory, server_name=emb.server_name, host=emb.host, port=emb.port, **kw
    )


async def register_embedded_accounts(
    settings: Settings, home: Path, hs: EmbeddedHomeserver
) -> dict[str, str]:
    """Register the bots and the demo accounts; return demo passwords by localpart."""
    creds = bot_credentials(settings, home)
    demo = settings.demo.accounts
    secrets = load_or_create_secrets(secrets_path(home), [f"demo:{a.localpart}" for a in demo])
    bots = settings.bots
    accounts: list[tuple[str, str, bool, str | None]] = [
        (
            bots.moderation.localpart,
            creds["moderation"].password or "",
            True,
            bots.moderation.display_name,
        ),
        (
            bots.membership.localpart,
            creds["membership"].password or "",
            False,
            bots.membership.display_name,
        ),
    ]
    accounts += [(a.localpart, secrets[f"demo:{a.localpart}"], False, a.display_name) for a in demo]
    await hs.ensure_accounts(accounts)
    return {a.localpart: secrets[f"demo:{a.localpart}"] for a in demo}


async def exempt_from_rate_limits(admin: Gateway, user_ids: Sequence[str]) -> bool:
    """Lift the homeserver's rate limits for our bots (Synapse admin API; needs ``admin`` to
    be a server admin, as the moderation bot is on the embedded homeserver). Returns False
    when the homeserver refused: the bots then live with the limits (429s are retried)."""
    for user_id in user_ids:
        try:
            await admin.lift_rate_limits(user_id)
        except MatrixError as exc:
            log.info("rate limits of the bots stay as they are (%s)", exc)
            return False
    return True
