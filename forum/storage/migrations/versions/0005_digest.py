"""digest: stored consented messages, activity counters, highlights, published weeks

Revision ID: 0005_digest
Revises: 0002_consent
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_digest"
down_revision: str | Sequence[str] | None = "0002_consent"
branch_labels: str | Sequence[str] | None = ("digest",)
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "digest_messages",
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("topic", sa.String(80), nullable=False),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("html", sa.Text(), nullable=True),
        sa.Column("ts", TS, nullable=False),
        sa.Column("reply_to", sa.Text(), nullable=True),
        sa.Column("thread_root", sa.Text(), nullable=True),
        sa.Column("edited", sa.Boolean(), nullable=False),
        sa.Column("basis", sa.String(16), nullable=False),
        sa.Column("keywords", sa.Text(), nullable=False),
        sa.Column("words", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_digest_messages"),
    )
    op.create_index("ix_digest_messages_ts", "digest_messages", ["ts"])
    op.create_index("ix_digest_messages_sender", "digest_messages", ["sender"])
    op.create_table(
        "digest_reactions",
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_digest_reactions"),
    )
    op.create_index("ix_digest_reactions_target", "digest_reactions", ["target"])
    op.create_table(
        "digest_activity",
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("who", sa.String(32), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_digest_activity"),
    )
    op.create_index("ix_digest_activity_ts", "digest_activity", ["ts"])
    op.create_table(
        "digest_highlights",
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("author", sa.Text(), nullable=False),
        sa.Column("heading", sa.Text(), nullable=True),
        sa.Column("marker_event_id", sa.Text(), nullable=False),
        sa.Column("marked_by", sa.Text(), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("target", name="pk_digest_highlights"),
    )
    op.create_table(
        "digest_quote_permissions",
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("dm_room_id", sa.Text(), nullable=True),
        sa.Column("ask_event_id", sa.Text(), nullable=True),
        sa.Column("asked_at", TS, nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=True),
        sa.Column("answered_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("target", name="pk_digest_quote_permissions"),
    )
    op.create_table(
        "digest_weeks",
        sa.Column("week", sa.String(10), nullable=False),
        sa.Column("built_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("week", name="pk_digest_weeks"),
    )
    op.create_table(
        "digest_state",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_digest_state"),
    )


def downgrade() -> None:
    for table in (
        "digest_state",
        "digest_weeks",
        "digest_quote_permissions",
        "digest_highlights",
    ):
        op.drop_table(table)
    op.drop_index("ix_digest_activity_ts", table_name="digest_activity")
    op.drop_table("digest_activity")
    op.drop_index("ix_digest_reactions_target", table_name="digest_reactions")
    op.drop_table("digest_reactions")
    op.drop_index("ix_digest_messages_sender", table_name="digest_messages")
    op.drop_index("ix_digest_messages_ts", table_name="digest_messages")
    op.drop_table("digest_messages")
