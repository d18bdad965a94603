"""Storage: the async database, its migrations, repositories and the outbox worker.

The caller owns every transaction: open one session per unit of work from
``Database.sessionmaker``, hand it to the repositories, commit it yourself.
"""

from .db import (
    Database,
    DatabaseTooNew,
    MigrationFailed,
    StorageError,
    alembic_config,
    create_database_if_missing,
    create_engine,
    drop_database,
    head_revisions,
    known_revisions,
    normalize_url,
)
from .lease import Lease, LeaseLost, LeaseState, default_holder
from .models import Base, utcnow
from .outbox_worker import Executor, OutboxWorker
from .repositories import (
    BotSession,
    BotSessions,
    FailedHandler,
    FailedHandlers,
    Outbox,
    OutboxItem,
    ProcessedEvents,
    Repository,
    RoomRecord,
    RoomRegistry,
    SyncTokens,
)

__all__ = [
    "Base",
    "BotSession",
    "BotSessions",
    "Database",
    "DatabaseTooNew",
    "Executor",
    "FailedHandler",
    "FailedHandlers",
    "Lease",
    "LeaseLost",
    "LeaseState",
    "MigrationFailed",
    "Outbox",
    "OutboxItem",
    "OutboxWorker",
    "ProcessedEvents",
    "Repository",
    "RoomRecord",
    "RoomRegistry",
    "StorageError",
    "SyncTokens",
    "alembic_config",
    "create_database_if_missing",
    "create_engine",
    "default_holder",
    "drop_database",
    "head_revisions",
    "known_revisions",
    "normalize_url",
    "utcnow",
]
