"""membership bot flow state (people, approvals)

Revision ID: 0003_membership
Revises: 0002_consent
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_membership"
down_revision: str | Sequence[str] | None = "0002_consent"
branch_labels: str | Sequence[str] | None = ("membership",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "membership_people",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("dm_room_id", sa.Text(), nullable=True),
        sa.Column("lang", sa.String(16), nullable=True),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("door", sa.String(16), nullable=False),
        sa.Column("knocked_rooms", sa.JSON(), nullable=False),
        sa.Column("charter_event_id", sa.Text(), nullable=True),
        sa.Column("charter_version", sa.Integer(), nullable=True),
        sa.Column("question_event_id", sa.Text(), nullable=True),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("reconsent_version", sa.Integer(), nullable=True),
        sa.Column("reconsent_event_id", sa.Text(), nullable=True),
        sa.Column("grace_deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("muted", sa.Boolean(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_count", sa.Integer(), nullable=False),
        sa.Column("flood_noticed", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_membership_people"),
    )
    op.create_index("ix_membership_people_dm_room_id", "membership_people", ["dm_room_id"])
    op.create_table(
        "membership_approvals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("card_event_id", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_membership_approvals"),
    )
    op.create_index("ix_membership_approvals_user_id", "membership_approvals", ["user_id"])
    op.create_index(
        "ix_membership_approvals_card_event_id", "membership_approvals", ["card_event_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_membership_approvals_card_event_id", table_name="membership_approvals")
    op.drop_index("ix_membership_approvals_user_id", table_name="membership_approvals")
    op.drop_table("membership_approvals")
    op.drop_index("ix_membership_people_dm_room_id", table_name="membership_people")
    op.drop_table("membership_people")
