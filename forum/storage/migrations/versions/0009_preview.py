"""digest preview: the moderators' review of a week before its publication

Revision ID: 0009_preview
Revises: 0008_public_names

Issue #13 point 7: the week's digest is posted to the management room before it is
published; each quote and key point shown there is a row (its short id is the row's id)
that a moderator may hold or remove (by command, or by a reaction on the item's message in
the preview's thread); a week's row records when its preview was posted,
who held the whole digest and who released it. A week with a review publishes only the
key points its moderators saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_preview"
down_revision: str | Sequence[str] | None = "0008_public_names"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "digest_reviews",
        sa.Column("week", sa.String(10), nullable=False),
        sa.Column("due", TS, nullable=False),
        sa.Column("posted_at", TS, nullable=False),
        sa.Column("event_id", sa.Text(), nullable=True),
        sa.Column("held_by", sa.Text(), nullable=True),
        sa.Column("released_by", sa.Text(), nullable=True),
        sa.Column("released_at", TS, nullable=True),
        sa.Column("reminded", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("week", name="pk_digest_reviews"),
    )
    op.create_table(
        "digest_review_items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("week", sa.String(10), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("author", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.Text(), nullable=True),
        sa.Column("decided_at", TS, nullable=True),
        sa.Column("event_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_digest_review_items"),
    )
    op.create_index("ix_digest_review_items_event_id", "digest_review_items", ["event_id"])
    op.create_index("ix_digest_review_items_week", "digest_review_items", ["week"])
    op.create_index("ix_digest_review_items_target", "digest_review_items", ["target"])
    op.create_index("ix_digest_review_items_author", "digest_review_items", ["author"])


def downgrade() -> None:
    op.drop_index("ix_digest_review_items_event_id", table_name="digest_review_items")
    op.drop_index("ix_digest_review_items_author", table_name="digest_review_items")
    op.drop_index("ix_digest_review_items_target", table_name="digest_review_items")
    op.drop_index("ix_digest_review_items_week", table_name="digest_review_items")
    op.drop_table("digest_review_items")
    op.drop_table("digest_reviews")
