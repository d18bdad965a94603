"""The ``forum`` command line: the operator's entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from forum.credentials import PRIVATE_UMASK, secure_home, write_private
from forum.kit import (
    OperatorKit,
    command_group,
    ensure_scaled_database,
    homeserver_for_command,
    load,
)
from forum.settings import (
    DEFAULT_CONFIG,
    ConfigError,
    Settings,
    config_dir_of,
    database_url,
    forum_home,
    load_settings,
    redact,
)

log = logging.getLogger("forum")

EXIT_CONFIG = 2
EXIT_FAILURE = 1

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


# --- check-config --------------------------------------------------------------------------


async def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.file or args.config
    settings = load_settings(path)
    where = config_dir_of(path)
    missing = []
    charter_dir = settings.charter_dir(where)
    for lang in settings.forum.languages:
        file = charter_dir / lang / f"v{settings.membership.charter.version}.md"
        if not file.is_file():
            missing.append(f"membership.charter: the charter text {file} is missing")
    if missing:
        for m in missing:
            print(m, file=sys.stderr)
        return EXIT_CONFIG
    print(
        redact(
            f"{path or os.environ.get('FORUM_CONFIG') or DEFAULT_CONFIG}: OK "
            f"({len(settings.topics)} topics, "
            f"languages {', '.join(settings.forum.languages)}, "
            f"homeserver {settings.homeserver.mode} {settings.homeserver.effective_url})"
        )
    )
    return 0


# --- provision -------------------------------------------------------------------------------


async def cmd_provision(args: argparse.Namespace) -> int:
    from forum.bots import exempt_from_rate_limits, register_embedded_accounts
    from forum.provisioning import provision

    async with OperatorKit.open(args) as kit:
        hs = await kit.homeserver()
        if hs is not None:
            await register_embedded_accounts(kit.settings, kit.home, hs)
        moderation_gateway = await kit.gateway("moderation")
        joiners = {}
        if not args.dry_run:
            membership_gateway = await kit.gateway("membership")
            joiners[membership_gateway.user_id] = membership_gateway
        await exempt_from_rate_limits(
            moderation_gateway,
            [kit.settings.moderation_bot_id, kit.settings.membership_bot_id],
        )
        the_plan, result = await provision(
            kit.settings,
            moderation_gateway,
            kit.db.sessionmaker,
            dry_run=args.dry_run,
            joiners=joiners,
        )
    if args.json:
        out: dict[str, Any] = {
            "dry_run": args.dry_run,
            "plan": [c.to_json() for c in the_plan.changes],
            "problems": the_plan.problems,
        }
        if result is not None:
            out.update(result.to_json())
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        if the_plan.empty:
            print("Nothing to change: the homeserver matches the configuration.")
        else:
            print(f"Plan ({len(the_plan.changes)} change(s)):")
            for c in the_plan.changes:
                print(f"  - {c.describe()}")
        for p in the_plan.problems:
            print(f"Problem: {p}")
        if result is not None:
            print(f"Applied {len(result.applied)} change(s), {len(result.failed)} failed.")
            for c, err in result.failed:
                print(f"  failed: {c.describe()}: {err}")
            for room in result.detached:
                print(f"  detached from the space (not deleted): {room}")
    failed = bool(result and result.failed)
    return EXIT_FAILURE if failed else 0


# --- homeserver ------------------------------------------------------------------------------


async def cmd_homeserver_register(args: argparse.Namespace) -> int:
    settings = load(args)
    if settings.homeserver.mode != "embedded":
        print(
            "homeserver register works with the embedded homeserver only; on your own "
            "homeserver use its admin tools (register_new_matrix_user).",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    async with contextlib.AsyncExitStack() as stack:
        hs = await homeserver_for_command(settings, forum_home(), stack)
        assert hs is not None  # embedded
        password = args.password or secrets.token_urlsafe(12)
        user_id = await hs.register(
            args.name, password, admin=args.admin, display_name=args.display_name
        )
    print(f"{user_id}\tpassword: {password}")
    print(f"Sign in at {hs.url} with any Matrix client (for example Element).")
    return 0


# --- run ------------------------------------------------------------------------------------


async def cmd_run(args: argparse.Namespace) -> int:
    from forum.app import Service
    from forum.bots import embedded_homeserver, register_embedded_accounts

    settings = load(args)
    home = forum_home()
    await asyncio.to_thread(secure_home, home)
    hs = None
    demo_passwords: dict[str, str] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    service = Service(settings, config_dir=config_dir_of(args.config), home=home)
    try:
        await ensure_scaled_database(settings, database_url(settings, home))
        await service.open()
        lease = service.lease
        assert lease is not None
        if not await service.try_lead():
            holder = lease.current.holder if lease.current else None
            print(
                f"Standing by: the forum is run by {holder}; this process takes over when "
                f"its lease ends (at most {lease.seconds:g} s after it stops).",
                flush=True,
            )
            standby = asyncio.ensure_future(service.stand_by())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([standby, stopping], return_when=asyncio.FIRST_COMPLETED)
            for waiter in (standby, stopping):
                waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await standby
            if stop.is_set():
                print("\nStopping ...", flush=True)
                return 0
            print("Taking over: this process now holds the lease.", flush=True)
        if settings.homeserver.mode == "embedded":
            hs = embedded_homeserver(settings, home)
            print(f"Starting the embedded homeserver (Synapse) at {hs.url} ...", flush=True)
            if hs.config.workers is not None:
                layout = hs.config.workers
                print(
                    f"  scaled profile: {layout.event_persisters} event persister(s), "
                    f"{layout.generic_workers} generic worker(s), a federation sender, "
                    f"on PostgreSQL and Redis {layout.redis_host}:{layout.redis_port}",
                    flush=True,
                )
            await hs.start(timeout=180 if hs.config.workers else 60, stop_stale=True)
            demo_passwords = await register_embedded_accounts(settings, home, hs)
        print("Provisioning the forum and starting the bots ...", flush=True)
        await service.start()
        facts = _demo_facts(settings, service, demo_passwords)
        if hs is not None and hs.config.workers is not None:
            facts["homeserver_profile"] = "scaled"
            facts["synapse_workers"] = hs.config.workers.health_urls()
        demo = json.dumps(facts, indent=2, ensure_ascii=False) + "\n"
        await asyncio.to_thread(write_private, home / "demo.json", demo)
        print(_banner(facts, home), flush=True)
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(service.wait_failed())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        if lease.lost.is_set():
            print(
                f"Lost the service lease ({lease.lost_reason}): stepped down, stopping; "
                "started again, this process stands by.",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        if service.tasks.failed.is_set():
            print("A part of the service failed; stopping. See the log above.", file=sys.stderr)
            return EXIT_FAILURE
        print("\nStopping ...", flush=True)
        return 0
    finally:
        await service.stop()
        if hs is not None:
            await hs.stop()
        print("Stopped.", flush=True)


def _demo_facts(settings: Settings, service: Any, passwords: dict[str, str]) -> dict[str, Any]:
    hs = settings.homeserver
    accounts = [
        {
            "user_id": settings.user_id(a.localpart),
            "password": passwords.get(a.localpart),
            "display_name": a.display_name,
            "role": a.role,
        }
        for a in settings.demo.accounts
        if a.localpart in passwords
    ]
    rooms = settings.rooms
    return {
        "homeserver_url": hs.effective_url,
        "server_name": settings.server_name,
        "web_url": service.web_url,
        "accounts": accounts,
        "space": settings.alias_id(rooms.space.alias),
        "lobby": settings.alias_id(rooms.lobby.alias),
        "announcements": settings.alias_id(rooms.announcements.alias),
        "management_room": settings.alias_id(rooms.management.alias),
        "membership_bot": settings.membership_bot_id,
        "moderation_bot": settings.moderation_bot_id,
        "how_to_connect": (
            f"Open Element (https://app.element.io in a browser on this machine, or Element "
            f"Desktop) or any Matrix client; choose Sign in, set the homeserver to "
            f"{hs.effective_url}, sign in with one of the accounts, then join "
            f"{settings.alias_id(rooms.lobby.alias)}: the welcome bot sends you the charter."
        ),
    }


def _banner(facts: dict[str, Any], home: Path) -> str:
    lines = [
        "",
        "forum is running.",
        f"  Web digest:  {facts['web_url']}",
        f"  Homeserver:  {facts['homeserver_url']}  (server name {facts['server_name']})",
    ]
    if facts["accounts"]:
        lines.append("  Demo accounts:")
        for a in facts["accounts"]:
            lines.append(f"    {a['user_id']:<28} password {a['password']}  ({a['role']})")
    lines += [
        f"  Lobby:       {facts['lobby']}    Space: {facts['space']}",
        f"  Moderators:  {facts['management_room']} (private management room)",
        "",
        "How to connect: " + facts["how_to_connect"],
        f"These facts are also in {home / 'demo.json'}. Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


async def cmd_migrate(args: argparse.Namespace) -> int:
    async with OperatorKit.open(args) as kit:
        revs = await kit.db.current_revisions()
    print(f"Database at {', '.join(sorted(revs))}.")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("forum")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


# --- backup and restore ---------------------------------------------------------------------


async def cmd_backup(args: argparse.Namespace) -> int:
    from forum.backup import BackupError, backup

    settings = load(args)
    home = forum_home()
    try:
        report = await asyncio.to_thread(
            backup, database_url(settings, home), home, Path(args.directory), _version()
        )
    except BackupError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"backed up the {report.database} database and {len(report.files) - 1} file(s) of "
        f"{home} into {report.directory} (mode 0600):"
    )
    for name in report.files:
        print(f"  {name}")
    return 0


async def cmd_restore(args: argparse.Namespace) -> int:
    from forum.backup import BackupError, check_restore, read_manifest, restore, sqlite_has_data

    settings = load(args)
    home = forum_home()
    url = database_url(settings, home)
    directory = await asyncio.to_thread(Path(args.directory).resolve)
    try:
        manifest = await asyncio.to_thread(read_manifest, directory)
        if manifest["database"] == "sqlite":
            has_data = await asyncio.to_thread(sqlite_has_data, url)
        else:
            has_data = await _postgres_has_tables(url)
        check_restore(manifest, url, home, has_data=has_data, force=args.force)
        restored = await asyncio.to_thread(
            restore, manifest, directory, url, home, force=args.force
        )
    except BackupError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"restored {len(restored)} item(s) of the backup of {manifest['created']} into {home}:")
    for name in restored:
        print(f"  {name}")
    print("Next: `forum migrate` (if this version is newer), then `forum run`.")
    return 0


async def _postgres_has_tables(url: str) -> bool:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from forum.backup import BackupError

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            n = await conn.scalar(
                text(
                    "SELECT count(*) FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                )
            )
    except Exception as exc:  # asyncpg's connection errors are not SQLAlchemy's
        raise BackupError(
            f"cannot reach the configured database to restore into: {exc}; create it "
            "first (empty), then run forum restore again"
        ) from exc
    finally:
        await engine.dispose()
    return bool(n)


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forum", description="A Matrix-based discussion forum.")
    parser.add_argument(
        "--config",
        "-c",
        help="configuration file (default: $FORUM_CONFIG, else the one shipped in the package)",
    )
    parser.add_argument("--version", action="version", version=f"forum {_version()}")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-config", help="check a configuration file")
    p.add_argument("file", nargs="?")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("provision", help="create or reconcile the Space and its rooms")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--json", action="store_true", help="print the plan and result as JSON")
    p.set_defaults(func=cmd_provision)

    p = sub.add_parser("run", help="run the whole service")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("migrate", help="upgrade the database to this version")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "backup",
        help="copy the database (consistent while the service runs) and the secrets of "
        "FORUM_HOME into a new directory, mode 0600",
    )
    p.add_argument("directory", metavar="DIR", help="a new or empty directory")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser(
        "restore", help="restore a backup into FORUM_HOME and the configured database"
    )
    p.add_argument("directory", metavar="DIR", help="a directory written by forum backup")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a database and files that already hold a forum (stop the service first)",
    )
    p.set_defaults(func=cmd_restore)

    hs_sub = command_group(sub, "homeserver", "the embedded homeserver")
    p = hs_sub.add_parser("register", help="add an account to the embedded homeserver")
    p.add_argument("name", help="local name of the account, e.g. 'amina'")
    p.add_argument("--password", help="default: a generated one, printed")
    p.add_argument("--admin", action="store_true", help="make it a server admin")
    p.add_argument("--display-name")
    p.set_defaults(func=cmd_homeserver_register)

    from forum.app import default_features

    for feature in default_features():
        if feature.add_commands is not None:
            feature.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Whatever this process creates (the database, secrets, Synapse's files) is private;
    # the static export sets its own modes so that a web server can read it.
    os.umask(PRIVATE_UMASK)
    parser = build_parser()
    args = parser.parse_args(argv)
    from forum.logs import setup_logging

    level = args.log_level
    fmt = "text"
    with contextlib.suppress(ConfigError):
        s = load_settings(getattr(args, "config", None))
        level = level or s.logging.level
        fmt = s.logging.format
    setup_logging(level or "INFO", fmt)
    try:
        code: int = asyncio.run(args.func(args))
        return code
    except ConfigError as exc:
        print(redact(str(exc)), file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the CLI's catch-all boundary
        from forum.errors import MatrixError
        from forum.homeserver import HomeserverStartError
        from forum.storage import StorageError

        if isinstance(exc, MatrixError | HomeserverStartError | StorageError):
            print(f"error: {redact(str(exc))}", file=sys.stderr)
            return EXIT_FAILURE
        log.exception("unexpected error")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
