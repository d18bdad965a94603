"""gateway: handlers that failed on an event, retried with backoff, then abandoned

Revision ID: 0007_failed_handlers
Revises: 0006_digest_changes

A handler that raised leaves its event unprocessed (issue #10, point 3): the event (its
raw JSON and room), the handler's name, the attempts and the next attempt time are kept
here until the handler succeeds; ``next_attempt_at`` is NULL once it was abandoned.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007_failed_handlers"
down_revision: str | Sequence[str] | None = "0006_digest_changes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "failed_handlers",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("handler", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("event", JSON, nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("account", "event_id", "handler", name="pk_failed_handlers"),
    )
    op.create_index(
        "ix_failed_handlers_next_attempt_at", "failed_handlers", ["next_attempt_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_failed_handlers_next_attempt_at", table_name="failed_handlers")
    op.drop_table("failed_handlers")
